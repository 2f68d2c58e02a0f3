"""The load generator: one process, its own core; connects clients, publishes, measures.

Prints one JSON object: deliveries, lost, elapsed, deliveries/s, latency percentiles (ms,
from the send timestamp each message carries) and this process's CPU time, so a run shows
whether the generator itself was the bottleneck. Server CPU seconds over the publish phase
are read from /proc for the pids given.

`--protocol plain` (the default) speaks the benchmark protocol of systems.py: `join` ->
`joined`, `P<payload>` -> `<payload>`. `--protocol socketio` speaks the same through the
Engine.IO 4 / Socket.IO 5 text framing over a plain WebSocket (no socket.io client library,
so the generator stays as cheap): open packet `0{...}`, `40` -> `40{"sid":...}`, then events
`42["join"]` -> `42["joined"]`, `42["publish","<payload>"]` -> `42["message","<payload>"]`
to every member, and every server ping `2` answered with `3`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time

from websockets.asyncio.client import ClientConnection, connect

STAMP = 20  # the payload starts with the send time, "%020.6f" of time.monotonic()


def process_cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


SIO_MESSAGE = '42["message","'  # a member's delivery: SIO_MESSAGE + payload + '"]'


async def sio_recv_event(ws: ClientConnection) -> str:
    """The next Socket.IO event packet (`42...`), answering Engine.IO pings on the way."""
    while True:
        text = await ws.recv()
        assert isinstance(text, str), text
        if text.startswith("42"):
            return text
        if text == "2":
            await ws.send("3")


async def sio_handshake(ws: ClientConnection) -> None:
    opening = await asyncio.wait_for(ws.recv(), 30)
    assert isinstance(opening, str) and opening.startswith("0{"), opening
    await ws.send("40")  # connect to the default namespace
    while True:
        reply = await asyncio.wait_for(ws.recv(), 30)
        if reply == "2":
            await ws.send("3")
            continue
        assert isinstance(reply, str) and reply.startswith("40"), reply
        return


async def open_member(url: str, protocol: str = "plain") -> ClientConnection:
    ws = await connect(url, compression=None, max_size=None, max_queue=None, open_timeout=30)
    if protocol == "socketio":
        await sio_handshake(ws)
        await ws.send('42["join"]')
        reply = await asyncio.wait_for(sio_recv_event(ws), 30)
        assert reply == '42["joined"]', reply
        return ws
    await ws.send("join")
    reply = await asyncio.wait_for(ws.recv(), 30)
    assert reply == "joined", reply
    return ws


async def open_publisher(url: str, protocol: str) -> tuple[ClientConnection, asyncio.Task[None] | None]:
    ws = await connect(url, compression=None, open_timeout=30)
    if protocol != "socketio":
        return ws, None
    await sio_handshake(ws)

    async def answer_pings() -> None:  # the publisher is in no room: pings are all it gets
        while True:
            await sio_recv_event(ws)

    return ws, asyncio.create_task(answer_pings())


async def run(args: argparse.Namespace) -> dict[str, object]:
    urls: list[str] = args.url
    members: list[ClientConnection] = []
    for start in range(0, args.clients, 100):  # connect in batches: the server is not a SYN-flood test
        batch = [urls[i % len(urls)] for i in range(start, min(start + 100, args.clients))]
        members.extend(await asyncio.gather(*(open_member(url, args.protocol) for url in batch)))
    publisher, pinger = await open_publisher(args.publish_url or urls[0], args.protocol)

    latencies: list[float] = []
    received = 0
    last_receipt = time.monotonic()
    expected = args.clients * args.messages

    async def read(ws: ClientConnection) -> None:
        nonlocal received, last_receipt
        for _ in range(args.messages):
            text = await ws.recv()
            now = time.monotonic()
            latencies.append(now - float(text[:STAMP]))
            received += 1
            last_receipt = now

    async def read_socketio(ws: ClientConnection) -> None:
        nonlocal received, last_receipt
        start = len(SIO_MESSAGE)
        for _ in range(args.messages):
            while True:
                text = await ws.recv()
                if text.startswith(SIO_MESSAGE):  # type: ignore[union-attr]
                    break
                if text == "2":
                    await ws.send("3")
            now = time.monotonic()
            latencies.append(now - float(text[start : start + STAMP]))
            received += 1
            last_receipt = now

    reader = read_socketio if args.protocol == "socketio" else read
    readers = [asyncio.create_task(reader(ws)) for ws in members]
    pad = "x" * max(0, args.size - STAMP)
    # Socket.IO: the payload is a JSON string; digits and "x" need no escaping.
    frame = '42["publish","{}"]' if args.protocol == "socketio" else "P{}"
    server_cpu_before = {pid: process_cpu(pid) for pid in args.pid}
    cpu_before, started = own_cpu(), time.monotonic()
    for index in range(args.messages):
        await publisher.send(frame.format(f"{time.monotonic():020.6f}{pad}"))
        if index % 10 == 9:
            await asyncio.sleep(0)
    # Done when everything arrived, or nothing arrived for `idle` seconds (the rest is lost).
    while received < expected and time.monotonic() - last_receipt < args.idle:
        await asyncio.sleep(0.05)
    elapsed = max(last_receipt - started, 1e-9)
    cpu_used = own_cpu() - cpu_before
    server_cpu = sum(process_cpu(pid) - before for pid, before in server_cpu_before.items())
    tasks = readers + ([pinger] if pinger else [])
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(publisher.close(), *(ws.close() for ws in members), return_exceptions=True)
    latencies.sort()

    def pct(q: float) -> float:
        return (
            round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) if latencies else 0.0
        )

    return {
        "deliveries": received,
        "lost": expected - received,
        "elapsed_s": round(elapsed, 4),
        "deliveries_per_s": round(received / elapsed),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "loadgen_cpu_share": round(cpu_used / elapsed, 3),
        "server_cpu_s_per_100k": round(server_cpu / max(received, 1) * 100_000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--url", action="append", required=True, help="member URL(s); clients are split evenly"
    )
    parser.add_argument("--publish-url")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--pid", type=int, action="append", default=[])
    parser.add_argument(
        "--protocol",
        choices=("plain", "socketio"),
        default="plain",
        help="plain: the protocol of systems.py; socketio: the same in Engine.IO 4 / Socket.IO 5 framing",
    )
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
