"""A uvicorn WebSocket protocol that lets the library write pre-built frames to the transport.

Through ASGI every recipient of a group message costs a full `send()`: an event dict, the
protocol's state checks, framing and a UTF-8 encode. Server frames are unmasked, so the
library builds a message's frame once (`framing.encode_frame`) and, with this protocol,
writes those bytes straight to each recipient's transport. Select it with

    uvicorn app:app --ws fastapi_channels.fastpath:FastWebSocketProtocol

(or `fastapi-channels run app:app`, which passes the class object, as uvicorn.run(app,
ws=FastWebSocketProtocol) does). It subclasses uvicorn's sans-I/O protocol: uvicorn
>= 0.52.4, < 1.0 (CI runs the fast-path tests on the lowest and the newest), and it
offers a `FrameWriter` in the ASGI scope's extensions under
`fastapi_channels.frames`. A connection that negotiated an extension changing frames
(permessage-deflate) is not offered one; everything else about the protocol is unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from fastapi_channels.framing import FAST_PATH_EXTENSION

__all__ = ["HEARTBEAT_REPLIES", "FastWebSocketProtocol", "FrameWriter"]


class FrameWriter:
    """What the library may do with one connection's transport."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: FastWebSocketProtocol) -> None:
        self._protocol = protocol

    @property
    def usable(self) -> bool:
        """False when negotiated extensions change frames: use the ASGI path then."""
        return not self._protocol.conn.extensions

    @property
    def writable(self) -> bool:
        """Open, not closing, and the transport is not asking us to pause."""
        protocol = self._protocol
        return (
            protocol.writable.is_set()
            and protocol.handshake_complete
            and not protocol.close_sent
            and not protocol.disconnected
            and not protocol.transport.is_closing()
        )

    @property
    def gone(self) -> bool:
        protocol = self._protocol
        return protocol.disconnected or protocol.close_sent or protocol.transport.is_closing()

    def write(self, frame: bytes) -> None:
        self._protocol.transport.write(frame)

    async def wait_writable(self) -> None:
        """Until the transport drains below its low-water mark (or the connection is lost)."""
        await self._protocol.writable.wait()

    def abort(self) -> None:
        """Drop the TCP connection now: for a client that stopped reading past the close deadline."""
        self._protocol.transport.abort()

    def hand_keepalive_to_heartbeat(self) -> None:
        """Stop uvicorn's keepalive pings on this connection: the library's heartbeat watches it.

        uvicorn keeps a ping and a pong timer per connection and pings every --ws-ping-interval
        seconds however busy the client is; with the heartbeat on, one sweep already pings the
        idle clients and closes the silent ones, so the timers add a second ping stream, and
        at 19,000 idle connections most of the server's idle CPU (docs/benchmarks.md).
        """
        protocol = self._protocol
        protocol.ping_interval = None  # a start_keepalive still to come schedules nothing
        protocol.stop_keepalive()

    def take_heartbeat_replies(self, seen: Callable[[int], None]) -> None:
        """Have `{"type":"pong"}` frames end here: `seen(size)` is called and the app's receive
        never wakes. For a receive loop that does nothing with them but note the liveness
        (`serve_consumer` with BaseConsumer's own handle_message): at 19,000 idle clients a
        pong a client every heartbeat interval is most of a server's idle work, and through
        ASGI each one costs a queued event, a task wake-up, a pause and a resume of reading and
        a JSON parse. Only the exact forms JSON encoders write are taken (`HEARTBEAT_REPLIES`);
        anything else still goes to the app."""
        self._protocol.heartbeat_reply_seen = seen


class InboundQueue:
    """The part of asyncio.Queue uvicorn's protocol uses for a connection's incoming events.

    An asyncio.Queue holds three deques and an Event (a fourth) from birth, about 2 KiB on
    every idle connection. uvicorn pauses reading until the app takes each message, so this
    queue holds one or two events: a list, and a waiter future only while the app waits.
    """

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiters = self._waiters
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                break

    async def get(self) -> Any:
        items = self._items
        while not items:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif items:  # it was woken for an item it will not take: pass the turn on
                    self.put_nowait(items.pop(0))
                raise
        return items.pop(0)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class WritableFlag:
    """The part of asyncio.Event uvicorn's protocol uses for "the transport takes writes".

    An asyncio.Event holds a deque of waiters from birth (760 bytes on every connection);
    a writer waits only while a client is not reading, so the waiters list is made then.
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


HEARTBEAT_REPLIES: frozenset[bytes] = frozenset({b'{"type":"pong"}', b'{"type": "pong"}'})
"""The heartbeat replies `FrameWriter.take_heartbeat_replies` takes: JSON.stringify, orjson
and Python's json module write one of these for `{"type": "pong"}`."""


class FastWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol plus a `FrameWriter` in the scope's extensions,
    and less memory per idle connection (`InboundQueue`, `WritableFlag`, `start_keepalive`)."""

    heartbeat_reply_seen: Callable[[int], None] | None = None  # see take_heartbeat_replies

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = InboundQueue()  # type: ignore[assignment]
        self.writable = WritableFlag()  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        """uvicorn starts the keepalive once the accept response is written; from then on
        the handshake's request and response (their headers, parsed twice) are never read
        again, yet uvicorn keeps them for the life of the connection. The scope keeps the
        request headers the app sees."""
        super().start_keepalive()
        self.request = self.response = None  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The ASGI task exists but has not run yet: the writer is in place before the app starts.
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][FAST_PATH_EXTENSION] = FrameWriter(self)
            # The scope holds the headers now (as the app sees them), and the response is
            # built. websockets' parser keeps the request for the connection's life (a local
            # of its generator): empty its headers, a kilobyte and a half on every connection.
            event.headers.clear()

    def send_receive_event_to_app(self) -> None:
        """Close a text message that is not UTF-8 with 1007 after one INFO line, not a traceback.

        uvicorn's own method logs each one with a traceback at ERROR, so any client could write
        a traceback into the server log per connection it opens.
        """
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            seen = self.heartbeat_reply_seen
            if seen is not None and data in HEARTBEAT_REPLIES:
                self.frames = []
                seen(len(data))  # nothing queued: reading goes on, the app is not woken
                return
            if not data.isascii():  # ASCII is UTF-8: the usual message is not decoded twice
                try:
                    data.decode()
                except UnicodeDecodeError as exc:
                    self.frames = []
                    client = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
                    self.logger.info(
                        "%sWebSocket closed with 1007: text message is not UTF-8 (%s)", client, exc.reason
                    )
                    self.conn.send_close(1007)
                    self.handle_parser_exception()
                    return
        super().send_receive_event_to_app()

    def shutdown(self) -> None:
        """Server shutdown: close open sockets with 1001 (going away) rather than uvicorn's 1012.

        uvicorn closes connections before the lifespan's shutdown runs, so `stop_tasks`
        comes too late to choose the code; this protocol chooses it.
        """
        if self.handshake_complete and not self.close_sent and not self.transport.is_closing():
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
            self.conn.send_close(1001, "server shutting down")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
        else:
            super().shutdown()
        # uvicorn waits, with no deadline, for every connection to close; a client that stopped
        # reading never lets close() flush. Drop its connection after a grace period.
        self.loop.call_later(self.shutdown_abort_after, self._abort_if_still_open)

    shutdown_abort_after = 2.0
    """Seconds a connection may take to flush and close on server shutdown before it is aborted."""

    def _abort_if_still_open(self) -> None:
        if not self.disconnected:
            self.transport.abort()
