"""PubSubReader: the one pub/sub connection of a server, and the truth about what it hears.

It keeps the topics the server *wants* apart from the ones Redis has *confirmed* on the
current connection. Every (re)connect subscribes to every wanted topic in one command and
counts the acknowledgements; `subscribe()` returns only once its topic is confirmed (or
raises), and no lock is held while it waits, so one slow confirmation never queues others.

On a Redis Cluster (`sharded`) the same connection goes to the master of the slot all our
channels hash to, and speaks sharded pub/sub (SSUBSCRIBE, `smessage`). When that slot moves
(a failover, a resharding), Redis ends the subscriptions with a `sunsubscribe` nobody asked
for: the reader takes it as a lost connection and subscribes again wherever the slot is now.

A connection lost without Redis noticing (a silent network cut: nothing closed on its
side) would stay subscribed there until Redis's TCP keepalive gives up, minutes later, and
every PUBLISH would count this server twice: a send that missed another server could pass
for complete. So each new connection first ends the ones before it, by the id and address
Redis knows them by (`CLIENT KILL ID .. ADDR .. TYPE pubsub`), and only on the Redis they
were made to (its `run_id`): after a restart or a promotion the same id is another client.

Not for cluster state or publishing: `redis_state` and the backend do that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from fastapi_channels.backends.redis_keys import pubsub_channel
from fastapi_channels.exceptions import BackendError

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

__all__ = ["PubSubReader", "ReaderState"]

logger = logging.getLogger(__name__)

RECONNECT_BACKOFF_CAP = 0.25
"""Longest pause between two failed reconnect attempts: a refused localhost connect costs
microseconds, and every pause is time in which this server hears nothing."""

MAX_WAITERS_PER_TOPIC = 10_000
"""Callers waiting for one topic's confirmation; past it `subscribe` fails at once."""

MAX_STALE = 16
"""Earlier pub/sub connections remembered for a kill (see `PubSubReader._take_over`): more
than one only when take-overs keep failing; past it the oldest is left to Redis's keepalive."""

MAX_FENCES = 10_000
"""Fences (see `PubSubReader.expect_fence`) waiting at once; past it a fence is not set up and
its caller goes on without it."""


class ReaderState(StrEnum):
    CONNECTING = "connecting"  # a connection attempt (or its subscriptions) is under way
    READY = "ready"  # every wanted topic was confirmed on the current connection
    DOWN = "down"  # the last attempt failed: Redis is unreachable


