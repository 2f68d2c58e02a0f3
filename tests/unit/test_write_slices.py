"""The write coalescer: a slice of connections per loop iteration, so a burst shares writes.

Connections over fake sockets and fake fast-path writers; each test steps the event loop
one iteration at a time (`asyncio.sleep(0)`), so what a slice wrote is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket

from fastapi_channels.connection import Connection, WriteCoalescer
from fastapi_channels.framing import FAST_PATH_EXTENSION, encode_frame
from fastapi_channels.stats import Counters


class Writer:
    """A fast-path frame writer that records each transport write."""

    usable = True
    writable = True
    gone = False

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def wait_writable(self) -> None:
        return None

    def abort(self) -> None:
        self.gone = True


class Socket:
    """The ASGI side of an accepted WebSocket whose client never speaks."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._connected = False

    async def receive(self) -> dict[str, Any]:
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        if message["type"] == "websocket.send":
            self.sent.append(message["text"])


@contextlib.asynccontextmanager
async def _connections(
    count: int, coalescer: WriteCoalescer, counters: Counters, *, fast: bool
) -> AsyncIterator[list[tuple[Connection, Writer, Socket]]]:
    made: list[tuple[Connection, Writer, Socket]] = []

    async def forget(_: Connection) -> None:
        return None

    for index in range(count):
        writer, socket = Writer(), Socket()
        extensions = {FAST_PATH_EXTENSION: writer} if fast else {}
        scope = {"type": "websocket", "path": "/", "headers": [], "extensions": extensions}
        websocket = WebSocket(scope, socket.receive, socket.send)
        await websocket.accept()
        connection = Connection(
            websocket, f"srv!c{index}", None, None, counters=counters, on_closed=forget, coalescer=coalescer
        )
        connection.start()
        made.append((connection, writer, socket))
    await asyncio.sleep(0)  # the writer tasks start and wait
    try:
        yield made
    finally:
        for connection, _, _ in made:
            connection.close(flush=False)
        for connection, _, _ in made:
            await connection.wait_closed(timeout=5)


async def _until_idle(coalescer: WriteCoalescer) -> None:
    for _ in range(100):
        if not coalescer.clock:
            return
        await asyncio.sleep(0)
    raise AssertionError("the coalescer never finished")


async def test_one_iteration_writes_one_slice_and_a_message_arriving_meanwhile_joins_the_rest() -> None:
    counters = Counters()
    coalescer = WriteCoalescer(counters.outbound_wait)
    coalescer.slice_size = 4
    async with _connections(10, coalescer, counters, fast=True) as made:
        for connection, _, _ in made:
            connection.enqueue("a")
        await asyncio.sleep(0)  # one loop iteration: one slice
        assert [len(writer.writes) for _, writer, _ in made] == [1] * 4 + [0] * 6

        for connection, _, _ in made:  # the next message, while six still wait
            connection.enqueue("b")
        await _until_idle(coalescer)

        a, b = encode_frame("a"), encode_frame("b")
        for _, writer, _ in made[:4]:
            assert writer.writes == [a, b]
        for _, writer, _ in made[4:]:
            assert writer.writes == [a + b]  # both frames in one write
        assert counters.messages_sent == 20
        assert counters.socket_writes == 14
        assert counters.outbound_wait.count == 14  # one wait per write: its oldest frame's


async def test_a_lone_message_is_written_in_the_next_iteration_without_a_timer() -> None:
    counters = Counters()
    coalescer = WriteCoalescer(counters.outbound_wait)
    async with _connections(1, coalescer, counters, fast=True) as made:
        ((connection, writer, _),) = made
        connection.enqueue("hello")
        assert writer.writes == []
        await asyncio.sleep(0)
        assert writer.writes == [encode_frame("hello")]
        assert not coalescer.clock


async def test_a_connection_waits_in_the_queue_at_most_once_however_many_frames_it_gets() -> None:
    counters = Counters()
    coalescer = WriteCoalescer(counters.outbound_wait)
    coalescer.slice_size = 1
    async with _connections(3, coalescer, counters, fast=True) as made:
        for _ in range(50):
            for connection, _, _ in made:
                connection.enqueue("x")
        # Three entries, not 150: three iterations write everything.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert [len(writer.writes) for _, writer, _ in made] == [1, 1, 1]
        assert all(writer.writes[0] == encode_frame("x") * 50 for _, writer, _ in made)
        assert not coalescer.clock


async def test_asgi_connections_are_woken_a_slice_at_a_time_and_send_everything_queued() -> None:
    counters = Counters()
    coalescer = WriteCoalescer(counters.outbound_wait)
    coalescer.slice_size = 2
    async with _connections(4, coalescer, counters, fast=False) as made:
        for connection, _, _ in made:
            connection.enqueue("a")
        await asyncio.sleep(0)  # the first slice wakes two writer tasks
        await asyncio.sleep(0)  # they run and send
        assert [socket.sent for _, _, socket in made][:2] == [["a"], ["a"]]
        for connection, _, _ in made:
            connection.enqueue("b")
        await _until_idle(coalescer)
        for _ in range(5):
            await asyncio.sleep(0)
        assert [socket.sent for _, _, socket in made] == [["a", "b"]] * 4
        assert counters.messages_sent == 8
        assert counters.socket_writes == 8  # the ASGI path sends each frame on its own


async def test_a_connection_scheduled_while_a_slice_writes_is_written_too() -> None:
    """A flush may queue frames for other connections (here, a write that triggers sends):
    they join a batch behind the one being written, and the slices reach every one of them."""
    counters = Counters()
    coalescer = WriteCoalescer(counters.outbound_wait)
    coalescer.slice_size = 3
    async with _connections(12, coalescer, counters, fast=True) as made:
        first_writer = made[0][1]
        recorded = first_writer.write

        def write_and_fan_out(data: bytes) -> None:
            recorded(data)
            for connection, _, _ in made[4:]:
                connection.enqueue("echo")

        first_writer.write = write_and_fan_out  # type: ignore[method-assign]
        for connection, _, _ in made[:4]:
            connection.enqueue("a")
        await _until_idle(coalescer)
        assert [len(writer.writes) for _, writer, _ in made] == [1] * 12
        assert [writer.writes[0] for _, writer, _ in made] == [encode_frame("a")] * 4 + [
            encode_frame("echo")
        ] * 8
        assert counters.socket_writes == 12


async def test_a_fan_out_larger_than_a_slice_writes_each_connection_once_in_order() -> None:
    counters = Counters()
    coalescer = WriteCoalescer(counters.outbound_wait)
    coalescer.slice_size = 4
    order: list[int] = []
    async with _connections(30, coalescer, counters, fast=True) as made:
        for index, (_, writer, _) in enumerate(made):
            recorded = writer.write

            def note(data: bytes, index: int = index, recorded: Any = recorded) -> None:
                order.append(index)
                recorded(data)

            writer.write = note  # type: ignore[method-assign]
        for connection, _, _ in made:
            connection.enqueue("a")
        for step in range(1, 9):
            await asyncio.sleep(0)
            assert order == list(range(min(4 * step, 30)))  # a slice of 4 per iteration, FIFO
        assert not coalescer.clock
