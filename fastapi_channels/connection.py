"""Connection: one WebSocket, its bounded outbound buffer and the single task that writes to it.

Everything sent to a socket goes through `enqueue`, which never blocks and never awaits, so
a fan-out loop costs one append per recipient and a slow or dead client can only fill its
own buffer. When the buffer is full the overflow policy decides (close with 1013 by
default, or drop the oldest or the newest frame) and the event is counted.

Not for routing or indexes: that is the manager's and the registry's work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from typing import Any, Literal

from starlette.types import Message as ASGIMessage
from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from fastapi_channels.eager import Unfinished, run_eagerly, server_send
from fastapi_channels.exceptions import CloseCode
from fastapi_channels.framing import FAST_PATH_EXTENSION, encode_frame, payload_size
from fastapi_channels.stats import Counters, WaitHistogram

__all__ = ["Connection", "ConnectionState", "OverflowPolicy", "WriteCoalescer"]

logger = logging.getLogger(__name__)

OverflowPolicy = Literal["close", "drop_oldest", "drop_newest"]

clock: Callable[[], float] = time.monotonic
"""The clock outbound waits are measured with (a test may replace it)."""


class ConnectionState(StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


def _asgi_message(frame: str | bytes) -> ASGIMessage:
    """The ASGI event that sends `frame` as a text (str) or binary (bytes) frame."""
    if frame.__class__ is str:
        return {"type": "websocket.send", "text": frame}
    return {"type": "websocket.send", "bytes": frame}


class WriteCoalescer:
    """Writes connections' queued frames, a slice of connections per loop iteration.

    Connections with frames to write wait in one FIFO (each at most once, so it is bounded by
    the number of connections). Each loop iteration writes the first `slice_size` of them and
    lets the loop read its sockets before the next slice: a message that arrives meanwhile
    (the next pub/sub message from Redis, the next request of a publisher) joins the frames
    of every connection still waiting, and leaves in the same write. So the busier the
    server, the more frames each write carries (a write is a syscall, and on loopback the
    kernel's whole TCP path too), while a lone message is written at once: nothing waits on
    a timer, and a message that arrives mid-way through a large fan-out reaches the
    connections still waiting sooner than a round of its own would.
    """

    slice_size = 4
    """Connections written per loop iteration. Small, so the loop reads its sockets often
    during a large fan-out; an iteration costs a few microseconds, a write about ten. Larger
    slices cut a lone broadcast's CPU (by 5% at 64, for 19,000 connections) but let a stream
    of messages catch fewer connections still waiting: W1 on the ASGI path and W3 then cost
    25-56% more CPU per delivery (docs/benchmarks.md, *The cross-server path*, has
    the trials)."""

    def __init__(self, waits: WaitHistogram | None = None) -> None:
        # Batches of connections in the order they were scheduled, each with when its first
        # frame was queued: the wait of every write in it is measured from then. The first
        # batch is written from `_next` on (a cursor: no copy of what is left per slice).
        self._batches: deque[tuple[float, list[Connection]]] = deque()
        self._next = 0
        self._open: list[Connection] | None = None  # the batch this loop iteration adds to
        self._running = False
        self.waits = waits if waits is not None else WaitHistogram()

    @property
    def clock(self) -> float:
        """When the oldest frame still waiting for a slice was queued (0.0: none waits)."""
        return self._batches[0][0] if self._batches else 0.0

    def schedule(self, connection: Connection) -> None:
        batch = self._open
        if batch is None:
            batch = self._open = []
            self._batches.append((clock(), batch))
            if not self._running:
                self._running = True
                asyncio.get_running_loop().call_soon(self._run)
        batch.append(connection)

    def _run(self) -> None:
        self._open = None  # what is scheduled from now on waits for a later slice
        batches = self._batches
        left = self.slice_size
        now = clock()
        index = self._next
        while batches and left > 0:
            queued, batch = batches[0]
            written = 0  # writes of frames queued since `queued`: one wait for all of them
            while index < len(batch) and left > 0:  # (a flush may schedule into it: see `schedule`)
                connection = batch[index]
                index += 1
                left -= 1
                try:
                    written += connection.flush(now, queued)
                except Exception:
                    logger.exception("flush to %s failed", connection.channel_name)
                    connection.close(CloseCode.INTERNAL_ERROR, flush=False)
            if written:
                self.waits.observe(now - queued, written)
            if index >= len(batch):
                batches.popleft()
                index = 0
        self._next = index
        if batches:
            asyncio.get_running_loop().call_soon(self._run)
        else:
            self._running = False


class Connection:
    """A live WebSocket connection owned by this server."""

    # Slots: a server holds one of these per client, and a per-instance dict of this many
    # attributes costs more than a kilobyte each (W4 measures RSS per idle connection).
    __slots__ = (
        "_buffer",
        "_buffered_bytes",
        "_close_hook",
        "_close_timeout",
        "_closer",
        "_coalescer",
        "_counters",
        "_direct_send",
        "_fast",
        "_flush_scheduled",
        "_handoff",
        "_inbound",
        "_max_bytes",
        "_max_messages",
        "_on_closed",
        "_original_receive",
        "_peer_gone",
        "_policy",
        "_sample_at",
        "_sample_left",
        "_waiter",
        "_writer",
        "bytes_received",
        "bytes_sent",
        "channel_name",
        "close_code",
        "connected_at",
        "groups",
        "last_ping",
        "last_seen",
        "messages_dropped",
        "messages_received",
        "messages_sent",
        "metadata",
        "replaying",
        "state",
        "user_id",
        "websocket",
    )

    def __init__(
        self,
        websocket: WebSocket,
        channel_name: str,
        user_id: str | None,
        metadata: dict[str, Any] | None,
        *,
        counters: Counters,
        on_closed: Callable[[Connection], Awaitable[None]],
        coalescer: WriteCoalescer | None = None,
        max_messages: int = 1024,
        max_bytes: int = 4 * 1024 * 1024,
        policy: OverflowPolicy = "close",
        close_timeout: float = 5.0,
        inbound: InboundLimit | None = None,
    ) -> None:
        self.websocket = websocket
        self.channel_name = channel_name
        self.user_id = user_id
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.groups: set[str] = set()
        self.state = ConnectionState.OPEN
        self.close_code: int | None = None
        self.connected_at = time.time()
        self.last_seen = time.monotonic()
        self.last_ping = 0.0
        self.messages_sent = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.bytes_received = 0
        self.messages_dropped = 0

        self._counters = counters
        self._on_closed = on_closed
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._inbound = inbound if inbound is not None else NO_INBOUND_LIMIT
        self._policy: OverflowPolicy = policy
        self._close_timeout = close_timeout
        # A list, not a deque: an idle connection's empty list costs 56 bytes, a deque over a
        # kilobyte. The fast path appends and writes it whole; only the ASGI path and the
        # drop_oldest policy take from the front, O(length) within the buffer's bound.
        self._buffer: list[str | bytes] = []
        self._buffered_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._peer_gone = False
        self._fast: Any = None  # a fastpath.FrameWriter when the server offers one
        self._coalescer = coalescer if coalescer is not None else WriteCoalescer(counters.outbound_wait)
        self._flush_scheduled = False
        # ASGI path: the server's own send when frames may be sent eagerly (see `eager`), and
        # a send that had to wait, or its error, handed to the writer task to finish.
        self._direct_send: Send | None = None
        self._handoff: tuple[Unfinished, int] | BaseException | None = None
        self._close_hook: Callable[[int], Awaitable[None]] | None = None
        # History groups this connection is being replayed into: their live frames wait here
        # as (offset, frame) until the replay is sent; after it, the last offset it sent (older
        # live frames are not sent again). So none is missed or seen twice.
        self.replaying: dict[str, list[tuple[int, str | bytes]] | int] | None = None
        # The frame whose wait is being measured: its position from the head (0: none) and
        # when it was queued (see stats.WaitHistogram).
        self._sample_left = 0
        self._sample_at = 0.0

    def __repr__(self) -> str:
        return f"<Connection {self.channel_name} user={self.user_id!r} {self.state}>"

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Watch incoming frames (liveness, counters, peer disconnect); on the ASGI path, start
        the writer task. The fast path's coalescer writes, and a writer task exists only while
        the transport is paused or a close flushes (a task per idle connection is a kilobyte)."""
        self._watch_receive()
        writer = (self.websocket.scope.get("extensions") or {}).get(FAST_PATH_EXTENSION)
        if writer is not None and writer.usable:
            self._fast = writer
        else:
            self._direct_send = server_send(self.websocket)
            self._start_writer(self._write_loop())

    def _start_writer(self, body: Coroutine[Any, Any, None]) -> None:
        self._writer = asyncio.get_running_loop().create_task(
            body, name=f"fastapi-channels-writer:{self.channel_name}"
        )
        self._writer.add_done_callback(self._writer_done)

    def _ensure_fast_writer(self) -> None:
        """Fast path: a writer task to wait for the transport and write what is queued."""
        if self._writer is None:
            self._start_writer(self._write_loop_fast())

    def set_close_hook(self, hook: Callable[[int], Awaitable[None]] | None) -> None:
        """Run `hook(code)` first when the connection closes, whoever closes it (the peer, the
        heartbeat, a slow-consumer policy, `disconnect` on any server): while the connection
        is still registered and a member of its groups. Bounded by WS_CLOSE_TIMEOUT."""
        self._close_hook = hook

    def _watch_receive(self) -> None:
        # Wrapping the ASGI receive callable sees every frame however the app reads it
        # (websocket.receive(), receive_text(), iter_json() ...): any frame is liveness, and a
        # disconnect from the peer unregisters the connection even if the app forgets to.
        # A bound method, not a closure: a few hundred bytes less on every connection.
        self._original_receive = self.websocket._receive
        self.websocket._receive = self._receive_watched

    async def _receive_watched(self) -> ASGIMessage:
        while True:
            message = await self._original_receive()
            if message["type"] != "websocket.receive":
                return self._received_other(message)
            self.last_seen = time.monotonic()
            payload = message.get("text")
            if payload is None:
                payload = message.get("bytes") or b""
            self.messages_received += 1
            self.bytes_received += len(payload)
            self._counters.messages_received += 1
            self._counters.bytes_received += len(payload)
            inbound = self._inbound
            if len(payload) <= inbound.limit >> 2:  # within the limit whatever its encoding
                return message
            size = _wire_size(payload)
            if size <= inbound.limit:
                return message
            # Over WS_MAX_MESSAGE_SIZE, let through by a server whose own limit is higher: the
            # app never reads it, the client is told, and the next message is read.
            inbound.refuse(self, size)

    def _received_other(self, message: ASGIMessage) -> ASGIMessage:
        kind = message["type"]
        if kind == "websocket.disconnect":
            self._peer_gone = True
            code = message.get("code")
            self.close(code if isinstance(code, int) and code != 1006 else CloseCode.NORMAL_CLOSURE)
            # Raise like Starlette's receive_text() does, so a loop over websocket.receive()
            # (the README's endpoint) ends in its `except WebSocketDisconnect` branch.
            self.websocket.client_state = WebSocketState.DISCONNECTED
            raise WebSocketDisconnect(message.get("code", CloseCode.NORMAL_CLOSURE), message.get("reason"))
        return message

    def close(
        self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "", *, flush: bool = True
    ) -> asyncio.Task[None]:
        """Start closing (idempotent): flush or drop the buffer, send the close frame, unregister.

        Returns the task doing it; `await connection.wait_closed()` to wait for the end.
        """
        if self._closer is None:
            if self.state is ConnectionState.OPEN:
                self.state = ConnectionState.CLOSING
            self.close_code = int(code)
            self._closer = asyncio.get_running_loop().create_task(
                self._finish(int(code), reason, flush), name=f"fastapi-channels-close:{self.channel_name}"
            )
            self._wake_writer()
        return self._closer

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait for the close to end (TimeoutError after `timeout`). A close that `stop_tasks`
        had to end by cancelling it does not cancel its waiters in turn."""
        closer = self._closer if self._closer is not None else self.close()
        done, _ = await asyncio.wait((closer,), timeout=timeout)
        if not done:
            raise TimeoutError

    @property
    def is_open(self) -> bool:
        return self.state is ConnectionState.OPEN

    def hand_keepalive_to_heartbeat(self) -> None:
        """Fast path: make the heartbeat sweep this connection's only keepalive (see
        `FrameWriter.hand_keepalive_to_heartbeat`). The ASGI path cannot reach uvicorn's."""
        if self._fast is not None:
            self._fast.hand_keepalive_to_heartbeat()

    def take_heartbeat_replies(self) -> None:
        """Fast path: count `{"type":"pong"}` frames as liveness where they arrive, without
        waking the app's receive (see `FrameWriter.take_heartbeat_replies`): for a receive
        loop that would only drop them (`serve_consumer`)."""
        if self._fast is not None:
            self._fast.take_heartbeat_replies(self._heartbeat_reply)

    def _heartbeat_reply(self, size: int) -> None:
        # What _receive_watched records of a frame: the reply is liveness and a message.
        self.last_seen = time.monotonic()
        self.messages_received += 1
        self.bytes_received += size
        self._counters.messages_received += 1
        self._counters.bytes_received += size

    @property
    def sends_eagerly(self) -> bool:
        """ASGI path: True when frames are sent by the coalescer itself while the transport
        takes them (the server's own send, no middleware between: see `fastapi_channels.eager`)."""
        return self._direct_send is not None

    @property
    def uses_fast_path(self) -> bool:
        """True when frames go straight to the transport (see `fastapi_channels.fastpath`)."""
        return self._fast is not None

    # --- sending -------------------------------------------------------------------------------
    def enqueue(self, frame: str | bytes, wire: bytes | None = None) -> bool:
        """Queue one pre-encoded frame without blocking; False when it was not queued.

        `wire` is the frame already framed for the fast path (built once per message by the
        caller); on that path the bytes are written by the coalescer at the end of the loop
        iteration, with no task switch.
        """
        if self.state is not ConnectionState.OPEN:
            # Addressed to it while it closes (its on_disconnect may still run, a member of its
            # groups): never sent, so counted as dropped like any frame a close cuts.
            self._count_dropped(1)
            return False
        fast = self._fast
        if fast is not None:
            frame = encode_frame(frame) if wire is None else wire
            size = payload_size(len(frame))  # counted and bounded as the ASGI path does
        else:
            size = len(frame)
        buffer = self._buffer
        if (
            len(buffer) >= self._max_messages or self._buffered_bytes + size > self._max_bytes
        ) and not self._make_room(size):
            return False
        buffer.append(frame)
        self._buffered_bytes += size
        if fast is None and not self._sample_left:
            self._sample_left = len(buffer)
            self._sample_at = clock()
        # Written (fast path) or handed to the writer task (ASGI) by the coalescer, joined
        # with whatever else arrives before its turn: one write or one task switch per
        # connection per burst, not per message.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._coalescer.schedule(self)
        return True

    @property
    def max_messages(self) -> int:
        return self._max_messages

    @property
    def close_timeout(self) -> float:
        return self._close_timeout

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    async def wait_for_room(self, messages: int, size: int, timeout: float) -> bool:
        """Wait until fewer than `messages` frames and at most `size` bytes are queued (an
        empty buffer always has room): True, or False when the connection closed or
        `timeout` passed first with the client not reading."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (
            self.state is ConnectionState.OPEN
            and self._buffer
            and (len(self._buffer) >= messages or self._buffered_bytes > size)
        ):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return self.state is ConnectionState.OPEN

    @property
    def buffered_messages(self) -> int:
        return len(self._buffer)

    @property
    def buffered_bytes(self) -> int:
        return self._buffered_bytes

    def _make_room(self, size: int) -> bool:
        """Apply the overflow policy for a frame of `size`; True when it may now be queued."""
        if not self._buffer:
            # One frame larger than the byte bound is not slowness: an empty buffer always
            # takes it (its size is bounded by what the server accepts or sends).
            return True
        counters = self._counters
        if self._policy == "close":
            dropped = len(self._buffer) + 1
            self._drop_buffer()
            self._count_dropped(dropped)
            counters.slow_consumer_closes += 1
            logger.warning(
                "closing slow consumer %s (user %s): outbound buffer full", self.channel_name, self.user_id
            )
            self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer", flush=False)
            return False
        if self._policy == "drop_newest" or size > self._max_bytes:
            self._count_dropped(1)
            return False
        buffer = self._buffer
        dropped = 0
        fast = self._fast is not None
        while buffer and (len(buffer) >= self._max_messages or self._buffered_bytes + size > self._max_bytes):
            oldest = len(buffer.pop(0))
            self._buffered_bytes -= payload_size(oldest) if fast else oldest
            dropped += 1
        self._count_dropped(dropped)
        if self._fast is None:
            # The measured frame may have been among them: then nothing is being measured.
            # (On the fast path the oldest frame's time stays: an upper bound for the next.)
            self._sample_left = max(0, self._sample_left - dropped)
        return True

    def _count_sent(self, count: int, size: int) -> None:
        self.messages_sent += count
        self.bytes_sent += size
        counters = self._counters
        counters.messages_sent += count
        counters.bytes_sent += size
        counters.socket_writes += 1

    def count_dropped(self, count: int) -> None:
        """Frames meant for this connection that were never queued (e.g. live frames past a
        history replay's hold): counted as dropped, as the overflow policy's are."""
        self._count_dropped(count)

    def _count_dropped(self, count: int) -> None:
        self.messages_dropped += count
        self._counters.messages_dropped += count

    def _drop_buffer(self) -> None:
        self._buffer.clear()
        self._buffered_bytes = 0
        self._sample_left = 0

    def _wake_writer(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _take_frame(self) -> str | bytes:
        """ASGI path: the oldest queued frame, off the buffer (its wait observed if sampled)."""
        frame = self._buffer.pop(0)
        self._buffered_bytes -= len(frame)
        left = self._sample_left
        if left:
            self._sample_left = left - 1
            if left == 1:
                self._counters.outbound_wait.observe(clock() - self._sample_at)
        return frame

    def _send_eagerly(self, send: Send) -> None:
        """ASGI path, the writer parked: send the queued frames here, each to its end. The
        first send that has to wait (or fails) goes to the writer task, with the rest after it."""
        buffer = self._buffer
        while buffer:
            frame = self._take_frame()
            try:
                rest = run_eagerly(send(_asgi_message(frame)))  # type: ignore[arg-type]
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:  # the socket refused it: the writer ends on it
                self._count_dropped(1)
                self._handoff = error
            else:
                if rest is None:
                    self._count_sent(1, len(frame))
                    continue
                self._handoff = (rest, len(frame))
            self._wake_writer()
            return

    async def _write_loop(self) -> None:
        buffer = self._buffer
        send = self._direct_send or self.websocket.send
        loop = asyncio.get_running_loop()
        while True:
            handoff = self._handoff
            if handoff is not None:
                self._handoff = None
                if isinstance(handoff, BaseException):
                    raise handoff
                unfinished, size = handoff
                try:
                    await unfinished.finish()
                except BaseException:
                    self._count_dropped(1)  # see below
                    raise
                self._count_sent(1, size)
            elif buffer:
                frame = self._take_frame()
                try:
                    await send(_asgi_message(frame))
                except BaseException:
                    # Failed, or cut by a close while it waited: it may or may not have
                    # reached the socket, so it counts as lost, never as sent.
                    self._count_dropped(1)
                    raise
                self._count_sent(1, len(frame))
            elif self.state is ConnectionState.OPEN:
                waiter = self._waiter = loop.create_future()
                await waiter
            else:
                return

    def flush(self, now: float | None = None, queued: float | None = None) -> bool:
        """Write everything queued in one transport write, if the transport takes it (on the
        ASGI path: one `send` each, stepped here while the writer task is parked and the
        server's own send is known, else by the writer task).

        True when it wrote frames queued since the coalescer scheduled this flush (at
        `queued`): the coalescer measures their wait, once for every such write. A write of
        frames that waited longer (the transport was paused) is measured here, at `now` (or
        the clock).
        """
        self._flush_scheduled = False
        buffer = self._buffer
        if not buffer:
            return False
        fast = self._fast
        if fast is None:  # the ASGI path: sent here, or by the writer task (one `send` each)
            send = self._direct_send
            if send is not None and self._waiter is not None and self.state is ConnectionState.OPEN:
                self._send_eagerly(send)  # the writer is parked: no send of it is under way
            else:
                self._wake_writer()
            return False
        if not fast.writable:
            if not self._sample_left:
                self._sample_left = 1  # its oldest frame was queued when this flush was scheduled
                self._sample_at = self._coalescer.clock if queued is None else queued
            self._ensure_fast_writer()  # it waits for the transport to drain, or finds it gone
            return False
        count = len(buffer)
        data = buffer[0] if count == 1 else b"".join(buffer)  # type: ignore[arg-type]
        size = self._buffered_bytes  # the payloads' sizes, as on the ASGI path (not the headers)
        buffer.clear()
        self._buffered_bytes = 0
        fast.write(data)
        self._count_sent(count, size)
        if self._sample_left:
            self._sample_left = 0
            self._counters.outbound_wait.observe((clock() if now is None else now) - self._sample_at)
            return False
        return True

    async def _write_loop_fast(self) -> None:
        """Fast path, while the transport is paused or a close flushes: until the buffer is
        written (the task then ends; the next pause starts another)."""
        fast = self._fast
        while self._buffer:
            if fast.writable:
                if self.flush():  # ahead of the coalescer (e.g. before a close): measured here
                    self._counters.outbound_wait.observe(clock() - self._coalescer.clock)
            elif fast.gone:
                raise ConnectionResetError("the connection is closed")
            else:
                await fast.wait_writable()

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        if self._writer is task and self._fast is not None:
            self._writer = None  # the fast path starts one when it needs one
        # ASGI path: no parked writer any more, so no eager send; a send handed over that it
        # never took up is dropped with it (its frame was taken: the connection is ending).
        self._waiter = None
        handoff, self._handoff = self._handoff, None
        if isinstance(handoff, tuple):
            handoff[0].abandon()
            self._count_dropped(1)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        # The socket refused a write: the peer is gone or the server is closing it.
        self._counters.send_failures += 1
        self._peer_gone = True
        logger.debug("send to %s failed: %r", self.channel_name, error)
        self.close(CloseCode.INTERNAL_ERROR, flush=False)

    async def _finish(self, code: int, reason: str, flush: bool) -> None:
        """Close hook, unregister, flush, close frame: each stage bounded by WS_CLOSE_TIMEOUT.

        Cancelled once (`stop_tasks` gave up waiting for it), it cuts short the stage it is in
        and skips the waits left (the hook, the flush) but still unregisters and sends the
        close frame: a connection is never left registered, open and half closed, and whoever
        waits for the close is not cancelled in turn. Cancelled twice, it ends where it is
        (`stop_tasks` then drops what is left of it)."""
        try:
            await self._finish_stages(code, reason, flush)
        except asyncio.CancelledError:
            if self._fast is not None and not self._peer_gone:
                self._fast.abort()  # no more waiting for this client: drop the transport
            raise
        finally:
            self.state = ConnectionState.CLOSED

    async def _finish_stages(self, code: int, reason: str, flush: bool) -> None:
        taken_back = False

        def cut_short() -> bool:
            """Take back the first cancellation of this close and return False, for `flush`:
            what is left does not wait for the client any more. A later one ends the close."""
            nonlocal taken_back
            task = asyncio.current_task()
            if taken_back or task is None:
                raise asyncio.CancelledError
            taken_back = True
            task.uncancel()
            return False

        hook = self._close_hook
        if hook is not None:
            self._close_hook = None
            try:
                await asyncio.wait_for(hook(code), self._close_timeout)
            except asyncio.CancelledError:
                flush = cut_short()
            except Exception:
                logger.exception("close hook of %s failed", self.channel_name)
        # Unregister next: the user's slot and the group memberships are released at once,
        # whatever the socket does next (a client that never reads can stall the rest).
        try:
            await self._on_closed(self)
        except asyncio.CancelledError:
            flush = cut_short()  # the registry let go before its first await; the backend may not
        except Exception:
            logger.exception("cleanup of %s failed", self.channel_name)
        writer = self._writer
        if self._fast is not None and self._buffer and flush and not self._peer_gone:
            self._ensure_fast_writer()
            writer = self._writer
        if writer is not None and not writer.done():
            if flush and not self._peer_gone:
                self._wake_writer()
                try:
                    await asyncio.wait_for(asyncio.shield(writer), self._close_timeout)
                except TimeoutError:
                    pass
                except asyncio.CancelledError:
                    flush = cut_short()
            if not writer.done():
                writer.cancel()
                try:
                    await asyncio.wait([writer])
                except asyncio.CancelledError:
                    flush = cut_short()
        if self._buffer:
            self._count_dropped(len(self._buffer))
            self._drop_buffer()
        if not self._peer_gone:
            try:
                sent = await self._send_close(code, reason)
            except asyncio.CancelledError:
                sent = cut_short()
            if not sent and self._fast is not None:
                # The client does not take even the close frame: where we own the transport, drop it.
                self._fast.abort()

    async def _send_close(self, code: int, reason: str) -> bool:
        if not sendable_close_code(code):
            # 1005, 1006, 1015 and the unassigned codes cannot be put in a close frame: a close
            # asked for with one ends normally instead of with no close frame at all.
            code, reason = CloseCode.NORMAL_CLOSURE, ""
        try:
            await asyncio.wait_for(self.websocket.close(code, close_reason(reason)), self._close_timeout)
        except Exception as exc:
            # The peer is gone or not reading: nothing more can be said to it over ASGI.
            logger.debug("close frame to %s not sent: %r", self.channel_name, exc)
            return False
        return True


def close_reason(reason: str) -> str:
    """`reason` cut to what a close frame carries: 123 bytes of UTF-8, whole characters only
    (cut by characters, 120 of `é` are 240 bytes and the frame cannot be sent at all)."""
    return reason.encode("utf-8", "replace")[:123].decode("utf-8", "ignore")  # a lone surrogate: '?'


def sendable_close_code(code: int) -> bool:
    """Whether a close frame may carry `code` (RFC 6455 7.4: not 1004-1006 or 1015, nothing
    below 1000, 1016-2999 unassigned, 3000-4999 for libraries and apps)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class InboundLimit:
    """WS_MAX_MESSAGE_SIZE where every client message passes (`Connection._receive_watched`),
    and what to do with one over it: one object per manager, shared by its connections."""

    __slots__ = ("limit", "refuse")

    def __init__(self, limit: int, refuse: Callable[[Connection, int], object]) -> None:
        self.limit = limit
        self.refuse = refuse


NO_INBOUND_LIMIT = InboundLimit(2**62, lambda _connection, _size: None)
"""For connections made without a manager's limit (tests of the connection alone)."""


def _wire_size(payload: str | bytes) -> int:
    """A message's size on the wire, as WS_MAX_MESSAGE_SIZE counts it: UTF-8 bytes for text."""
    if isinstance(payload, str) and not payload.isascii():
        return len(payload.encode("utf-8", "surrogatepass"))
    return len(payload)
