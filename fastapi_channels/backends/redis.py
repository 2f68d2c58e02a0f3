"""RedisBackend: many server processes sharing one Redis behave like one server.

One pub/sub connection per process carries every topic this server needs (its groups,
users, inbox, broadcast): `redis_reader` owns it. A send is one script call whatever the
group's size, and it answers how many servers got the message against how many have
members of its topic, so a send that reached fewer is never a silent success. Cluster state
(slots, memberships, liveness, its epoch) lives in `redis_state`'s scripts; a killed server's
entries are reaped by the survivors once its liveness key expires.

Failure handling is part of the design: the reader reconnects at once and then with a short
backoff, subscribes every wanted topic again and writes this server's state back (under the
limits) when Redis lost it; a probe through its own channel catches a subscription that went
deaf without an error; outages are reported to a listener.
Needs a non-cluster Redis >= 6.2: one server, or a master behind Redis Sentinel (`redis_connect`
builds the client either way; after a failover the reader's reconnect reaches the new master).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from fastapi_channels import routing
from fastapi_channels.backends.base import Admission, BaseBackend, Delivery, MessageHandler
from fastapi_channels.backends.redis_connect import RedisTarget, async_client, home_pubsub
from fastapi_channels.backends.redis_keys import RedisKeys
from fastapi_channels.backends.redis_reader import PubSubReader, ReaderState
from fastapi_channels.backends.redis_state import ClusterState
from fastapi_channels.exceptions import BackendError
from fastapi_channels.history import HistoryEntry, HistoryRead
from fastapi_channels.redact import redact_url

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from fastapi_channels.config import WSConfig

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

_SUBSCRIBE_CONFIRM_TIMEOUT = 5.0
RESYNC_WINDOW = 2.0
"""Seconds after Redis lost its data during which every server is expected to have written
its state back; until then sends cannot be verified and new connections wait."""
REDIS_POOL_SIZE = 32
"""Connections to Redis per server for commands (the pub/sub reader has one more of its own)."""


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
        resync_window: float = RESYNC_WINDOW,
        target: RedisTarget | None = None,
    ) -> None:
        """`target` says how to reach Redis (a sentinel-managed master, ...); without it, the
        one Redis at `url`."""
        super().__init__()
        self.target = target if target is not None else RedisTarget(url)
        self.url = self.target.url
        self.prefix = self.target.key_prefix(prefix)  # a hash tag on a cluster: one slot for all
        self.registry_expiry = registry_expiry
        self.group_expiry = group_expiry
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay = reconnect_delay
        self.resync_window = resync_window
        # The keeper's period: liveness refresh, reaping and the deafness probe.
        self.tick = (
            self_check_interval
            if self_check_interval is not None
            else max(0.5, min(2.0, registry_expiry / 3))
        )
        self.keys = RedisKeys(self.prefix, "")
        self.server_id = ""
        self._client: Redis | None = None
        self._handler: MessageHandler | None = None
        self.state = self._new_state()
        self.reader: PubSubReader | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._rewriting: asyncio.Task[None] | None = None
        self._probe_sent = 0.0
        self.outages = 0
        self.deaf_repairs = 0

    def _new_state(self) -> ClusterState:
        return ClusterState(
            self.keys,
            registry_expiry=self.registry_expiry,
            group_expiry=self.group_expiry,
            resync_window=self.resync_window,
            # Behind Sentinel or in a cluster a promoted replica may lack the old master's last
            # writes: the heartbeat then finds another Redis process under the state and treats
            # it as lost.
            check_writer=self.target.mode != "standalone",
            sharded=self.target.sharded,
        )

    @classmethod
    def from_config(cls, config: WSConfig) -> RedisBackend:
        return cls(
            config.REDIS_URL,
            prefix=config.REDIS_CHANNEL_PREFIX,
            registry_expiry=config.REDIS_REGISTRY_EXPIRY,
            group_expiry=config.REDIS_GROUP_EXPIRY,
            reconnect_attempts=config.WS_RECONNECT_MAX_ATTEMPTS,
            reconnect_delay=config.WS_RECONNECT_DELAY,
            target=RedisTarget.from_config(config),
        )

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise BackendError("the Redis backend is not started", error_code="BACKEND_NOT_STARTED")
        return self._client

    @property
    def state_rewrites(self) -> int:
        return self.state.rewrites

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, server_id: str, on_message: MessageHandler) -> None:
        self.server_id = server_id
        self.keys = RedisKeys(self.prefix, server_id)
        self.state = self._new_state()
        self._handler = on_message
        # A bounded pool that makes callers wait for a free connection (up to 10 s) instead of
        # failing when a burst of connects or closes all need Redis at once. No automatic
        # retries: a retried PUBLISH could deliver twice; failures surface as BackendError.
        # Everything here is created on the running loop, so a backend can be started again on
        # another loop after stop().
        # In sentinel mode every new connection (the reader's too) asks the sentinels for the
        # master, so connections made after a failover reach the promoted replica.
        self._client = async_client(
            self.target,
            max_connections=REDIS_POOL_SIZE,
            timeout=10,
            socket_connect_timeout=5,
            socket_timeout=10,
        )
        try:
            await self._connect_with_retries()
            self.state.bind(self._client)
            # State left by an earlier process with this server id belongs to no connection now.
            await self.state.retire()
            await self._until_trusted()
            self.reader = PubSubReader(
                self._open_pubsub,
                channel_prefix=self.prefix,
                probe_channel=self.keys.probe,
                on_message=self._deliver,
                on_event=self._on_reader_event,
                confirm_timeout=_SUBSCRIBE_CONFIRM_TIMEOUT,
                sharded=self.target.sharded,
            )
            await self.reader.start()
        except BaseException:
            await self._close_client()
            self.reader = None
            raise
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep_loop(), name="fastapi-channels-redis-keeper"
        )

    async def _open_pubsub(self) -> PubSub:
        """A new pub/sub connection for the reader: on a cluster, to the master serving the
        slot of our channels (found anew each time: it changes with a failover)."""
        if self.target.sharded:
            return await home_pubsub(self.client, self.keys.probe)
        return self.client.pubsub()

    async def _until_trusted(self) -> None:
        """Register, and wait out a resync window in progress (Redis just lost, or may have
        lost, its state: the other servers are writing theirs back) before taking clients."""
        deadline = time.monotonic() + self.resync_window + 1
        await self.state.heartbeat()
        while not self.state.trusted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            await self.state.heartbeat()

    async def _connect_with_retries(self) -> None:
        attempts = self.reconnect_attempts + 1
        shown = self.target.describe()
        for attempt in range(1, attempts + 1):
            try:
                await self.client.ping()
            except Exception as exc:
                mismatch = await self._topology_mismatch(reachable=False)
                if mismatch is not None:
                    raise BackendError(mismatch, error_code="BACKEND_MISCONFIGURED", retryable=False) from exc
                if attempt == attempts:
                    raise BackendError(
                        f"Redis at {shown} unreachable after {attempts} attempts: {type(exc).__name__}",
                        error_code="BACKEND_UNAVAILABLE",
                        component="redis",
                    ) from exc
                logger.warning(
                    "Redis at %s unreachable (attempt %d/%d): %s; retrying in %.1fs",
                    shown,
                    attempt,
                    attempts,
                    type(exc).__name__,
                    self.reconnect_delay,
                )
                await asyncio.sleep(self.reconnect_delay)
            else:
                mismatch = await self._topology_mismatch(reachable=True)
                if mismatch is not None:
                    raise BackendError(mismatch, error_code="BACKEND_MISCONFIGURED", retryable=False)
                return

    async def _topology_mismatch(self, *, reachable: bool) -> str | None:
        """Why the Redis at REDIS_URL does not fit REDIS_MODE, as Redis itself says (INFO
        cluster), else None. A cluster node taken for one Redis would answer MOVED to most
        keys; one Redis taken for a cluster refuses the cluster client at once. Either is a
        setting to fix, not an outage to retry."""
        if self.target.mode == "cluster":
            if reachable:
                return None
            plain = async_client(RedisTarget(self.target.url), max_connections=1, timeout=2)
            try:
                enabled = (await plain.info("cluster")).get("cluster_enabled")
            except Exception:
                return None  # unreachable: an outage after all
            finally:
                await plain.aclose()
            if enabled == 0:
                return (
                    f"REDIS_MODE=cluster, but {redact_url(self.target.url)} is not a Redis Cluster "
                    "node (cluster mode is not enabled): set REDIS_MODE=standalone"
                )
            return None
        if reachable and (await self.client.info("cluster")).get("cluster_enabled") == 1:
            return f"{self.target.describe()} is a Redis Cluster node: set REDIS_MODE=cluster"
        return None

    async def stop(self) -> None:
        for task in (self._keeper, self._rewriting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._keeper = self._rewriting = None
        if self.reader is not None:
            await self.reader.stop()
            self.reader = None
        if self._client is not None:
            try:
                await self.state.retire()
            except Exception as exc:
                logger.warning("could not remove this server's state from Redis (it will expire): %s", exc)
        await self._close_client()
        self.state.clear()
        self._handler = None

    async def _close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    # --- topics --------------------------------------------------------------------------------
    def _audience(self, topic: str) -> tuple[str, str]:
        """The key that says who should hear `topic`, and how to read it (see publish.lua)."""
        kind, _, name = topic.partition(":")
        if kind == "group":
            return self.keys.group_servers(name), "counts"
        if kind == "user":
            return self.keys.user(name), "counts"
        if kind == "inbox":
            return self.keys.alive_of(name), "owner"
        return self.keys.servers, "servers"

    async def _publish(self, topic: str, payload: bytes, *, exact: bool) -> Delivery:
        audience, kind = self._audience(topic)
        state = self.state
        reached, expected, connections, epoch = await state.script("publish")(
            keys=[self.keys.epoch, audience, self.keys.servers],
            args=[
                self.keys.channel(topic),
                payload,
                kind,
                self.prefix,
                *state.epoch_args(),
                "1" if exact else "0",
            ],
        )
        if state.learn_epoch(epoch):
            self._schedule_rewrite()
        expected = int(expected)
        return Delivery(int(reached), None if expected < 0 else expected, int(connections))

    async def publish(self, topic: str, payload: bytes) -> Delivery:
        return await self._publish(topic, payload, exact=False)

    async def publish_history(
        self, topic: str, group: str, outer: bytes, inner: bytes, body: str, size: int, ttl: int
    ) -> tuple[Delivery, int, str]:
        audience, kind = self._audience(topic)
        state = self.state
        keys = self.keys
        reached, expected, connections, epoch, offset, history_epoch = await state.script("publish_history")(
            keys=[keys.epoch, audience, keys.history(group), keys.history_position(group), keys.servers],
            args=[
                keys.channel(topic),
                outer,
                inner,
                body,
                kind,
                self.prefix,
                *state.epoch_args(),
                size,
                ttl,
                uuid.uuid4().hex[:16],
            ],
        )
        if state.learn_epoch(epoch):
            self._schedule_rewrite()
        expected = int(expected)
        delivery = Delivery(int(reached), None if expected < 0 else expected, int(connections))
        return delivery, int(offset), _text(history_epoch)

    async def read_history(self, group: str, after: int, limit: int, size: int, ttl: int) -> HistoryRead:
        keys = self.keys
        answer = await self.state.script("read_history")(
            keys=[keys.history(group), keys.history_position(group), keys.epoch], args=[after, limit, size]
        )
        epoch, offset, first, *flat = answer
        if not epoch:
            return HistoryRead(None, 0, 1, [])
        entries = [
            HistoryEntry(int(flat[i]), _text(flat[i + 1]), _exclusions(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]
        return HistoryRead(_text(epoch), int(offset), int(first), entries)

    async def publish_to_user(self, user_topic: str, user_id: str, payload: bytes) -> Delivery:
        return await self._publish(user_topic, payload, exact=True)

    async def subscribe(self, topic: str) -> None:
        if self.reader is None:
            raise BackendError("the Redis backend is not started", error_code="BACKEND_NOT_STARTED")
        await self.reader.subscribe(topic)

    def listening(self, topic: str) -> bool:
        reader = self.reader
        return reader is not None and reader.listening(topic)

    def not_ready(self) -> str | None:
        """`backend_stopped`, `backend_connecting`, `backend_down`, or `backend_resyncing` while
        the servers write their state back after Redis lost it (new connections are refused)."""
        reader = self.reader
        if reader is None:
            return "backend_stopped"
        if reader.state is ReaderState.DOWN:
            return "backend_down"
        if reader.state is not ReaderState.READY:
            return "backend_connecting"
        changed = self.state.epoch_changed_at
        if changed and time.monotonic() - changed < self.resync_window:
            return "backend_resyncing"
        return None

    async def unsubscribe(self, topic: str) -> None:
        if self.reader is not None:
            await self.reader.unsubscribe(topic)

    def _deliver(self, topic: str, payload: bytes) -> None:
        handler = self._handler
        if handler is not None:
            handler(topic, payload)

    # --- outages -------------------------------------------------------------------------------
    def _on_reader_event(self, event: str, error: BaseException | None) -> None:
        if event == "lost":
            self.outages += 1
            self._probe_sent = 0.0
        else:
            # Confirmed again: if Redis lost our state meanwhile, write it back now, not at the
            # keeper's next tick (the resync window is counting).
            self._schedule_rewrite(check=True)
        self._emit(event, error)

    def _schedule_rewrite(self, *, check: bool = False) -> None:
        if self._rewriting is not None and not self._rewriting.done():
            return
        self._rewriting = asyncio.get_running_loop().create_task(
            self._rewrite(check), name="fastapi-channels-redis-rewrite"
        )

    async def _rewrite(self, check: bool) -> None:
        try:
            if check and not await self.state.heartbeat():
                return
            refused = await self.state.rewrite()
        except Exception as exc:
            logger.warning("writing this server's state back failed (the keeper retries): %s", exc)
            return
        evict = self._evict
        for channel, admission in refused:
            logger.warning("connection %s no longer fits the limits (%s): closing it", channel, admission)
            if evict is not None:
                evict(channel, admission)

    # --- keeper: liveness, reaping, group expiry, deafness probe -----------------------------------
    async def _keep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                if await self.state.heartbeat():
                    await self._rewrite(check=False)
                await self.state.retry_removals()
                await self.state.reap()
                await self.state.refresh_groups_if_due()
                await self._probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("Redis keeper step failed: %s", exc)

    async def _probe(self) -> None:
        """Publish to our own probe channel; if the last probe never came back, rebuild the reader.

        Judged only while the reader is confirmed and only for a probe sent after that, so a
        probe published during a reconnect never condemns the fresh subscription.
        """
        reader = self.reader
        if reader is None or reader.state is not ReaderState.READY:
            self._probe_sent = 0.0
            return
        now = time.monotonic()
        sent = self._probe_sent
        if sent and reader.probe_seen >= sent:
            self.pubsub_lag = reader.probe_seen - sent  # the last probe's round trip
        if sent and sent > reader.ready_at and reader.probe_seen < sent:
            if now - sent >= self.tick:
                self.deaf_repairs += 1
                self._probe_sent = 0.0
                logger.error("pub/sub subscription stopped delivering (probe lost): reconnecting it")
                reader.reconnect(RuntimeError("self-check probe not delivered"))
            return
        self._probe_sent = now
        if self.target.sharded:
            await self.client.spublish(self.keys.probe, b"probe")
        else:
            await self.client.publish(self.keys.probe, b"probe")

    # --- connections ---------------------------------------------------------------------------
    async def add_connection(
        self, channel_name: str, user_id: str | None, *, max_per_user: int, max_total: int
    ) -> Admission:
        return await self.state.add_connection(
            channel_name, user_id, max_per_user=max_per_user, max_total=max_total
        )

    async def remove_connection(self, channel_name: str, user_id: str | None) -> None:
        await self.state.remove_connection(channel_name, user_id)

    async def count_connections(self) -> int:
        return await self.state.count_connections()

    async def count_user_connections(self, user_id: str) -> int:
        return await self.state.count_user_connections(user_id)

    # --- groups --------------------------------------------------------------------------------
    async def group_add(self, group: str, channel_name: str, *, max_groups: int) -> bool:
        return await self.state.group_add(group, channel_name, max_groups=max_groups)

    async def group_discard(self, group: str, channel_name: str) -> None:
        await self.state.group_discard(group, channel_name)

    async def group_members(self, group: str) -> set[str]:
        return await self.state.group_members(group)

    async def group_size(self, group: str) -> int:
        return await self.state.group_size(group)

    async def count_groups(self) -> int:
        return await self.state.count_groups()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _exclusions(header: bytes | str) -> frozenset[str]:
    data = header.encode() if isinstance(header, str) else header
    return routing.decode_envelope(data + b"t").exclude if data else frozenset()
