"""Eager ASGI sends: a send that does not wait runs to its end in the caller; one that waits
is finished by a task, in order; only the server's own send (under Starlette's pass-through
wrappers) is run this way, never an app's middleware."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

from fastapi_channels import connection as connection_module
from fastapi_channels.connection import Connection, WriteCoalescer
from fastapi_channels.eager import run_eagerly, server_send
from fastapi_channels.stats import Counters

SCOPE: dict[str, Any] = {"type": "websocket", "path": "/", "headers": [], "extensions": {}}


async def _receive() -> Message:
    return {"type": "websocket.connect"}


# --- run_eagerly -------------------------------------------------------------------------------
async def test_a_send_that_does_not_wait_finishes_in_the_caller() -> None:
    done: list[str] = []
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready.set_result(None)

    async def send() -> None:
        await ready  # an await that does not suspend, like uvicorn's on a writable transport
        done.append("sent")

    assert run_eagerly(send()) is None
    assert done == ["sent"]


async def test_a_send_that_waits_is_finished_by_a_task() -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def send() -> None:
        steps.append("framed")
        steps.append(await gate)
        await asyncio.sleep(0)  # a bare yield too
        steps.append("written")

    rest = run_eagerly(send())
    assert rest is not None and steps == ["framed"]
    finishing = asyncio.ensure_future(rest.finish())
    await asyncio.sleep(0)
    assert steps == ["framed"]
    gate.set_result("drained")
    await asyncio.wait_for(finishing, 1)
    assert steps == ["framed", "drained", "written"]


async def test_an_error_is_raised_where_the_send_is_when_it_happens() -> None:
    async def refused() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        run_eagerly(refused())

    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def refused_later() -> None:
        await gate  # the future's error is the send's to see

    rest = run_eagerly(refused_later())
    assert rest is not None
    gate.set_exception(BrokenPipeError("gone while paused"))
    with pytest.raises(BrokenPipeError):
        await asyncio.wait_for(rest.finish(), 1)


async def test_cancelling_the_task_that_finishes_a_send_closes_it() -> None:
    cleaned: list[str] = []

    async def send() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # a transport that never drains
        finally:
            cleaned.append("finally")

    rest = run_eagerly(send())
    assert rest is not None
    task = asyncio.ensure_future(rest.finish())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]


async def test_an_abandoned_send_is_closed_where_it_waits() -> None:
    cleaned: list[str] = []

    async def send() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            cleaned.append("finally")

    rest = run_eagerly(send())
    assert rest is not None
    rest.abandon()
    assert cleaned == ["finally"]


# --- server_send ---------------------------------------------------------------------------------
def _uvicorn_protocol() -> Any:
    return WebSocketsSansIOProtocol.__new__(WebSocketsSansIOProtocol)  # its `send` is all we need


async def _through_starlette(send: Send, layers: int) -> Send:
    """`send` as an endpoint sees it under `layers` of Starlette's exception handling."""
    seen: list[Send] = []

    async def endpoint(scope: Scope, receive: Receive, inner: Send) -> None:
        seen.append(inner)

    app: ASGIApp = endpoint
    for _ in range(layers):
        app = wrap_app_handling_exceptions(app, WebSocket(dict(SCOPE), _receive, send))
    await app(dict(SCOPE), _receive, send)
    return seen[0]


def test_the_servers_own_send_is_recognised() -> None:
    protocol = _uvicorn_protocol()
    assert server_send(WebSocket(dict(SCOPE), _receive, protocol.send)) == protocol.send


async def test_starlettes_exception_wrappers_are_seen_through() -> None:
    protocol = _uvicorn_protocol()
    wrapped = await _through_starlette(protocol.send, layers=2)
    assert wrapped != protocol.send
    assert server_send(WebSocket(dict(SCOPE), _receive, wrapped)) == protocol.send


async def test_an_apps_middleware_between_keeps_sends_in_the_writer_task() -> None:
    protocol = _uvicorn_protocol()

    async def traced(message: Message) -> None:  # an app's ASGI middleware wrapping send
        await protocol.send(message)

    assert server_send(WebSocket(dict(SCOPE), _receive, traced)) is None
    wrapped = await _through_starlette(traced, layers=1)
    assert server_send(WebSocket(dict(SCOPE), _receive, wrapped)) is None


def test_wsprotos_send_is_recognised_and_a_subclass_inherits_it() -> None:
    class Inheriting(WebSocketsSansIOProtocol):  # as the library's fast-path protocol does
        pass

    inheriting = Inheriting.__new__(Inheriting)
    assert server_send(WebSocket(dict(SCOPE), _receive, inheriting.send)) == inheriting.send
    wsproto = WSProtocol.__new__(WSProtocol)
    assert server_send(WebSocket(dict(SCOPE), _receive, wsproto.send)) == wsproto.send


def test_a_subclass_that_overrides_send_keeps_the_writer_task() -> None:
    class Deadlined(WebSocketsSansIOProtocol):
        async def send(self, message: Any) -> None:
            async with asyncio.timeout(5):  # needs a current task
                await super().send(message)

    deadlined = Deadlined.__new__(Deadlined)
    assert server_send(WebSocket(dict(SCOPE), _receive, deadlined.send)) is None


def test_another_servers_send_is_not_run_eagerly() -> None:
    class OtherServer:
        async def send(self, message: Message) -> None:
            return None

    assert server_send(WebSocket(dict(SCOPE), _receive, OtherServer().send)) is None


