"""ConnectionRegistry: indexes by channel name, user and group, and the flags its methods return."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from fastapi_channels.registry import ConnectionRegistry


@dataclass(eq=False)
class FakeConnection:
    channel_name: str
    user_id: str | None = None
    groups: set[str] = field(default_factory=set)


Registry = ConnectionRegistry[FakeConnection]


@pytest.fixture
def registry() -> Registry:
    return ConnectionRegistry()


# --- add / get ----------------------------------------------------------------------------------
def test_add_reports_first_connection_of_a_user(registry: Registry) -> None:
    assert registry.add(FakeConnection("s!1", "alice")) is True
    assert registry.add(FakeConnection("s!2", "alice")) is False
    assert registry.add(FakeConnection("s!3", "bob")) is True
    assert registry.user_count() == 2
    assert {c.channel_name for c in registry.user_connections("alice")} == {"s!1", "s!2"}


def test_anonymous_connection_is_never_a_first_user_connection(registry: Registry) -> None:
    assert registry.add(FakeConnection("s!1", None)) is False
    assert registry.add(FakeConnection("s!2", None)) is False
    assert registry.user_count() == 0
    assert list(registry.users()) == []
    assert len(registry) == 2


def test_add_duplicate_channel_name_raises_and_keeps_first(registry: Registry) -> None:
    first = FakeConnection("s!1", "alice")
    registry.add(first)
    with pytest.raises(KeyError):
        registry.add(FakeConnection("s!1", "bob"))
    assert registry.get("s!1") is first
    assert not registry.has_user("bob")
    assert len(registry) == 1


def test_get_contains_len_iter_connections(registry: Registry) -> None:
    a, b = FakeConnection("s!a", "u"), FakeConnection("s!b")
    registry.add(a)
    registry.add(b)
    assert registry.get("s!a") is a
    assert registry.get("missing") is None
    assert "s!b" in registry
    assert "missing" not in registry
    assert len(registry) == 2
    assert set(map(id, registry)) == {id(a), id(b)}
    assert set(map(id, registry.connections())) == {id(a), id(b)}


# --- join / leave -------------------------------------------------------------------------------
def test_join_reports_group_created_only_for_first_member(registry: Registry) -> None:
    a, b = FakeConnection("s!a"), FakeConnection("s!b")
    registry.add(a)
    registry.add(b)
    assert registry.join("s!a", "room") is True
    assert registry.join("s!b", "room") is False
    assert registry.join("s!a", "room") is False  # already a member
    assert registry.has_group("room")
    assert registry.group_count() == 1
    assert set(map(id, registry.group_members("room"))) == {id(a), id(b)}
    assert a.groups == {"room"} and b.groups == {"room"}


def test_join_unregistered_connection_raises(registry: Registry) -> None:
    with pytest.raises(KeyError):
        registry.join("nobody", "room")
    assert not registry.has_group("room")


def test_leave_reports_group_emptied_only_for_last_member(registry: Registry) -> None:
    a, b = FakeConnection("s!a"), FakeConnection("s!b")
    registry.add(a)
    registry.add(b)
    registry.join("s!a", "room")
    registry.join("s!b", "room")
    assert registry.leave("s!a", "room") is False
    assert a.groups == set()
    assert registry.has_group("room")
    assert registry.leave("s!b", "room") is True
    assert not registry.has_group("room")
    assert list(registry.groups()) == []
    assert list(registry.group_members("room")) == []


def test_leave_when_not_a_member_or_unknown_is_false(registry: Registry) -> None:
    a, b = FakeConnection("s!a"), FakeConnection("s!b")
    registry.add(a)
    registry.add(b)
    registry.join("s!a", "room")
    assert registry.leave("s!b", "room") is False
    assert registry.leave("s!a", "other") is False
    assert registry.leave("nobody", "room") is False
    assert registry.has_group("room")
    assert set(map(id, registry.group_members("room"))) == {id(a)}


# --- remove -------------------------------------------------------------------------------------
def test_remove_unknown_returns_none(registry: Registry) -> None:
    assert registry.remove("nobody") is None


def test_remove_cleans_every_index_and_reports_changes(registry: Registry) -> None:
    a = FakeConnection("s!a", "alice")
    b = FakeConnection("s!b", "alice")
    registry.add(a)
    registry.add(b)
    registry.join("s!a", "shared")
    registry.join("s!b", "shared")
    registry.join("s!a", "solo")

    removal = registry.remove("s!a")
    assert removal is not None
    assert removal.connection is a
    assert sorted(removal.left_groups) == ["shared", "solo"]
    assert removal.emptied_groups == ["solo"]
    assert removal.user_gone is False
    assert a.groups == set()
    assert "s!a" not in registry
    assert registry.get("s!a") is None
    assert not registry.has_group("solo")
    assert set(map(id, registry.group_members("shared"))) == {id(b)}
    assert set(map(id, registry.user_connections("alice"))) == {id(b)}

    removal = registry.remove("s!b")
    assert removal is not None
    assert removal.left_groups == ["shared"]
    assert removal.emptied_groups == ["shared"]
    assert removal.user_gone is True
    assert len(registry) == 0
    assert registry.group_count() == 0
    assert registry.user_count() == 0
    assert not registry.has_user("alice")
    assert list(registry.user_connections("alice")) == []
    assert registry._by_id == {} and registry._by_user == {} and registry._by_group == {}


def test_remove_anonymous_never_reports_user_gone(registry: Registry) -> None:
    registry.add(FakeConnection("s!a"))
    removal = registry.remove("s!a")
    assert removal is not None
    assert removal.user_gone is False
    assert removal.left_groups == [] and removal.emptied_groups == []


def test_remove_twice_returns_none_the_second_time(registry: Registry) -> None:
    registry.add(FakeConnection("s!a", "u"))
    assert registry.remove("s!a") is not None
    assert registry.remove("s!a") is None


def test_channel_name_can_be_reused_after_remove(registry: Registry) -> None:
    registry.add(FakeConnection("s!a", "u"))
    registry.remove("s!a")
    assert registry.add(FakeConnection("s!a", "u")) is True


# --- model-based test ---------------------------------------------------------------------------
CHANNELS = [f"s!{i}" for i in range(6)]
USERS = st.sampled_from(["alice", "bob", "carol", None])
GROUPS = st.sampled_from(["g1", "g2", "g3"])


class RegistryMachine(RuleBasedStateMachine):
    """The registry against a model: channel -> (user, groups)."""

    added = Bundle("added")

    def __init__(self) -> None:
        super().__init__()
        self.registry: Registry = ConnectionRegistry()
        self.model: dict[str, tuple[str | None, set[str]]] = {}
        self.objects: dict[str, FakeConnection] = {}

    # model queries
    def _user_conns(self, user: str) -> set[str]:
        return {c for c, (u, _) in self.model.items() if u == user}

    def _members(self, group: str) -> set[str]:
        return {c for c, (_, gs) in self.model.items() if group in gs}

    @rule(target=added, name=st.sampled_from(CHANNELS), user=USERS)
    def add(self, name: str, user: str | None) -> str:
        conn = FakeConnection(name, user)
        if name in self.model:
            with pytest.raises(KeyError):
                self.registry.add(conn)
            return name
        expected_first = user is not None and not self._user_conns(user)
        assert self.registry.add(conn) is expected_first
        self.model[name] = (user, set())
        self.objects[name] = conn
        return name

    @rule(name=consumes(added))
    def remove(self, name: str) -> None:
        if name not in self.model:
            assert self.registry.remove(name) is None
            return
        user, groups = self.model[name]
        emptied = {g for g in groups if self._members(g) == {name}}
        user_gone = user is not None and self._user_conns(user) == {name}
        removal = self.registry.remove(name)
        assert removal is not None
        assert removal.connection is self.objects[name]
        assert set(removal.left_groups) == groups
        assert len(removal.left_groups) == len(groups)
        assert set(removal.emptied_groups) == emptied
        assert len(removal.emptied_groups) == len(emptied)
        assert removal.user_gone is user_gone
        del self.model[name]
        del self.objects[name]

    @rule(name=st.sampled_from(CHANNELS), group=GROUPS)
    def join(self, name: str, group: str) -> None:
        if name not in self.model:
            with pytest.raises(KeyError):
                self.registry.join(name, group)
            return
        created = not self._members(group)
        assert self.registry.join(name, group) is created
        self.model[name][1].add(group)

    @rule(name=st.sampled_from(CHANNELS), group=GROUPS)
    def leave(self, name: str, group: str) -> None:
        if name not in self.model or group not in self.model[name][1]:
            assert self.registry.leave(name, group) is False
            return
        emptied = self._members(group) == {name}
        assert self.registry.leave(name, group) is emptied
        self.model[name][1].discard(group)

    @invariant()
    def indexes_match_model(self) -> None:
        reg = self.registry
        assert len(reg) == len(self.model)
        assert {c.channel_name for c in reg} == set(self.model)
        for name, (user, groups) in self.model.items():
            conn = reg.get(name)
            assert conn is self.objects[name]
            assert conn.user_id == user
            assert conn.groups == groups
        users = {u for u, _ in self.model.values() if u is not None}
        assert set(reg.users()) == users
        assert reg.user_count() == len(users)
        for user in ["alice", "bob", "carol"]:
            assert reg.has_user(user) is (user in users)
            assert {c.channel_name for c in reg.user_connections(user)} == self._user_conns(user)
        groups = set().union(*(gs for _, gs in self.model.values())) if self.model else set()
        assert set(reg.groups()) == groups
        assert reg.group_count() == len(groups)
        for group in ["g1", "g2", "g3"]:
            assert reg.has_group(group) is (group in groups)
            assert {c.channel_name for c in reg.group_members(group)} == self._members(group)


RegistryMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestRegistryAgainstModel = RegistryMachine.TestCase