class PubSubReader:
    """Owns the pub/sub connection: subscribe, confirm, dispatch, reconnect, probe."""

    def __init__(
        self,
        open_pubsub: Callable[[], Awaitable[PubSub]],
        *,
        channel_prefix: str,
        probe_channel: str,
        on_message: Callable[[str, bytes], None],
        on_event: Callable[[str, BaseException | None], None],
        confirm_timeout: float = 5.0,
        sharded: bool = False,
    ) -> None:
        """`open_pubsub` makes a new pub/sub connection (not yet connected) for each attempt."""
        self._open = open_pubsub
        self.sharded = sharded
        self._prefix = channel_prefix
        self._probe = probe_channel.encode()
        self._on_message = on_message
        self._on_event = on_event
        self.confirm_timeout = confirm_timeout
        self.wanted: set[str] = set()
        self.confirmed: set[str] = set()
        self.state = ReaderState.CONNECTING
        self.ready_at = 0.0
        self.probe_seen = 0.0
        self._topic_of: dict[bytes, str] = {}
        self._on_wire: dict[str, bool] = {}  # what the last command sent for a topic asked for
        self._unacked: dict[str, int] = {}  # commands sent for a topic, not yet acknowledged
        self._initial: set[bytes] = set()  # channels of the connect-time SUBSCRIBE not yet acked
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._fences: dict[bytes, asyncio.Future[None]] = {}  # token -> its arrival
        self._pubsub: PubSub | None = None
        # Who the current pub/sub connection is to Redis (run_id, client id, addr), and earlier
        # ones Redis may still hold (a silent cut): see `_take_over`. Bounded: MAX_STALE.
        self._current: tuple[bytes, bytes, bytes] | None = None
        self._stale: deque[tuple[bytes, bytes, bytes]] = deque(maxlen=MAX_STALE)
        self._refusal_told = False
        self.stale_connections_ended = 0
        self._task: asyncio.Task[None] | None = None
        self._lost = False
        self._ever_ready = False

    # --- lifecycle -----------------------------------------------------------------------------
    def launch(self) -> None:
        """Connect in the background: `subscribe` waits for its topic's confirmation, and the
        topics wanted meanwhile go in the connect-time subscription."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="fastapi-channels-redis-reader"
            )

    async def start(self) -> None:
        """Connect and wait for the first confirmation; BackendError when Redis does not answer.
        Stopped again if the wait is cancelled: no reader outlives a failed start."""
        self.launch()
        deadline = time.monotonic() + 2 * self.confirm_timeout
        try:
            while self.state is not ReaderState.READY:
                task = self._task
                ended = task is None or task.done()
                if self.state is ReaderState.DOWN or time.monotonic() > deadline or ended:
                    raise BackendError(
                        "Redis pub/sub did not confirm the subscriptions",
                        error_code="BACKEND_UNAVAILABLE",
                        component="redis",
                    )
                await asyncio.sleep(0.01)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close(self._pubsub)
        self._release_fences()
        self._fail_waiters(BackendError("the Redis backend stopped", error_code="BACKEND_NOT_STARTED"))
        self.wanted.clear()
        self.confirmed.clear()
        self._topic_of.clear()
        self._on_wire.clear()
        self._unacked.clear()

    def reconnect(self, reason: BaseException) -> None:
        """Drop the current connection and start again (used when the probe finds it deaf)."""
        if self._task is None:
            return
        self._task.cancel()
        self._mark_lost(reason)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fastapi-channels-redis-reader")

    # --- topics --------------------------------------------------------------------------------
    def channel(self, topic: str) -> bytes:
        return pubsub_channel(self._prefix, topic).encode()

    async def subscribe(self, topic: str) -> None:
        """Want `topic` and return once Redis confirmed it, or once it is no longer wanted.

        Raises BackendError when Redis is unreachable or does not confirm in time; the topic
        stays wanted, so the next reconnect subscribes it (the caller decides whether to undo).
        """
        self.wanted.add(topic)
        self._topic_of[self.channel(topic)] = topic
        if self._on_wire.get(topic) is not True and self.state is not ReaderState.DOWN:
            await self._send(topic, subscribe=True)
        if topic not in self.wanted or self._is_confirmed(topic):
            return  # confirmed, or no longer wanted (an unsubscribe came meanwhile)
        if self.state is ReaderState.DOWN:
            raise BackendError(
                f"cannot subscribe to {topic!r}: Redis is unreachable",
                error_code="BACKEND_UNAVAILABLE",
                component="redis",
            )
        waiters = self._waiters.setdefault(topic, [])
        if len(waiters) >= MAX_WAITERS_PER_TOPIC:
            raise BackendError("too many callers waiting for one subscription", component="redis")
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.confirm_timeout)
        except TimeoutError:
            raise BackendError(
                f"subscription to {topic!r} not confirmed within {self.confirm_timeout:g}s",
                error_code="SUBSCRIBE_TIMEOUT",
                component="redis",
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters and self._waiters.get(topic) is waiters:
                del self._waiters[topic]

    async def unsubscribe(self, topic: str) -> None:
        """Stop wanting `topic` (idempotent); anyone waiting for it returns."""
        self.wanted.discard(topic)
        self._resolve(topic)
        if self._on_wire.get(topic) is True:
            await self._send(topic, subscribe=False)
        elif not self._unacked.get(topic) and topic not in self.wanted:
            # Never went on the wire (e.g. wanted during an outage): nothing will answer for it.
            self._on_wire.pop(topic, None)
            self._topic_of.pop(self.channel(topic), None)

    def listening(self, topic: str) -> bool:
        return self.state is ReaderState.READY and self._is_confirmed(topic)

    def _is_confirmed(self, topic: str) -> bool:
        return topic in self.confirmed and not self._unacked.get(topic)

    async def _send(self, topic: str, *, subscribe: bool) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return  # the connect-time SUBSCRIBE covers every wanted topic
        self._on_wire[topic] = subscribe
        self._unacked[topic] = self._unacked.get(topic, 0) + 1
        channel = self.channel(topic)
        try:
            if self.sharded:
                await (pubsub.ssubscribe(channel) if subscribe else pubsub.sunsubscribe(channel))
            elif subscribe:
                await pubsub.subscribe(channel)
            else:
                await pubsub.unsubscribe(channel)
        except Exception as exc:
            # The connection broke under us: the reader sees it too and reconnects.
            logger.debug("%s of %s not sent: %r", "subscribe" if subscribe else "unsubscribe", topic, exc)

    def _resolve(self, topic: str) -> None:
        for waiter in self._waiters.pop(topic, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _fail_waiters(self, error: BaseException) -> None:
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for waiter in futures:
                if not waiter.done():
                    waiter.set_exception(error)

    # --- the read loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0  # failed attempts since the connection was last confirmed
        while True:
            pubsub: PubSub | None = None
            try:
                pubsub = await self._open()
                await self._connect(pubsub)
                await self._dispatch(pubsub)
            except asyncio.CancelledError:
                await self._close(pubsub)
                raise
            except Exception as exc:
                was_ready = self.state is ReaderState.READY
                await self._close(pubsub)
                self._mark_lost(exc)
                if was_ready:
                    failures = 0
                    continue  # the first attempt goes at once: Redis may well answer
                failures = min(failures + 1, 16)
                logger.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "Redis pub/sub reconnect attempt %d failed: %s",
                    failures,
                    exc,
                )
                if failures >= 2:
                    # Two attempts in a row failed: Redis is unreachable, and callers are told
                    # at once instead of waiting for a deadline. (One failed attempt right
                    # after a loss can be a stale pooled connection.)
                    self.state = ReaderState.DOWN
                    self._fail_waiters(BackendError(f"Redis is unreachable: {exc}", component="redis"))
                await asyncio.sleep(min(RECONNECT_BACKOFF_CAP, 0.02 * 2**failures))

    async def _connect(self, pubsub: PubSub) -> None:
        """Subscribe every wanted topic (and the probe) in one command on a new connection."""
        self.state = ReaderState.CONNECTING
        self.confirmed.clear()
        topics = sorted(self.wanted)
        self._topic_of = {self.channel(topic): topic for topic in topics}
        channels = [self._probe, *(self.channel(topic) for topic in topics)]
        self._on_wire = dict.fromkeys(topics, True)
        self._unacked = dict.fromkeys(topics, 1)
        self._initial = set(channels)
        await self._take_over(pubsub)
        if self.sharded:
            await pubsub.ssubscribe(*channels)
        else:
            await pubsub.subscribe(*channels)
        # redis-py would subscribe this connection again by itself if it reconnected it: the
        # reader makes a new one instead, and two subscriptions of one server would count twice.
        connection = pubsub.connection
        if connection is not None:
            connection.deregister_connect_callback(pubsub.on_connect)
        self._pubsub = pubsub
        # Wants that changed while that command was on its way.
        for topic in [t for t in self.wanted if not self._on_wire.get(t)]:
            await self._send(topic, subscribe=True)
        for topic in [t for t, on in self._on_wire.items() if on and t not in self.wanted]:
            await self._send(topic, subscribe=False)

    async def _take_over(self, pubsub: PubSub) -> None:
        """On a new connection, before it subscribes: end the earlier ones Redis may still hold,
        and learn who this one is to Redis for the next time.

        An earlier connection is forgotten only once Redis answered its kill (or refused it),
        so a take-over cut short by another failure is tried again on the next connection.
        A kill goes only to the Redis that connection was made to (same `run_id`): client ids
        start again at 1 after a restart, and on a unix socket every client has one address.
        """
        await pubsub.connect()  # type: ignore[no-untyped-call]
        connection = pubsub.connection
        if connection is None:
            return
        if self._current is not None:
            self._stale.append(self._current)  # the connection this one replaces
            self._current = None
        run_id = await self._ask(connection, "INFO", "server")
        server = _field(run_id, b"run_id") if run_id is not None else None
        for stale in list(self._stale):
            if stale[0] != server:
                self._stale.remove(stale)  # made to another Redis (restarted, promoted): not here
                continue
            answer = await self._ask(
                connection,
                "CLIENT",
                "KILL",
                "ID",
                stale[1],
                "ADDR",
                stale[2],
                "TYPE",
                "pubsub",
                "SKIPME",
                "yes",
            )
            self._stale.remove(stale)
            if answer:
                self.stale_connections_ended += 1
                logger.warning(
                    "ended this server's earlier Redis pub/sub connection, which Redis still held "
                    "(a silent network cut): it would have counted this server twice"
                )
        info = await self._ask(connection, "CLIENT", "INFO")
        if server is not None and info is not None:
            client_id, addr = _field(info, b"id"), _field(info, b"addr")
            if client_id and addr:
                self._current = (server, client_id, addr)

    async def _ask(self, connection: Any, *command: Any) -> Any:
        """One command on the not yet subscribed connection; None when Redis refused it (an
        ACL without it, a renamed command): then only Redis's TCP keepalive ends a stale
        connection, which is said once, as a warning."""
        await connection.send_command(*command)
        try:
            return await connection.read_response()
        except ResponseError as exc:
            if not self._refusal_told:
                self._refusal_told = True
                logger.warning(
                    "Redis refused %s on the pub/sub connection (%s): a connection lost without Redis "
                    "noticing may count this server twice until Redis's keepalive ends it; allow the "
                    "library's user INFO, CLIENT INFO and CLIENT KILL",
                    " ".join(str(part) for part in command[:2]),
                    exc,
                )
            return None

    async def _dispatch(self, pubsub: PubSub) -> None:
        handler = self._on_message
        topic_of = self._topic_of
        probe = self._probe
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"]
            if kind == "message" or kind == "smessage":
                topic = topic_of.get(channel)
                if topic is not None:
                    handler(topic, message["data"])
                elif channel == probe:
                    self.probe_seen = time.monotonic()
                    fence = self._fences.pop(message["data"], None)
                    if fence is not None and not fence.done():
                        fence.set_result(None)
            elif kind == "subscribe" or kind == "unsubscribe" or kind == "ssubscribe":
                self._acknowledged(channel)
            elif kind == "sunsubscribe":
                topic = topic_of.get(channel)
                if channel == probe or topic is None or not self._unacked.get(topic):
                    # Nobody asked: the slot moved to another shard (failover, resharding).
                    raise ConnectionError("the cluster moved our channels' slot: subscribing again")
                self._acknowledged(channel)

    def _acknowledged(self, channel: bytes) -> None:
        topic = self._topic_of.get(channel)
        if topic is not None:
            left = self._unacked.get(topic, 0) - 1
            if left > 0:
                self._unacked[topic] = left
            else:
                self._unacked.pop(topic, None)
                if self._on_wire.get(topic):
                    self.confirmed.add(topic)
                    self._resolve(topic)
                else:
                    self.confirmed.discard(topic)
                    self._on_wire.pop(topic, None)
                    self._resolve(topic)
                    if topic not in self.wanted:
                        self._topic_of.pop(channel, None)
        initial = self._initial
        if initial:
            initial.discard(channel)
            if not initial:
                self._ready()

    def _ready(self) -> None:
        self.state = ReaderState.READY
        self.ready_at = time.monotonic()
        self._ever_ready = True
        if self._lost:
            self._lost = False
            logger.warning("Redis pub/sub connection restored: %d topics confirmed", len(self.confirmed))
            self._on_event("recovered", None)

    def expect_fence(self, token: bytes) -> asyncio.Future[None] | None:
        """A future done when `token`, published on the probe channel, is read back here: then
        everything Redis handed this connection before it has been dispatched (one connection
        delivers in order). None when too many fences wait already. A fence that can no longer
        come (the connection was lost or the reader stopped) is done too: its caller goes on."""
        if len(self._fences) >= MAX_FENCES or self._pubsub is None:
            return None
        fence = self._fences[token] = asyncio.get_running_loop().create_future()
        return fence

    def forget_fence(self, token: bytes) -> None:
        self._fences.pop(token, None)

    def _release_fences(self) -> None:
        fences, self._fences = self._fences, {}
        for fence in fences.values():
            if not fence.done():
                fence.set_result(None)

    def _mark_lost(self, exc: BaseException) -> None:
        self._release_fences()
        if self.state is not ReaderState.DOWN:
            self.state = ReaderState.CONNECTING
        self.confirmed.clear()
        self._initial = set()
        if not self._lost and self._ever_ready:
            self._lost = True
            logger.error("lost the Redis pub/sub connection (%s): reconnecting", exc)
            self._on_event("lost", exc)

    async def _close(self, pubsub: PubSub | None) -> None:
        if pubsub is None:
            return
        if self._pubsub is pubsub:
            self._pubsub = None
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]


def _field(text: bytes | str, name: bytes) -> bytes | None:
    """A field of a CLIENT INFO line (`id=7 addr=...`) or an INFO section (`run_id:...`)."""
    raw = text if isinstance(text, bytes) else text.encode()
    for part in raw.split():
        key, sep, value = part.partition(b"=" if b"=" in part else b":")
        if sep and key == name:
            return value
    return None
