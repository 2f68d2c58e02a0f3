"""The load generator: one process, its own core; connects clients, publishes, measures.

Prints one JSON object: deliveries, lost, elapsed, deliveries/s, latency percentiles (ms,
from the send timestamp each message carries) and this process's CPU time, so a run shows
whether the generator itself was the bottleneck. Server CPU seconds over the publish phase
are read from /proc for the pids given.
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


async def open_member(url: str) -> ClientConnection:
    ws = await connect(url, compression=None, max_size=None, max_queue=None, open_timeout=30)
    await ws.send("join")
    reply = await asyncio.wait_for(ws.recv(), 30)
    assert reply == "joined", reply
    return ws


async def run(args: argparse.Namespace) -> dict[str, object]:
    urls: list[str] = args.url
    members: list[ClientConnection] = []
    for start in range(0, args.clients, 100):  # connect in batches: the server is not a SYN-flood test
        batch = [urls[i % len(urls)] for i in range(start, min(start + 100, args.clients))]
        members.extend(await asyncio.gather(*(open_member(url) for url in batch)))
    publisher = await connect(args.publish_url or urls[0], compression=None, open_timeout=30)

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

    readers = [asyncio.create_task(read(ws)) for ws in members]
    pad = "x" * max(0, args.size - STAMP)
    server_cpu_before = {pid: process_cpu(pid) for pid in args.pid}
    cpu_before, started = own_cpu(), time.monotonic()
    for index in range(args.messages):
        await publisher.send(f"P{time.monotonic():020.6f}{pad}")
        if index % 10 == 9:
            await asyncio.sleep(0)
    # Done when everything arrived, or nothing arrived for `idle` seconds (the rest is lost).
    while received < expected and time.monotonic() - last_receipt < args.idle:
        await asyncio.sleep(0.05)
    elapsed = max(last_receipt - started, 1e-9)
    cpu_used = own_cpu() - cpu_before
    server_cpu = sum(process_cpu(pid) - before for pid, before in server_cpu_before.items())
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
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
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
