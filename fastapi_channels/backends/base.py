"""BaseBackend: the one interface between a manager and the cluster it belongs to.

A backend does two things. It carries envelopes on topics (publish/subscribe, one
subscription per topic per server, never per connection), and it holds the cluster state a
single server cannot know alone: connection slots per user and in total, group membership
and the group count. Every check-and-change is one atomic operation (`add_connection`,
`group_add`), never read-then-write. Topics are given unprefixed; a backend adds its own
namespace. A backend never imports the manager.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi_channels.history import HistoryRead

__all__ = [
    "Admission",
    "BackendEventListener",
    "BaseBackend",
    "Delivery",
    "EvictionHandler",
    "MessageHandler",
]

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
"""Called with (topic, payload) for each envelope on a subscribed topic; must not block."""

BackendEventListener = Callable[[str, BaseException | None], None]
"""Called with ("lost", error) when the backend stops delivering and ("recovered", None) when it
delivers again; messages published in between may be lost, so apps can tell clients to resync."""


EvictionHandler = Callable[[str, "Admission"], None]
"""Called with (channel name, why) for a local connection the cluster state no longer admits:
after Redis lost its data, writing it back would have put its user over a limit."""


class Admission(StrEnum):
    """The answer of `add_connection`."""

    ACCEPTED = "accepted"
    USER_LIMIT = "user_limit"
    TOTAL_LIMIT = "total_limit"
    UNVERIFIED = "unverified"  # the cluster state is being rebuilt: limits cannot be checked now


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one publish achieved: how many servers got it against how many were owed it.

    `expected` is None when it cannot be known (the broker's state is being rebuilt after it
    lost it); `connections` is the audience's connection count where the backend knows it
    (user topics).
    """

    reached: int
    expected: int | None
    connections: int = 0

    @property
    def complete(self) -> bool:
        return self.expected is not None and self.reached >= self.expected


class BaseBackend(abc.ABC):
    """Topics plus cluster state. Methods marked *cluster-wide* see every server's entries."""

    name: str = "base"
    delivers_synchronously: bool = False
    """True when `publish` has handed the message to every subscriber before it returns."""
    pubsub_lag: float | None = None
    """Seconds the last self-check probe took through the broker and back (None: not measured)."""

    def __init__(self) -> None:
        self._listeners: list[BackendEventListener] = []
        self._evict: EvictionHandler | None = None

    def set_eviction_handler(self, handler: EvictionHandler | None) -> None:
        """Be told of local connections the cluster no longer admits (see `EvictionHandler`)."""
        self._evict = handler

    def add_event_listener(self, listener: BackendEventListener) -> None:
        """Be told of outages ("lost") and recoveries ("recovered")."""
        self._listeners.append(listener)

    def _emit(self, event: str, error: BaseException | None) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event, error)
            except Exception:
                logger.exception("backend event listener failed on %r", event)

    # --- lifecycle -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def start(self, server_id: str, on_message: MessageHandler) -> None:
        """Connect, and deliver every envelope of a subscribed topic to `on_message`."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Release this server's state and connections; the backend can be started again."""

    # --- topics --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def publish(self, topic: str, payload: bytes) -> Delivery:
        """Hand `payload` to every server subscribed to `topic`: one broker operation.

        The answer compares the servers reached with the servers that have members of the
        topic (group and user topics: those with members or connections; broadcast: every
        live server; an inbox: its owner, if alive).
        """

    async def publish_personal(self, topic: str, channel_name: str, payload: bytes) -> Delivery:
        """`publish` to an inbox, for the one connection `channel_name`. A backend that knows
        the connection is registered nowhere publishes nothing and answers Delivery(0, 0): it
        closed, so a send to it reached nobody and nobody was owed it. This default cannot
        tell and publishes."""
        return await self.publish(topic, payload)

    @abc.abstractmethod
    async def publish_history(
        self, topic: str, group: str, outer: bytes, inner: bytes, body: str, size: int, ttl: int
    ) -> tuple[Delivery, int, str]:
        """Store the next message of a history group and publish it, in one operation.

        `body` is a JSON object's text; the stored and published frame has `"offset"` and
        `"epoch"` first. The envelope is `outer` + `h<offset>:<epoch>\n` + `inner` + the text
        frame. Returns the delivery, the offset given and the group's history epoch.
        """

    @abc.abstractmethod
    async def read_history(self, group: str, after: int, limit: int, size: int, ttl: int) -> HistoryRead:
        """A history group's position and up to `limit` retained frames after offset `after`."""

    @abc.abstractmethod
    async def publish_to_user(self, user_topic: str, user_id: str, payload: bytes) -> Delivery:
        """Publish on a user's topic; `connections` is the user's count (cluster-wide), atomically."""

    @abc.abstractmethod
    async def subscribe(self, topic: str) -> None:
        """Subscribe this server to `topic` and return once a publish is sure to reach it.

        Idempotent. Raises BackendError when that cannot be confirmed.
        """

    def listening(self, topic: str) -> bool:
        """Whether a message published to `topic` now is sure to come back to this server."""
        return True

    async def fence(self, *topics: str) -> None:
        """Return once every message published to these topics before this call has been
        handed to this server's subscribers (or can no longer be). At once where a publish is
        handed over before it returns, as in memory."""
        return None

    def not_ready(self) -> str | None:
        """Why this backend cannot serve new clients now (a short code), or None when it can."""
        return None

    @abc.abstractmethod
    async def unsubscribe(self, topic: str) -> None:
        """Unsubscribe this server from `topic` (idempotent)."""

    # --- connections (cluster-wide) -------------------------------------------------------------
    @abc.abstractmethod
    async def add_connection(
        self, channel_name: str, user_id: str | None, *, max_per_user: int, max_total: int
    ) -> Admission:
        """Take a connection slot under both limits in one atomic step."""

    @abc.abstractmethod
    async def remove_connection(self, channel_name: str, user_id: str | None) -> None:
        """Give back the slot of a connection (idempotent)."""

    @abc.abstractmethod
    async def count_connections(self) -> int:
        """Connections across the cluster."""

    @abc.abstractmethod
    async def count_user_connections(self, user_id: str) -> int:
        """Connections of one user across the cluster."""

    # --- groups (cluster-wide) -------------------------------------------------------------------
    @abc.abstractmethod
    async def group_add(self, group: str, channel_name: str, *, max_groups: int) -> bool:
        """Record membership; False (and no change) when `group` is new and the cluster has `max_groups`."""

    @abc.abstractmethod
    async def group_discard(self, group: str, channel_name: str) -> None:
        """Forget a membership (idempotent); a group with no members is gone."""

    @abc.abstractmethod
    async def group_members(self, group: str) -> set[str]:
        """Channel names of a group across the cluster."""

    @abc.abstractmethod
    async def group_size(self, group: str) -> int:
        """Member count of a group across the cluster."""

    @abc.abstractmethod
    async def count_groups(self) -> int:
        """Groups with at least one member across the cluster."""
