"""The library's own cost per connection of one fan-out, past the open-file limit.

    python -m benchmarks.fanout_cost                                  # 1,000 to 100,000: 15 s
    python -m benchmarks.fanout_cost --sizes 19000,100000,1000000     # 1,000,000: 6 GiB, 4 min
    python -m benchmarks.fanout_cost --path asgi --sizes 1000,19000      # the ASGI path's eager sends

The capacity workload stops at about 19,000 connections per process (this machine's file
limit), and its projection to 100,000 and 1,000,000 assumes that a broadcast's cost per
connection stays flat. This checks the library's part of that where no file limit applies:
real `Connection`s on the fast path, the real write coalescer and `FrameWriter`, over
stand-in transports whose `write` is a C builtin that keeps nothing. So every figure is
Python per connection: the enqueue of the frame, the coalescer's slices (`slice_size`
connections per loop iteration, the iteration itself included) and the flush. The
`send()` syscall (about 7.7 µs per connection on loopback, docs/benchmarks.md, *Capacity*)
comes on top, once per connection at any size.

`--path asgi` measures the ASGI path the same way: connections without the fast-path
extension, whose frames the coalescer sends eagerly through the server's own `send`
(`fastapi_channels.eager`). That `send` is uvicorn's in a server; here it is a stand-in
coroutine that hands the text to the same C builtin, set where the connection keeps the
server's send, so uvicorn's framing is left out with the syscall and what remains is the
library's queue, slices and the stepping of one coroutine per frame.

Each round queues one frame on every connection and runs the loop until the last one is
written; the fastest round of each size is reported (the machine's noise only adds), and
the counters must show every frame written exactly once, or the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket

from fastapi_channels.connection import Connection, WriteCoalescer
from fastapi_channels.fastpath import FrameWriter, WritableFlag
from fastapi_channels.framing import FAST_PATH_EXTENSION, encode_frame
from fastapi_channels.stats import Counters

FRAME = '{"type":"message","data":"' + "x" * 80 + '"}'


class StandInTransport:
    """What FrameWriter calls on an asyncio transport; `write` keeps nothing."""

    __slots__ = ("write",)

    def __init__(self, write: Callable[[bytes], Any]) -> None:
        self.write = write

    def is_closing(self) -> bool:
        return False


class StandInConn:
    """The websockets protocol state FrameWriter looks at: no extension negotiated."""

    __slots__ = ()
    extensions: list[Any] = []


class StandInProtocol:
    """The parts of the fast-path protocol FrameWriter reads: open, writable, handshake done."""

    __slots__ = ("close_sent", "conn", "disconnected", "handshake_complete", "transport", "writable")

    def __init__(self, write: Callable[[bytes], Any]) -> None:
        self.writable = WritableFlag()
        self.handshake_complete = True
        self.close_sent = False
        self.disconnected = False
        self.transport = StandInTransport(write)
        self.conn = StandInConn()


class SilentClient:
    """The ASGI side of an accepted WebSocket whose client never speaks."""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False

    async def receive(self) -> Message:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        await asyncio.Event().wait()
        raise AssertionError("a silent client never sends")

    async def send(self, message: Message) -> None:
        return None


def stand_in_send(write: Callable[[Any], Any]) -> Callable[[Message], Awaitable[None]]:
    """A server `send` that never waits: a coroutine, like uvicorn's, with a C call inside."""

    async def send(message: Message) -> None:
        write(message["text"])

    return send


async def open_connections(
    count: int, coalescer: WriteCoalescer, counters: Counters, path: str, last_write: Callable[[Any], Any]
) -> list[Connection]:
    discard = collections.deque(maxlen=1).append  # C: no Python frame per write

    async def forget(_: Connection) -> None:
        return None

    made = []
    for index in range(count):
        write = last_write if index == count - 1 else discard
        client = SilentClient()
        extensions: dict[str, Any] = {}
        if path == "fast":  # a stand-in for the fast-path protocol FrameWriter wraps
            extensions[FAST_PATH_EXTENSION] = FrameWriter(StandInProtocol(write))  # type: ignore[arg-type]
        scope = {"type": "websocket", "path": "/", "headers": [], "extensions": extensions}
        websocket = WebSocket(scope, client.receive, client.send)
        await websocket.accept()
        connection = Connection(
            websocket, f"bench!c{index}", None, None, counters=counters, on_closed=forget, coalescer=coalescer
        )
        connection.start()
        if path == "asgi":  # what `eager.server_send` finds under a uvicorn server
            connection._direct_send = stand_in_send(write)
        made.append(connection)
    await asyncio.sleep(0)  # the ASGI path's writer tasks park: sends are eager from now on
    if path == "asgi" and not all(connection.sends_eagerly for connection in made):
        raise AssertionError("a connection does not send eagerly")
    return made


async def measure(size: int, rounds: int, path: str = "fast") -> dict[str, Any]:
    """One size: the fastest of `rounds` fan-outs to `size` connections on `path`."""
    loop = asyncio.get_running_loop()
    counters = Counters()
    coalescer = WriteCoalescer(counters.outbound_wait)
    done: list[asyncio.Future[None]] = []

    def last_write(_: Any) -> None:  # the last connection is written last: the FIFO's end
        if done and not done[-1].done():
            done[-1].set_result(None)

    built = time.perf_counter()
    connections = await open_connections(size, coalescer, counters, path, last_write)
    built = time.perf_counter() - built
    await asyncio.sleep(0)
    timings: list[tuple[float, float]] = []
    for _ in range(rounds):
        gc.collect()
        done.append(loop.create_future())
        started = time.perf_counter()
        wire = encode_frame(FRAME) if path == "fast" else None
        for connection in connections:
            connection.enqueue(FRAME, wire)
        queued = time.perf_counter()
        await done[-1]
        timings.append((queued - started, time.perf_counter() - queued))
    if counters.messages_sent != size * rounds or counters.socket_writes != size * rounds:
        raise AssertionError(
            f"{size} connections x {rounds} rounds: {counters.messages_sent} frames in "
            f"{counters.socket_writes} writes"
        )
    for connection in connections:
        connection.close(flush=False)
    enqueue, slices = min(timings, key=sum)
    return {
        "path": path,
        "connections": size,
        "rounds": rounds,
        "slice_size": coalescer.slice_size,
        "loop_iterations": -(-size // coalescer.slice_size),
        "enqueue_us_per_connection": round(enqueue / size * 1e6, 3),
        "slices_us_per_connection": round(slices / size * 1e6, 3),
        "total_us_per_connection": round((enqueue + slices) / size * 1e6, 3),
        "fan_out_ms": round((enqueue + slices) * 1000, 2),
        "setup_s": round(built, 1),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="1000,19000,100000", type=lambda v: [int(s) for s in v.split(",")])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--path", choices=("fast", "asgi"), default="fast")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for size in args.sizes:
        row = asyncio.run(measure(size, args.rounds, args.path))
        rows.append(row)
        print(
            f"{args.path} {row['connections']:>9,} connections: "
            f"enqueue {row['enqueue_us_per_connection']:.2f} µs, "
            f"slices {row['slices_us_per_connection']:.2f} µs, total {row['total_us_per_connection']:.2f} µs "
            f"per connection; one fan-out {row['fan_out_ms']:,} ms "
            f"({row['loop_iterations']:,} loop iterations)",
            file=sys.stderr,
        )
    if args.json:
        given = sys.argv[1:] if argv is None else argv
        args.json.write_text(json.dumps({"rows": rows, "argv": given}, indent=2))
    return rows


if __name__ == "__main__":
    main()
