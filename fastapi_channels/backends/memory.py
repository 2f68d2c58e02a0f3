"""MemoryBackend: the backend contract in one process, with no dependencies.

It is also the executable spec of `BaseBackend`. Several managers can share one
`MemoryHub` and then behave as servers of one cluster (tests use this); by default each
backend gets a hub of its own. Publishing calls subscribers synchronously: there is no queue
to grow, and a message is fanned out before `publish` returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi_channels import routing
from fastapi_channels.backends.base import Admission, BaseBackend, Delivery, MessageHandler
from fastapi_channels.backends.memory_history import HistoryStore
from fastapi_channels.history import HistoryRead

__all__ = ["MemoryBackend", "MemoryHub"]

logger = logging.getLogger(__name__)


@dataclass
class MemoryHub:
    """Cluster state shared by the memory backends of one process."""

    subscribers: dict[str, dict[int, MessageHandler]] = field(default_factory=dict)
    connections: dict[str, str | None] = field(default_factory=dict)
    users: dict[str, set[str]] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=dict)
    histories: HistoryStore = field(default_factory=HistoryStore)


class MemoryBackend(BaseBackend):
    name = "memory"
    delivers_synchronously = True

    def __init__(self, hub: MemoryHub | None = None) -> None:
        super().__init__()
        self.hub = hub if hub is not None else MemoryHub()
        self._handler: MessageHandler | None = None
        self._topics: set[str] = set()
        self._channels: set[str] = set()
        self._memberships: set[tuple[str, str]] = set()

    async def start(self, server_id: str, on_message: MessageHandler) -> None:
        self._handler = on_message

    async def stop(self) -> None:
        for topic in list(self._topics):
            await self.unsubscribe(topic)
        for group, channel_name in list(self._memberships):
            await self.group_discard(group, channel_name)
        for channel_name in list(self._channels):
            await self.remove_connection(channel_name, self.hub.connections.get(channel_name))
        self._handler = None

    # --- topics --------------------------------------------------------------------------------
    async def publish(self, topic: str, payload: bytes) -> Delivery:
        # Synchronous hand-over to every subscriber: what is subscribed is what is reached.
        subscribers = self.hub.subscribers.get(topic)
        if not subscribers:
            return Delivery(0, 0)
        handlers = tuple(subscribers.values())
        for handler in handlers:
            try:
                handler(topic, payload)
            except Exception:
                logger.exception("subscriber of %s failed", topic)
        return Delivery(len(handlers), len(handlers))

    async def publish_personal(self, topic: str, channel_name: str, payload: bytes) -> Delivery:
        if channel_name not in self.hub.connections:
            return Delivery(0, 0)
        return await self.publish(topic, payload)

    async def publish_history(
        self, topic: str, group: str, outer: bytes, inner: bytes, body: str, size: int, ttl: int
    ) -> tuple[Delivery, int, str]:
        exclude = routing.decode_envelope(inner + b"t").exclude if inner else frozenset()
        offset, epoch, frame = self.hub.histories.append(group, body, size, ttl, exclude)
        payload = outer + b"h" + f"{offset}:{epoch}\n".encode() + inner + b"t" + frame.encode()
        return await self.publish(topic, payload), offset, epoch

    async def read_history(self, group: str, after: int, limit: int, size: int, ttl: int) -> HistoryRead:
        return self.hub.histories.read(group, after, limit, size, ttl)

    async def publish_to_user(self, user_topic: str, user_id: str, payload: bytes) -> Delivery:
        delivery = await self.publish(user_topic, payload)
        return Delivery(delivery.reached, delivery.expected, len(self.hub.users.get(user_id, ())))

    async def subscribe(self, topic: str) -> None:
        if self._handler is None:
            raise RuntimeError("MemoryBackend.subscribe before start()")
        self.hub.subscribers.setdefault(topic, {})[id(self)] = self._handler
        self._topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
        subscribers = self.hub.subscribers.get(topic)
        if subscribers is None:
            return
        subscribers.pop(id(self), None)
        if not subscribers:
            del self.hub.subscribers[topic]

    # --- connections ---------------------------------------------------------------------------
    async def add_connection(
        self, channel_name: str, user_id: str | None, *, max_per_user: int, max_total: int
    ) -> Admission:
        hub = self.hub
        if channel_name in hub.connections:
            return Admission.ACCEPTED
        if len(hub.connections) >= max_total:
            return Admission.TOTAL_LIMIT
        if user_id is not None:
            slots = hub.users.get(user_id)
            if slots is not None and len(slots) >= max_per_user:
                return Admission.USER_LIMIT
            hub.users.setdefault(user_id, set()).add(channel_name)
        hub.connections[channel_name] = user_id
        self._channels.add(channel_name)
        return Admission.ACCEPTED

    async def remove_connection(self, channel_name: str, user_id: str | None) -> None:
        hub = self.hub
        hub.connections.pop(channel_name, None)
        self._channels.discard(channel_name)
        if user_id is not None:
            slots = hub.users.get(user_id)
            if slots is not None:
                slots.discard(channel_name)
                if not slots:
                    del hub.users[user_id]

    async def count_connections(self) -> int:
        return len(self.hub.connections)

    async def count_user_connections(self, user_id: str) -> int:
        return len(self.hub.users.get(user_id, ()))

    # --- groups --------------------------------------------------------------------------------
    async def group_add(self, group: str, channel_name: str, *, max_groups: int) -> bool:
        members = self.hub.groups.get(group)
        if members is None:
            if len(self.hub.groups) >= max_groups:
                return False
            members = self.hub.groups[group] = set()
        members.add(channel_name)
        self._memberships.add((group, channel_name))
        return True

    async def group_discard(self, group: str, channel_name: str) -> None:
        self._memberships.discard((group, channel_name))
        members = self.hub.groups.get(group)
        if members is None:
            return
        members.discard(channel_name)
        if not members:
            del self.hub.groups[group]

    async def group_members(self, group: str) -> set[str]:
        return set(self.hub.groups.get(group, ()))

    async def group_size(self, group: str) -> int:
        return len(self.hub.groups.get(group, ()))

    async def count_groups(self) -> int:
        return len(self.hub.groups)
