"""The load generator: one of N processes, each with its share of the clients.

Driven by run.py over stdin/stdout so several generator processes act as one:

1. connect and join this process's share of the members, print `{"event": "ready", ...}`;
2. wait for the line `go` on stdin (run.py reads the servers' CPU and Redis's counters);
3. publish (`fanout`: generator 0 sends every message to the group; `rooms`: every member
   sends to its room of two; `idle`: nothing), count deliveries until all arrived or none
   arrived for `--idle` seconds, print `{"event": "done", ...}` with the counts, this
   process's CPU seconds over the phase and its monotonic timestamps (CLOCK_MONOTONIC is
   one clock for every process on the machine, so run.py can merge them).

Latencies come from the send time (`time.monotonic()`, 20 characters) each message
carries; they are written to `--latency-file` as raw doubles for run.py to merge.

`--protocol plain` speaks the protocol of systems.py: `join` / `join <room>` -> `joined`,
`P<payload>` -> `<payload>` to the group, `R<room> <payload>` -> `<payload>` to the room.
`--protocol json` is `plain` with deliveries as JSON objects: the payload is the value of
`"p"` (what `channels_json` and `channels_history` send, the latter with `offset` and
`epoch` in front). `--protocol socketio` speaks the same through Engine.IO 4 / Socket.IO 5 text packets over
the same raw client: open packet `0{...}`, `40` -> `40{"sid":...}`, `42["join"(,room)]`
-> `42["joined"]`, `42["publish",payload(,room)]` -> `42["message",payload]`, and every
Engine.IO ping `2` answered with `3`.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.wire import WireClient, connect

STAMP = 20  # a payload starts with its send time, "%020.6f" of time.monotonic()
SIO_MESSAGE = b'42["message","'  # a Socket.IO delivery: this + payload + '"]'
JSON_PAYLOAD = b'"p":"'  # a JSON delivery: {... "p":"<payload>"}
BATCH = 100  # clients connecting at once: the server is not under a SYN flood test


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Tally:
    """What this process received during the measurement."""

    expected: int
    received: int = 0
    last_receipt: float = 0.0
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))


class Dialect:
    """How one protocol says join, publish and deliver."""

    def __init__(self, protocol: str) -> None:
        self.socketio = protocol == "socketio"
        self.json = protocol == "json"

    def join(self, room: str | None) -> str:
        if self.socketio:
            return "42" + json.dumps(["join", room] if room else ["join"], separators=(",", ":"))
        return f"join {room}" if room else "join"

    def publish(self, payload: str, room: str | None) -> str:
        if self.socketio:  # digits and "x" need no JSON escaping
            return f'42["publish","{payload}","{room}"]' if room else f'42["publish","{payload}"]'
        return f"R{room} {payload}" if room else f"P{payload}"

    def joined(self, reply: bytes) -> bool:
        return reply == (b'42["joined"]' if self.socketio else b"joined")

    def counter(self, client: WireClient, tally: Tally) -> Callable[[bytes], None]:
        """The measurement-phase callback for one client: count and time each delivery."""
        append = tally.latencies.append
        clock = time.monotonic

        if self.socketio:
            start = len(SIO_MESSAGE)

            def on_socketio(payload: bytes) -> None:
                if payload.startswith(SIO_MESSAGE):
                    now = clock()
                    append(now - float(payload[start : start + STAMP]))
                    tally.received += 1
                    tally.last_receipt = now
                elif payload == b"2":
                    client.send_text("3")

            return on_socketio

        if self.json:

            def on_json(payload: bytes) -> None:
                now = clock()
                start = payload.index(JSON_PAYLOAD) + len(JSON_PAYLOAD)
                append(now - float(payload[start : start + STAMP]))
                tally.received += 1
                tally.last_receipt = now

            return on_json

        def on_plain(payload: bytes) -> None:
            now = clock()
            append(now - float(payload[:STAMP]))
            tally.received += 1
            tally.last_receipt = now

        return on_plain

    async def open(self, url: str, room: str | None, join: bool = True) -> WireClient:
        client = await connect(url)
        if self.socketio:
            opening = await client.expect()
            assert opening.startswith(b"0{"), opening
            client.send_text("40")
            while (reply := await client.expect()) == b"2":
                client.send_text("3")
            assert reply.startswith(b"40"), reply
        if join:
            client.send_text(self.join(room))
            while (reply := await client.expect()) == b"2":
                client.send_text("3")
            assert self.joined(reply), reply
        return client


def room_of(index: int) -> str:
    return f"r{index // 2}"


async def run(args: argparse.Namespace) -> None:
    dialect = Dialect(args.protocol)
    urls: list[str] = args.url
    mine = range(args.index, args.clients, args.of)  # global member indexes of this process
    connect_started = time.monotonic()
    members: list[WireClient] = []
    indexes = list(mine)
    for start in range(0, len(indexes), BATCH):
        batch = indexes[start : start + BATCH]
        members.extend(
            await asyncio.gather(
                *(
                    dialect.open(urls[i % len(urls)], room_of(i) if args.mode == "rooms" else None)
                    for i in batch
                )
            )
        )
    connect_s = time.monotonic() - connect_started
    publisher = None
    if args.mode == "fanout" and args.index == 0:
        publisher = await dialect.open(args.publish_url or urls[0], None, join=False)
    if args.mode == "rooms":
        expected = len(members) * args.messages * 2  # each room of two gets both members' messages
    elif args.mode == "fanout":
        expected = len(members) * args.messages
    else:
        expected = 0
    tally = Tally(expected)
    for client in members:
        client.on_message = dialect.counter(client, tally)
    if publisher is not None:
        publisher.on_message = dialect.counter(publisher, Tally(0))  # answers pings; gets nothing else
    emit(event="ready", clients=len(members), connect_s=round(connect_s, 4))

    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    cpu_before, started = own_cpu(), time.monotonic()
    pad = "x" * max(0, args.size - STAMP)
    if publisher is not None:
        for index in range(args.messages):
            publisher.send_text(dialect.publish(f"{time.monotonic():020.6f}{pad}", None))
            if index % 10 == 9:
                await asyncio.sleep(0)
    elif args.mode == "rooms":
        rooms = [room_of(i) for i in indexes]
        for _ in range(args.messages):
            for client, room in zip(members, rooms, strict=True):
                client.send_text(dialect.publish(f"{time.monotonic():020.6f}{pad}", room))
            await asyncio.sleep(0)
    tally.last_receipt = time.monotonic()
    # Done when everything arrived, or nothing arrived for `idle` seconds (the rest is lost).
    while tally.received < expected and time.monotonic() - tally.last_receipt < args.idle:
        await asyncio.sleep(0.02)
    cpu_used = own_cpu() - cpu_before
    if args.latency_file:
        with open(args.latency_file, "wb") as out:
            tally.latencies.tofile(out)
    emit(
        event="done",
        received=tally.received,
        expected=expected,
        started=started if (publisher is not None or args.mode == "rooms") else None,
        last_receipt=tally.last_receipt,
        cpu_s=round(cpu_used, 4),
    )
    await asyncio.gather(*(client.close() for client in (*members, *([publisher] if publisher else []))))


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", action="append", required=True, help="member URL(s); members alternate")
    parser.add_argument("--publish-url")
    parser.add_argument("--mode", choices=("fanout", "rooms", "idle"), default="fanout")
    parser.add_argument("--clients", type=int, default=1000, help="members over all generator processes")
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--index", type=int, default=0, help="this generator's index")
    parser.add_argument("--of", type=int, default=1, help="how many generator processes share the clients")
    parser.add_argument("--protocol", choices=("plain", "json", "socketio"), default="plain")
    parser.add_argument("--latency-file")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # W4 holds thousands of sockets
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
