"""RedisBackend: many server processes sharing one Redis behave like one server.

One pub/sub connection per process carries every topic this server needs (its groups,
users, inbox, broadcast); a send is one PUBLISH or one script call whatever the group's
size. Cluster state lives in keys owned by each server's liveness key (see `redis_keys`):
a killed server's slots and memberships are reaped by the survivors once its key expires.

Failure handling is part of the design: the reader reconnects with backoff, subscribes
again and re-writes this server's state; a probe through its own channel catches a
subscription that went deaf without an error; outages are reported to a listener.
Needs a non-cluster Redis >= 6.2 (scripts touch keys derived from server ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fastapi_channels.backends.base import Admission, BaseBackend, MessageHandler
from fastapi_channels.backends.redis_keys import RedisKeys
from fastapi_channels.exceptions import BackendError

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from fastapi_channels.config import WSConfig

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

_SCRIPTS = (
    "add_connection",
    "remove_connection",
    "count_connections",
    "count_live",
    "group_add",
    "group_discard",
    "count_groups",
    "heartbeat",
    "reap",
    "refresh_groups",
    "publish_to_user",
)
_REAP_BATCH = 500
_REAP_ROUNDS_PER_TICK = 20
_REFRESH_CHUNK = 500
_SUBSCRIBE_CONFIRM_TIMEOUT = 5.0
REDIS_POOL_SIZE = 32
"""Connections to Redis per server for commands (the pub/sub reader has one more of its own)."""


def _load_script(name: str) -> str:
    return (resources.files("fastapi_channels.backends") / "scripts" / f"{name}.lua").read_text()


class RedisBackend(BaseBackend):
    name = "redis"

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "ws:",
        registry_expiry: int = 30,
        group_expiry: int = 86400,
        reconnect_attempts: int = 5,
        reconnect_delay: float = 5.0,
        self_check_interval: float | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.registry_expiry = registry_expiry
        self.group_expiry = group_expiry
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay = reconnect_delay
        # The keeper's period: liveness refresh, reaping and the deafness probe.
        self.tick = (
            self_check_interval
            if self_check_interval is not None
            else max(0.5, min(2.0, registry_expiry / 3))
        )
        self.keys = RedisKeys(prefix, "")
        self.server_id = ""
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._handler: MessageHandler | None = None
        self._pubsub: PubSub | None = None
        self._topics: set[str] = set()
        self._topic_of: dict[bytes, str] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        # This server's own state, mirrored so it can be written again after Redis loses it.
        self._conns: dict[str, str] = {}
        self._memberships: set[tuple[str, str]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._down = False
        self._probe_sent = 0.0
        self._probe_seen = 0.0
        self._last_group_refresh = 0.0
        self.outages = 0
        self.deaf_repairs = 0
        self.state_rewrites = 0

    @classmethod
    def from_config(cls, config: WSConfig) -> RedisBackend:
        return cls(
            config.REDIS_URL,
            prefix=config.REDIS_CHANNEL_PREFIX,
            registry_expiry=config.REDIS_REGISTRY_EXPIRY,
            group_expiry=config.REDIS_GROUP_EXPIRY,
            reconnect_attempts=config.WS_RECONNECT_MAX_ATTEMPTS,
            reconnect_delay=config.WS_RECONNECT_DELAY,
        )

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise BackendError("the Redis backend is not started", error_code="BACKEND_NOT_STARTED")
        return self._client

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, server_id: str, on_message: MessageHandler) -> None:
        self.server_id = server_id
        self.keys = RedisKeys(self.prefix, server_id)
        self._handler = on_message
        # A bounded pool that makes callers wait for a free connection (up to 10 s) instead of
        # failing when a burst of connects or closes all need Redis at once. No automatic
        # retries: a retried PUBLISH could deliver twice; failures surface as BackendError.
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=REDIS_POOL_SIZE,
            timeout=10,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=5,
            socket_timeout=10,
        )
        self._client = Redis.from_pool(pool)  # the client owns and closes the pool
        await self._connect_with_retries()
        self._scripts = {name: self._client.register_script(_load_script(name)) for name in _SCRIPTS}
        await self._heartbeat()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._reader = loop.create_task(self._read_loop(ready), name="fastapi-channels-redis-reader")
        await asyncio.wait_for(asyncio.shield(ready), _SUBSCRIBE_CONFIRM_TIMEOUT * 2)
        self._keeper = loop.create_task(self._keep_loop(), name="fastapi-channels-redis-keeper")

    async def _connect_with_retries(self) -> None:
        attempts = self.reconnect_attempts + 1
        for attempt in range(1, attempts + 1):
            try:
                await self.client.ping()
                return
            except Exception as exc:
                if attempt == attempts:
                    await self._close_client()
                    raise BackendError(
                        f"Redis at {self.url} unreachable after {attempts} attempts: {exc}",
                        error_code="BACKEND_UNAVAILABLE",
                        component="redis",
                    ) from exc
                logger.warning(
                    "Redis unreachable (attempt %d/%d): %s; retrying in %.1fs",
                    attempt,
                    attempts,
                    exc,
                    self.reconnect_delay,
                )
                await asyncio.sleep(self.reconnect_delay)

    async def stop(self) -> None:
        for task in (self._keeper, self._reader):
            if task is not None:
                task.cancel()
        for task in (self._keeper, self._reader):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._keeper = self._reader = None
        if self._client is not None:
            try:
                await self._retire()
            except Exception as exc:
                logger.warning("could not remove this server's state from Redis (it will expire): %s", exc)
        await self._close_pubsub()
        await self._close_client()
        self._topics.clear()
        self._topic_of.clear()
        self._conns.clear()
        self._memberships.clear()
        self._handler = None

    async def _retire(self) -> None:
        """Leave nothing behind: mark this server dead now and reap its entries."""
        keys = self.keys
        await self.client.delete(keys.alive)
        await self.client.zadd(keys.servers, {self.server_id: 0})
        for _ in range(1000):
            if not await self._scripts["reap"](
                keys=[keys.servers, keys.groups], args=[self.prefix, _REAP_BATCH]
            ):
                break
        await self.client.zrem(keys.servers, self.server_id)

    async def _close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # --- topics --------------------------------------------------------------------------------
    async def publish(self, topic: str, payload: bytes) -> None:
        await self.client.publish(self.prefix + topic, payload)

    async def publish_to_user(self, user_topic: str, user_id: str, payload: bytes) -> int:
        count = await self._scripts["publish_to_user"](
            keys=[self.keys.user(user_id)], args=[self.prefix + user_topic, payload, self.prefix]
        )
        return int(count)

    async def subscribe(self, topic: str) -> None:
        channel = (self.prefix + topic).encode()
        self._topics.add(topic)
        self._topic_of[channel] = topic
        pubsub = self._pubsub
        if pubsub is None:
            return  # the reader subscribes every wanted topic when it (re)connects
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations[channel] = confirmed
        try:
            await pubsub.subscribe(channel)
            # Wait for Redis to confirm, so a publish right after this returns is not missed.
            await asyncio.wait_for(confirmed, _SUBSCRIBE_CONFIRM_TIMEOUT)
        except Exception as exc:
            logger.warning("subscribe to %s not confirmed (%s); the reader will retry", topic, exc)
        finally:
            if self._confirmations.get(channel) is confirmed:
                del self._confirmations[channel]

    async def unsubscribe(self, topic: str) -> None:
        channel = (self.prefix + topic).encode()
        self._topics.discard(topic)
        self._topic_of.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is not None:
            try:
                await pubsub.unsubscribe(channel)
            except Exception as exc:
                logger.debug("unsubscribe from %s failed (%s); the next reconnect drops it", topic, exc)

    async def _read_loop(self, ready: asyncio.Future[None]) -> None:
        """The one reader of this process: dispatch messages, reconnect forever with backoff."""
        failures = 0
        while True:
            try:
                pubsub = await self._open_pubsub()
                if not ready.done():
                    ready.set_result(None)
                if self._down:
                    await self._recovered()
                failures = 0
                await self._dispatch(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._close_pubsub()
                if not ready.done():
                    ready.set_exception(
                        BackendError(
                            f"Redis pub/sub failed: {exc}",
                            error_code="BACKEND_UNAVAILABLE",
                            component="redis",
                        )
                    )
                    return
                self._lost(exc)
                delay = min(self.reconnect_delay, 0.05 * 2**failures) if self.reconnect_delay > 0 else 0.05
                failures = min(failures + 1, 16)
                await asyncio.sleep(delay)

    async def _open_pubsub(self) -> PubSub:
        pubsub = self.client.pubsub()
        channels = [self.keys.probe.encode(), *((self.prefix + topic).encode() for topic in self._topics)]
        await pubsub.subscribe(*channels)
        self._pubsub = pubsub
        return pubsub

    async def _dispatch(self, pubsub: PubSub) -> None:
        handler = self._handler
        topic_of = self._topic_of
        probe = self.keys.probe.encode()
        confirmations = self._confirmations
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"]
            if kind == "message":
                topic = topic_of.get(channel)
                if topic is not None and handler is not None:
                    handler(topic, message["data"])
                elif channel == probe:
                    self._probe_seen = time.monotonic()
            elif kind == "subscribe":
                confirmed = confirmations.get(channel)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)

    # --- outages -------------------------------------------------------------------------------
    def _lost(self, exc: BaseException) -> None:
        if self._down:
            return
        self._down = True
        self.outages += 1
        logger.error("lost the Redis pub/sub connection (%s): reconnecting", exc)
        self._emit("lost", exc)

    async def _recovered(self) -> None:
        self._down = False
        logger.warning("Redis pub/sub connection restored: %d topics subscribed again", len(self._topics))
        with contextlib.suppress(Exception):
            await self._heartbeat()
        self._emit("recovered", None)

    # --- keeper: liveness, reaping, group expiry, deafness probe -----------------------------------
    async def _keep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self._heartbeat()
                await self._reap()
                await self._refresh_groups_if_due()
                await self._probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("Redis keeper step failed: %s", exc)

    async def _heartbeat(self) -> None:
        existed = await self._scripts["heartbeat"](
            keys=[self.keys.alive, self.keys.servers], args=[self.registry_expiry, self.server_id]
        )
        if not existed and (self._conns or self._memberships):
            await self._rewrite_state()

    async def _rewrite_state(self) -> None:
        """Write this server's connections and memberships again (Redis lost them, or reaped us)."""
        self.state_rewrites += 1
        logger.warning(
            "re-asserting %d connections and %d memberships in Redis",
            len(self._conns),
            len(self._memberships),
        )
        keys = self.keys
        async with self.client.pipeline(transaction=False) as pipe:
            for channel, user in list(self._conns.items()):
                pipe.hset(keys.conns, channel, user)
                if user:
                    pipe.sadd(keys.user(user), channel)
            for group, channel in list(self._memberships):
                pipe.sadd(keys.group(group), channel)
                pipe.sadd(keys.members, keys.membership(group, channel))
            await pipe.execute()
        await self._refresh_groups()

    async def _reap(self) -> None:
        reap = self._scripts["reap"]
        for _ in range(_REAP_ROUNDS_PER_TICK):
            if not await reap(keys=[self.keys.servers, self.keys.groups], args=[self.prefix, _REAP_BATCH]):
                return

    async def _refresh_groups_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_group_refresh >= max(1.0, self.group_expiry / 3):
            await self._refresh_groups()
            self._last_group_refresh = now

    async def _refresh_groups(self) -> None:
        groups = sorted({group for group, _ in self._memberships})
        script = self._scripts["refresh_groups"]
        for start in range(0, len(groups), _REFRESH_CHUNK):
            chunk = groups[start : start + _REFRESH_CHUNK]
            await script(keys=[self.keys.groups], args=[self.prefix, self.group_expiry, *chunk])

    async def _probe(self) -> None:
        """Publish to our own probe channel; if the last probe never came back, rebuild the reader."""
        now = time.monotonic()
        if self._probe_sent and self._probe_seen < self._probe_sent and not self._down:
            if now - self._probe_sent >= self.tick:
                self.deaf_repairs += 1
                logger.error("pub/sub subscription stopped delivering (probe lost): reconnecting it")
                await self._close_pubsub()  # the reader's next read fails and it reconnects
                self._restart_reader()
                self._probe_sent = 0.0
                return
            return
        self._probe_sent = now
        await self.client.publish(self.keys.probe, b"probe")

    def _restart_reader(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        ready.set_result(None)
        self._lost(RuntimeError("self-check probe not delivered"))
        self._reader = loop.create_task(self._read_loop(ready), name="fastapi-channels-redis-reader")

    # --- connections ---------------------------------------------------------------------------
    async def add_connection(
        self, channel_name: str, user_id: str | None, *, max_per_user: int, max_total: int
    ) -> Admission:
        keys = self.keys
        user = user_id or ""
        code = await self._scripts["add_connection"](
            keys=[keys.servers, keys.user(user) if user else keys.conns, keys.conns],
            args=[self.server_id, channel_name, user, max_per_user, max_total, self.prefix],
        )
        code = int(code)
        if code == 0:
            self._conns[channel_name] = user
            return Admission.ACCEPTED
        return Admission.USER_LIMIT if code == 1 else Admission.TOTAL_LIMIT

    async def remove_connection(self, channel_name: str, user_id: str | None) -> None:
        user = user_id or ""
        self._conns.pop(channel_name, None)
        await self._scripts["remove_connection"](
            keys=[self.keys.user(user) if user else self.keys.conns, self.keys.conns],
            args=[channel_name, user],
        )

    async def count_connections(self) -> int:
        return int(await self._scripts["count_connections"](keys=[self.keys.servers], args=[self.prefix]))

    async def count_user_connections(self, user_id: str) -> int:
        return int(
            await self._scripts["count_live"](keys=[self.keys.user(user_id)], args=[self.prefix, "count"])
        )

    # --- groups --------------------------------------------------------------------------------
    async def group_add(self, group: str, channel_name: str, *, max_groups: int) -> bool:
        keys = self.keys
        added = await self._scripts["group_add"](
            keys=[keys.group(group), keys.groups, keys.members],
            args=[group, channel_name, max_groups, self.group_expiry, keys.membership(group, channel_name)],
        )
        if added:
            self._memberships.add((group, channel_name))
        return bool(added)

    async def group_discard(self, group: str, channel_name: str) -> None:
        keys = self.keys
        self._memberships.discard((group, channel_name))
        await self._scripts["group_discard"](
            keys=[keys.group(group), keys.groups, keys.members],
            args=[group, channel_name, keys.membership(group, channel_name)],
        )

    async def group_members(self, group: str) -> set[str]:
        members: list[Any] = await self._scripts["count_live"](
            keys=[self.keys.group(group)], args=[self.prefix, "list"]
        )
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def group_size(self, group: str) -> int:
        return int(
            await self._scripts["count_live"](keys=[self.keys.group(group)], args=[self.prefix, "count"])
        )

    async def count_groups(self) -> int:
        return int(await self._scripts["count_groups"](keys=[self.keys.groups]))
