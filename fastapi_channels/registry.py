"""ConnectionRegistry: this server's connections indexed by channel name, user and group.

A pure data structure with no I/O. Its methods report when an index entry appears or
vanishes (first member of a group, last connection of a user) so the manager knows when to
subscribe to or unsubscribe from a topic. Fan-out reads `group_members` without copying;
callers that await while iterating must take a snapshot first.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["ConnectionRegistry", "Registrable", "Removal"]


class Registrable(Protocol):
    @property
    def channel_name(self) -> str: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def groups(self) -> set[str]: ...


C = TypeVar("C", bound=Registrable)


class Removal(Generic[C]):
    """What removing a connection changed: the groups it left empty, whether its user is gone."""

    __slots__ = ("connection", "emptied_groups", "left_groups", "user_gone")

    def __init__(
        self, connection: C, left_groups: list[str], emptied_groups: list[str], user_gone: bool
    ) -> None:
        self.connection = connection
        self.left_groups = left_groups
        self.emptied_groups = emptied_groups
        self.user_gone = user_gone


class ConnectionRegistry(Generic[C]):
    """Indexes of local connections. Every operation is O(1) or O(groups of one connection)."""

    def __init__(self) -> None:
        self._by_id: dict[str, C] = {}
        self._by_user: dict[str, dict[str, C]] = {}
        self._by_group: dict[str, dict[str, C]] = {}

    # --- connections ---------------------------------------------------------------------------
    def add(self, connection: C) -> bool:
        """Index a connection; True when it is its user's first connection here."""
        name = connection.channel_name
        if name in self._by_id:
            raise KeyError(f"connection {name!r} is already registered")
        self._by_id[name] = connection
        user = connection.user_id
        if user is None:
            return False
        conns = self._by_user.get(user)
        if conns is None:
            self._by_user[user] = {name: connection}
            return True
        conns[name] = connection
        return False

    def remove(self, channel_name: str) -> Removal[C] | None:
        """Drop a connection from every index; None when it was not registered."""
        connection = self._by_id.pop(channel_name, None)
        if connection is None:
            return None
        left = list(connection.groups)
        emptied = [group for group in left if self._discard_member(group, channel_name)]
        connection.groups.clear()
        user_gone = False
        user = connection.user_id
        if user is not None:
            conns = self._by_user.get(user)
            if conns is not None:
                conns.pop(channel_name, None)
                if not conns:
                    del self._by_user[user]
                    user_gone = True
        return Removal(connection, left, emptied, user_gone)

    def get(self, channel_name: str) -> C | None:
        return self._by_id.get(channel_name)

    def __contains__(self, channel_name: object) -> bool:
        return channel_name in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[C]:
        return iter(self._by_id.values())

    def connections(self) -> Collection[C]:
        return self._by_id.values()

    # --- groups --------------------------------------------------------------------------------
    def join(self, channel_name: str, group: str) -> bool:
        """Add a registered connection to a group; True when the group is new on this server."""
        connection = self._by_id[channel_name]
        members = self._by_group.get(group)
        created = members is None
        if members is None:
            members = self._by_group[group] = {}
        members[channel_name] = connection
        connection.groups.add(group)
        return created

    def leave(self, channel_name: str, group: str) -> bool:
        """Remove a connection from a group; True when that left the group empty here."""
        connection = self._by_id.get(channel_name)
        if connection is None or group not in connection.groups:
            return False
        connection.groups.discard(group)
        return self._discard_member(group, channel_name)

    def _discard_member(self, group: str, channel_name: str) -> bool:
        members = self._by_group.get(group)
        if members is None:
            return False
        members.pop(channel_name, None)
        if members:
            return False
        del self._by_group[group]
        return True

    def group_members(self, group: str) -> Collection[C]:
        members = self._by_group.get(group)
        return () if members is None else members.values()

    def has_group(self, group: str) -> bool:
        return group in self._by_group

    def groups(self) -> Collection[str]:
        return self._by_group.keys()

    def group_count(self) -> int:
        return len(self._by_group)

    # --- users ---------------------------------------------------------------------------------
    def user_connections(self, user_id: str) -> Collection[C]:
        conns = self._by_user.get(user_id)
        return () if conns is None else conns.values()

    def has_user(self, user_id: str) -> bool:
        return user_id in self._by_user

    def users(self) -> Collection[str]:
        return self._by_user.keys()

    def user_count(self) -> int:
        return len(self._by_user)