# --- the connection's hand-off ---------------------------------------------------------------------
class PausableSocket:
    """An ASGI send that writes at once unless paused, when it waits for `resume()`."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.tasks: list[asyncio.Task[Any] | None] = []  # the task each send ran in (None: eager)
        self.drained = asyncio.Event()
        self.drained.set()
        self.refuse = False
        self.waiting = 0  # sends suspended on the paused transport right now

    async def send(self, message: Message) -> None:
        if message["type"] != "websocket.send":
            return
        self.waiting += 1
        try:
            await self.drained.wait()
        finally:
            self.waiting -= 1
        if self.refuse:
            raise ConnectionResetError("the peer is gone")
        self.tasks.append(asyncio.current_task())
        self.sent.append(message["text"])


async def _connection(
    socket: PausableSocket, monkeypatch: pytest.MonkeyPatch, counters: Counters, *, eager: bool = True
) -> Connection:
    # Not eager: as under an app's middleware, every frame goes through the writer task.
    monkeypatch.setattr(connection_module, "server_send", lambda websocket: socket.send if eager else None)

    async def forget(_: Connection) -> None:
        return None

    websocket = WebSocket(dict(SCOPE), _receive, socket.send)
    await websocket.accept()
    connection = Connection(
        websocket, "srv!c", None, None, counters=counters, on_closed=forget, coalescer=WriteCoalescer()
    )
    connection.start()
    await asyncio.sleep(0)  # the writer task parks
    return connection


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_frames_are_sent_outside_any_task_while_the_transport_takes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counters = Counters()
    socket = PausableSocket()
    connection = await _connection(socket, monkeypatch, counters)
    assert connection.sends_eagerly
    for text in ("a", "b", "c"):
        connection.enqueue(text)
    await _settle()
    assert socket.sent == ["a", "b", "c"]
    assert socket.tasks == [None, None, None]  # stepped by the coalescer, no writer wake-up
    assert (counters.messages_sent, counters.socket_writes, connection.buffered_messages) == (3, 3, 0)
    await connection.wait_closed(timeout=5)


async def test_a_send_that_waits_goes_to_the_writer_and_the_order_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counters = Counters()
    socket = PausableSocket()
    connection = await _connection(socket, monkeypatch, counters)
    socket.drained.clear()  # the transport pauses: the client stopped reading
    connection.enqueue("1")
    await _settle()
    for text in ("2", "3"):
        connection.enqueue(text)  # queued behind the send under way
    await _settle()
    assert socket.sent == [] and connection.buffered_messages == 2
    socket.drained.set()
    await _settle()
    assert socket.sent == ["1", "2", "3"]
    assert all(task is not None for task in socket.tasks)  # the writer task finished them
    assert counters.messages_sent == 3

    connection.enqueue("4")  # the writer parked again: back to eager sends
    await _settle()
    assert socket.sent[-1] == "4" and socket.tasks[-1] is None
    await connection.wait_closed(timeout=5)


async def test_a_refused_eager_send_closes_the_connection_as_a_refused_write_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counters = Counters()
    socket = PausableSocket()
    connection = await _connection(socket, monkeypatch, counters)
    socket.refuse = True
    connection.enqueue("x")
    connection.enqueue("y")
    await asyncio.wait_for(connection.wait_closed(), 5)
    assert counters.send_failures == 1
    assert not connection.is_open
    # The refused frame and the one behind it: each counted, as dropped, never as sent.
    assert (counters.messages_sent, counters.messages_dropped, connection.messages_dropped) == (0, 2, 2)


async def test_closing_while_a_send_waits_ends_it_without_leaving_a_coroutine_behind(
    monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    counters = Counters()
    socket = PausableSocket()
    connection = await _connection(socket, monkeypatch, counters)
    socket.drained.clear()  # a client that stopped reading
    connection.enqueue("stuck")
    connection.enqueue("behind it")
    await _settle()
    connection.close(flush=False)
    await asyncio.wait_for(connection.wait_closed(), 5)
    assert not connection.is_open and socket.sent == []
    assert connection.buffered_messages == 0
    # The send under way may or may not have reached the socket: lost, as far as anyone
    # can tell, so it is counted as dropped with the frame behind it, not forgotten.
    assert (counters.messages_sent, counters.messages_dropped) == (0, 2)
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


async def test_a_send_handed_to_a_writer_that_ends_before_taking_it_up_is_closed(
    monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    counters = Counters()
    socket = PausableSocket()
    connection = await _connection(socket, monkeypatch, counters)
    socket.drained.clear()
    connection.enqueue("stuck")
    await asyncio.sleep(0)  # the coalescer ran: the send waits, handed to the writer, not yet run
    assert socket.waiting == 1
    writer = connection._writer  # the writer task, ended here before its turn comes
    assert writer is not None
    writer.cancel()
    await asyncio.wait([writer])
    assert socket.waiting == 0  # closed where it waited, not left for the garbage collector
    connection.close(flush=False)
    await asyncio.wait_for(connection.wait_closed(), 5)
    assert (counters.messages_sent, counters.messages_dropped) == (0, 1)
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("eager", [True, False])
async def test_every_frame_is_counted_sent_or_dropped_when_a_close_cuts_a_waiting_send(
    monkeypatch: pytest.MonkeyPatch, eager: bool
) -> None:
    """With or without eager sends: a close that does not flush ends the send under way."""
    counters = Counters()
    socket = PausableSocket()
    connection = await _connection(socket, monkeypatch, counters, eager=eager)
    assert connection.sends_eagerly is eager
    connection.enqueue("sent")
    await _settle()
    socket.drained.clear()
    for text in ("waits", "queued 1", "queued 2"):
        connection.enqueue(text)
    await _settle()
    assert socket.waiting == 1
    connection.close(flush=False)
    await asyncio.wait_for(connection.wait_closed(), 5)
    assert socket.sent == ["sent"]
    assert (counters.messages_sent, counters.messages_dropped) == (1, 3)
    assert (connection.messages_sent, connection.messages_dropped) == (1, 3)
