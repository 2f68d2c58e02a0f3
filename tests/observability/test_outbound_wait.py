"""The histogram of the time a frame waits in a connection's outbound buffer.

A pure histogram, and a Connection over a fake socket with the clock replaced, so each
test says exactly how long a frame waited (no sleeping, no wall clock).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.websockets import WebSocket

from fastapi_channels import connection as connection_module
from fastapi_channels.connection import Connection, WriteCoalescer
from fastapi_channels.framing import FAST_PATH_EXTENSION
from fastapi_channels.stats import WAIT_BUCKETS, Counters, WaitHistogram


def test_the_histogram_counts_each_wait_in_the_first_bucket_that_holds_it() -> None:
    histogram = WaitHistogram()
    histogram.observe(0.0)
    histogram.observe(WAIT_BUCKETS[0])  # a bound belongs to its own bucket (le)
    histogram.observe(0.3)
    histogram.observe(10_000.0, frames=3)  # past the last bound: +Inf
    assert histogram.count == 6
    assert histogram.sum == pytest.approx(WAIT_BUCKETS[0] + 0.3 + 30_000.0)
    cumulative = dict(histogram.cumulative())
    assert cumulative[WAIT_BUCKETS[0]] == 2
    assert cumulative[0.5] == 3
    assert cumulative[float("inf")] == 6
    assert list(cumulative.values()) == sorted(cumulative.values())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(connection_module, "clock", fake)
    yield fake


class FakeSocket:
    """The ASGI side of one accepted WebSocket; `send` waits while `gate` is clear."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self._connected = False

    async def receive(self) -> dict[str, Any]:
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        await asyncio.Event().wait()  # the client never speaks
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            await self.gate.wait()
        self.sent.append(message)


class FakeWriter:
    """A fast-path frame writer that records what it wrote; `pause()` is a full socket buffer."""

    usable = True
    gone = False

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def writable(self) -> bool:
        return self._writable.is_set()

    def pause(self) -> None:
        self._writable.clear()

    def resume(self) -> None:
        self._writable.set()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def wait_writable(self) -> None:
        await self._writable.wait()

    def abort(self) -> None:
        self.gone = True


@contextlib.asynccontextmanager
async def _connection(
    counters: Counters, *, fast: FakeWriter | None = None, policy: Any = "close", max_messages: int = 100
) -> AsyncIterator[tuple[Connection, FakeSocket]]:
    socket = FakeSocket()
    scope = {"type": "websocket", "path": "/", "headers": [], "extensions": {}}
    if fast is not None:
        scope["extensions"][FAST_PATH_EXTENSION] = fast
    websocket = WebSocket(scope, socket.receive, socket.send)
    await websocket.accept()

    async def forget(_: Connection) -> None:
        return None

    connection = Connection(
        websocket,
        "srv!c",
        None,
        None,
        counters=counters,
        on_closed=forget,
        coalescer=WriteCoalescer(counters.outbound_wait),
        policy=policy,
        max_messages=max_messages,
    )
    connection.start()
    try:
        yield connection, socket
    finally:
        socket.gate.set()
        connection.close(flush=False)
        await connection.wait_closed(timeout=5)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_frame_that_waits_behind_a_slow_send_is_measured_from_enqueue_to_write(clock: Clock) -> None:
    counters = Counters()
    async with _connection(counters) as (connection, socket):
        socket.gate.clear()  # the client does not read
        connection.enqueue("one")  # sampled: written at once into the blocked send
        await _settle()
        connection.enqueue("two")  # sampled next, waits behind "one"
        connection.enqueue("three")
        clock.now += 0.3
        socket.gate.set()
        await _settle()
        waits = counters.outbound_wait
        assert [m.get("text") for m in socket.sent[1:]] == ["one", "two", "three"]
        # "one" waited 0 s; "two" waited 0.3 s; "three" was not sampled ("two" was in flight).
        assert waits.count == 2
        assert waits.sum == pytest.approx(0.3)
        assert dict(waits.cumulative())[0.25] == 1 and dict(waits.cumulative())[0.5] == 2

        clock.now += 1.0
        connection.enqueue("four")  # the buffer is empty again: sampled
        clock.now += 0.002
        await _settle()
        assert waits.count == 3 and waits.sum == pytest.approx(0.302)


async def test_a_sampled_frame_that_is_dropped_is_not_measured(clock: Clock) -> None:
    counters = Counters()
    async with _connection(counters, policy="drop_oldest", max_messages=2) as (connection, socket):
        socket.gate.clear()
        connection.enqueue("in flight")
        await _settle()
        connection.enqueue("sampled")  # sampled, then pushed out by the two after it
        connection.enqueue("b")
        connection.enqueue("c")
        assert counters.messages_dropped == 1
        clock.now += 5.0
        socket.gate.set()
        await _settle()
        assert [m.get("text") for m in socket.sent[1:]] == ["in flight", "b", "c"]
        # "in flight" waited 0 s; "sampled" left unmeasured with the drop, so the next frame
        # queued ("c") was sampled instead, and it waited 5 s.
        assert counters.outbound_wait.count == 2
        assert counters.outbound_wait.sum == pytest.approx(5.0)


async def test_on_the_fast_path_a_burst_is_measured_once_when_it_is_written(clock: Clock) -> None:
    counters = Counters()
    writer = FakeWriter()
    async with _connection(counters, fast=writer) as (connection, _socket):
        assert connection.uses_fast_path
        connection.enqueue("a")
        connection.enqueue("b")
        clock.now += 0.004  # the rest of this loop iteration
        await _settle()
        assert len(writer.written) == 1  # one write for the burst
        assert counters.outbound_wait.count == 1
        assert counters.outbound_wait.sum == pytest.approx(0.004)
        assert counters.messages_sent == 2


async def test_on_the_fast_path_a_paused_transport_makes_the_wait_count(clock: Clock) -> None:
    counters = Counters()
    writer = FakeWriter()
    async with _connection(counters, fast=writer) as (connection, _socket):
        writer.pause()  # the kernel's socket buffer is full
        connection.enqueue("a")
        clock.now += 0.001
        await _settle()
        connection.enqueue("b")
        await _settle()
        assert writer.written == [] and counters.outbound_wait.count == 0
        clock.now += 2.0
        writer.resume()
        await _settle()
        assert len(writer.written) == 1
        assert counters.outbound_wait.count == 1
        assert counters.outbound_wait.sum == pytest.approx(2.001)  # "a" waited from its queueing

        connection.enqueue("c")  # writable again: measured by the coalescer
        clock.now += 0.0001
        await _settle()
        assert counters.outbound_wait.count == 2
        assert counters.outbound_wait.sum == pytest.approx(2.0011)
