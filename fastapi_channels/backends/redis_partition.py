"""One partition's share of a server: its cluster state, its pub/sub reader, its probe.

A server holds one `Partition` per partition of the layout (`redis_layout`): on one Redis
just the home, on a cluster one per hash tag. Each keeps the whole failure machinery of its
own, because on a cluster each can fail alone (its shard's master dies, its slot moves):
liveness and the epoch in its slot, a write-back of this server's entries there when that
shard lost them, a reaper for dead servers' entries there, a reader subscribed on the shard
that serves its slot, and the deafness probe through that reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi_channels.backends.base import Admission
from fastapi_channels.backends.redis_connect import slot_pubsub
from fastapi_channels.backends.redis_keys import RedisKeys
from fastapi_channels.backends.redis_reader import PubSubReader, ReaderState
from fastapi_channels.backends.redis_state import ClusterState
from fastapi_channels.exceptions import BackendError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["Partition"]

logger = logging.getLogger(__name__)

_SUBSCRIBE_CONFIRM_TIMEOUT = 5.0

EventHandler = Callable[[int, str, BaseException | None], None]
EvictionHandler = Callable[[str, Admission], None]


class Partition:
    """The state, reader and probe of one partition (index 0: the home)."""

    def __init__(
        self,
        index: int,
        keys: RedisKeys,
        *,
        registry_expiry: int,
        group_expiry: int,
        resync_window: float,
        tick: float,
        check_writer: bool,
        sharded: bool,
        lazy: bool = False,
    ) -> None:
        """`lazy`: subscribe (open the reader) only when a topic of this partition is first
        wanted, so a server holds no connection to a shard where it has no members."""
        self.index = index
        self.lazy = lazy
        self.running = False
        self.keys = keys
        self.sharded = sharded
        self.resync_window = resync_window
        self.tick = tick
        self.state = ClusterState(
            keys,
            registry_expiry=registry_expiry,
            group_expiry=group_expiry,
            resync_window=resync_window,
            check_writer=check_writer,
            sharded=sharded,
        )
        self.reader: PubSubReader | None = None
        self._on_message: Callable[[str, bytes], None] | None = None
        self._on_event: EventHandler | None = None
        self._client: Redis | None = None
        self._rewriting: asyncio.Task[None] | None = None
        self._probe_sent = 0.0
        self.pubsub_lag: float | None = None
        self.deaf_repairs = 0

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(
        self,
        client: Redis,
        on_message: Callable[[str, bytes], None],
        on_event: EventHandler,
    ) -> None:
        """Take over what an earlier process with this server id left here, register, wait out
        a resync under way, then (unless lazy) subscribe: the reader is confirmed when this
        returns."""
        self._client = client
        self._on_message = on_message
        self._on_event = on_event
        self.state.bind(client)
        # State left by an earlier process with this server id belongs to no connection now.
        await self.state.retire()
        await self._until_trusted()
        self.running = True
        if not self.lazy:
            reader = self.reader = self._new_reader()
            try:
                await reader.start()  # stops itself when Redis does not confirm
            except BaseException:
                self.reader = None
                raise

    def listener(self) -> PubSubReader:
        """This partition's reader, launched on first use. It exists from that call on, so a
        topic wanted and then given up while it connects is given up there too; `subscribe`
        waits for Redis's confirmation."""
        reader = self.reader
        if reader is None:
            if not self.running:
                raise BackendError("the Redis backend is not started", error_code="BACKEND_NOT_STARTED")
            reader = self.reader = self._new_reader()
            reader.launch()
        return reader

    async def fence(self, timeout: float = 2.0) -> None:
        """Until a token published now on this server's probe channel is read back by the
        reader: all that Redis handed the reader's connection before it has been dispatched.
        Best effort, never an error: without a confirmed reader, when Redis refuses the
        publish, or past `timeout`, it returns (the reader's own outage reporting covers what
        a broken connection may have lost)."""
        reader = self.reader
        if reader is None or reader.state is not ReaderState.READY or self._client is None:
            return
        token = uuid.uuid4().hex.encode()
        arrived = reader.expect_fence(token)
        if arrived is None:
            return
        try:
            if self.sharded:
                await self._client.spublish(self.keys.probe, token)
            else:
                await self._client.publish(self.keys.probe, token)
            await asyncio.wait_for(asyncio.shield(arrived), timeout)
        except Exception as exc:  # TimeoutError included
            logger.debug("fence on partition %d not confirmed: %r", self.index, exc)
        finally:
            reader.forget_fence(token)

    def _new_reader(self) -> PubSubReader:
        on_message, on_event, index = self._on_message, self._on_event, self.index
        assert on_message is not None and on_event is not None, "Partition.start() first"
        return PubSubReader(
            self._open_pubsub,
            channel_prefix=self.keys.prefix,
            probe_channel=self.keys.probe,
            on_message=on_message,
            on_event=lambda event, error: on_event(index, event, error),
            confirm_timeout=_SUBSCRIBE_CONFIRM_TIMEOUT,
            sharded=self.sharded,
        )

    async def _open_pubsub(self) -> PubSub:
        """A new pub/sub connection for the reader: on a cluster, to the master serving this
        partition's slot (found anew each time: it changes with a failover or a resharding)."""
        assert self._client is not None
        if self.sharded:
            return await slot_pubsub(self._client, self.keys.probe)
        return self._client.pubsub()

    async def _until_trusted(self) -> None:
        """Register, and wait out a resync window in progress (Redis just lost, or may have
        lost, this partition's state: the other servers are writing theirs back)."""
        deadline = time.monotonic() + self.resync_window + 1
        await self.state.heartbeat()
        while not self.state.trusted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            await self.state.heartbeat()

    async def stop(self) -> None:
        """Stop the reader and the write-back; leave the state for `retire`."""
        self.running = False
        task = self._rewriting
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._rewriting = None
        if self.reader is not None:
            await self.reader.stop()
            self.reader = None

    async def retire(self) -> None:
        try:
            await self.state.retire()
        except Exception as exc:
            logger.warning("could not remove this server's state from Redis (it will expire): %s", exc)

    # --- readiness -----------------------------------------------------------------------------
    def not_ready(self) -> str | None:
        reader = self.reader
        if not self.running:
            return "backend_stopped"
        if reader is None:
            return None if self.lazy else "backend_stopped"  # lazy: not needed yet
        if reader.state is ReaderState.DOWN:
            return "backend_down"
        if reader.state is not ReaderState.READY:
            return "backend_connecting"
        changed = self.state.epoch_changed_at
        if changed and time.monotonic() - changed < self.resync_window:
            return "backend_resyncing"
        return None

    def on_lost(self) -> None:
        self._probe_sent = 0.0

    # --- writing back ------------------------------------------------------------------------
    def schedule_rewrite(self, evict: EvictionHandler | None, *, check: bool = False) -> None:
        if self._rewriting is not None and not self._rewriting.done():
            return
        self._rewriting = asyncio.get_running_loop().create_task(
            self.rewrite(evict, check), name=f"fastapi-channels-redis-rewrite-{self.index}"
        )

    async def rewrite(self, evict: EvictionHandler | None, check: bool) -> None:
        try:
            if check and not await self.state.heartbeat():
                return
            refused = await self.state.rewrite()
        except Exception as exc:
            logger.warning("writing this server's state back failed (the keeper retries): %s", exc)
            return
        for channel, admission in refused:
            logger.warning("connection %s no longer fits the limits (%s): closing it", channel, admission)
            if evict is not None:
                evict(channel, admission)

    # --- keeper: liveness, reaping, group expiry, deafness probe -------------------------------
    async def keep(self, evict: EvictionHandler | None) -> None:
        """One keeper tick for this partition."""
        if await self.state.heartbeat():
            await self.rewrite(evict, check=False)
        await self.state.retry_removals()
        await self.state.reap()
        await self.state.refresh_groups_if_due()
        await self._probe()

    async def _probe(self) -> None:
        """Publish to our own probe channel; if the last probe never came back, rebuild the reader.

        Judged only while the reader is confirmed and only for a probe sent after that, so a
        probe published during a reconnect never condemns the fresh subscription.
        """
        reader = self.reader
        if reader is None or reader.state is not ReaderState.READY or self._client is None:
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
        if self.sharded:
            await self._client.spublish(self.keys.probe, b"probe")
        else:
            await self._client.publish(self.keys.probe, b"probe")
