"""One load generator process of the capacity workload: holds its share of idle connections.

loadgen.py measures bursts; here a process holds up to ~9,500 idle sockets (the machine
caps every process at 20,000 open files), answers the server's heartbeats and counts each
broadcast's deliveries. benchmarks/capacity.py drives several of these in lock step over
stdin/stdout, one JSON line per reply:

    (on start)     -> {"event": "started"}
    connect        -> connect and join members --first .. --first+--count-1, then
                      {"event": "ready", "connections", "memberships", "failed", "error",
                      "connect_started", "connect_done"} (CLOCK_MONOTONIC: one clock for
                      every process; a member the server refused or dropped while joining
                      is counted in "failed", the first error kept, and left out)
    broadcast <k>  -> the sender (--sender: this process's first member) sends broadcast k;
                      every process waits until each of its members got it, or nothing
                      arrived for --idle s: {"event": "broadcast", "index", "received",
                      "expected", "sent_at" (the sender's, else null), "last_receipt",
                      "unexpected", "cpu_s" (this process's CPU over the command)}
    stop           -> drop every connection (no closing handshakes to wait for) and exit

Member i joins group `g<i % --groups>`; the first --big-percent of every hundred members
also join the group `big`. A broadcast's payload is its index in six digits, padded with
`x` to --size characters. `--protocol socketio` speaks Engine.IO 4 / Socket.IO 5 text
packets (loadgen.py's dialect); Engine.IO pings `2` are answered `3` and fastapi-channels'
heartbeat pings (`{"type":"ping",...}`) with `{"type":"pong"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from benchmarks.loadgen import SIO_MESSAGE, Dialect, own_cpu
from benchmarks.wire import ProtocolViolation, WireClient, connect

BIG = "big"
INDEX = 6  # digits of the broadcast index at the start of its payload
HEARTBEAT_PING = b'{"type":"ping"'  # fastapi-channels' heartbeat ping, as orjson encodes it
HEARTBEAT_PONG = '{"type":"pong"}'
FILES_SPARE = 50  # descriptors a process needs besides its sockets (stdio, epoll, imports)


def groups_of(member: int, groups: int, big_percent: int) -> list[str]:
    """The groups member `member` joins: one of `groups`, round-robin, and `big` for a few."""
    return [f"g{member % groups}", *([BIG] if member % 100 < big_percent else [])]


def raise_file_limit() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it); return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return sys.maxsize if hard == resource.RLIM_INFINITY else hard


class Tally:
    """Deliveries per broadcast index and the last one's time: a few numbers per broadcast."""

    def __init__(self, broadcasts: int) -> None:
        self.counts = [0] * broadcasts
        self.lasts = [0.0] * broadcasts
        self.unexpected = 0  # frames that are neither a heartbeat nor a broadcast of this run


class Member:
    """One connection's callback: answers heartbeats, counts broadcast deliveries by index."""

    __slots__ = ("client", "socketio", "tally")

    def __init__(self, client: WireClient, tally: Tally, socketio: bool) -> None:
        self.client = client
        self.tally = tally
        self.socketio = socketio

    def __call__(self, payload: bytes) -> None:
        if self.socketio:
            if payload == b"2":
                self.client.send_text("3")
                return
            start = len(SIO_MESSAGE) if payload.startswith(SIO_MESSAGE) else -1
        elif payload.startswith(HEARTBEAT_PING):
            self.client.send_text(HEARTBEAT_PONG)
            return
        else:
            start = 0
        digits = payload[start : start + INDEX] if start >= 0 else b""
        tally = self.tally
        if not digits.isdigit() or int(digits) >= len(tally.counts):
            tally.unexpected += 1
            return
        index = int(digits)
        tally.counts[index] += 1
        tally.lasts[index] = time.monotonic()


def is_ping(dialect: Dialect, payload: bytes) -> bool:
    return payload == b"2" if dialect.socketio else payload.startswith(HEARTBEAT_PING)


async def setup_reply(dialect: Dialect, client: WireClient) -> bytes:
    """The next reply during setup, answering any heartbeat that arrives before it."""
    while True:
        reply = await client.expect()
        if not is_ping(dialect, reply):
            return reply
        client.send_text("3" if dialect.socketio else HEARTBEAT_PONG)


async def open_member(dialect: Dialect, url: str, groups: list[str]) -> WireClient:
    """Connect and join each group in turn (one `joined` per join); drop the socket on a failure."""
    client = await connect(url)
    try:
        if dialect.socketio:
            opening = await client.expect()
            assert opening.startswith(b"0{"), opening
            client.send_text("40")
            reply = await setup_reply(dialect, client)
            assert reply.startswith(b"40"), reply
        for group in groups:
            client.send_text(dialect.join(group))
            reply = await setup_reply(dialect, client)
            assert dialect.joined(reply), reply
    except BaseException:
        if client.transport is not None:
            client.transport.abort()
        raise
    return client


@dataclass
class Opened:
    """The outcome of the connect phase: a server may refuse or drop some members under load."""

    clients: list[WireClient] = field(default_factory=list)
    memberships: int = 0
    failed: int = 0
    first_error: str | None = None


async def connect_all(args: argparse.Namespace, dialect: Dialect, tally: Tally) -> Opened:
    """Open this process's members with --concurrency handshakes in flight.

    Each member answers heartbeats from the moment it joined: a connect phase of thousands
    of members outlasts a short heartbeat timeout.
    """
    indexes: Iterator[int] = iter(range(args.first, args.first + args.count))
    opened = Opened()

    async def worker() -> None:
        for member in indexes:  # one shared iterator: each index is taken by one worker
            groups = groups_of(member, args.groups, args.big_percent)
            try:
                client = await open_member(dialect, args.url, groups)
            except (OSError, ProtocolViolation) as error:  # refused, timed out or closed by the server
                opened.failed += 1
                opened.first_error = opened.first_error or repr(error)
                continue
            client.on_message = Member(client, tally, dialect.socketio)
            opened.clients.append(client)
            opened.memberships += len(groups)

    await asyncio.gather(*(worker() for _ in range(min(args.concurrency, args.count))))
    return opened


async def wait_for(counts: list[int], index: int, expected: int, idle: float) -> None:
    """Until `expected` deliveries of broadcast `index` arrived, or none for `idle` seconds."""
    seen, progress_at = counts[index], time.monotonic()
    while counts[index] < expected:
        await asyncio.sleep(0.005)
        if counts[index] != seen:
            seen, progress_at = counts[index], time.monotonic()
        elif time.monotonic() - progress_at > idle:
            return


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def run(args: argparse.Namespace) -> None:
    dialect = Dialect(args.protocol)
    tally = Tally(args.broadcasts)
    pad = "x" * max(0, args.size - INDEX)
    members: list[WireClient] = []
    loop = asyncio.get_running_loop()
    read_line: Callable[[], str] = sys.stdin.readline
    emit(event="started")
    while line := (await loop.run_in_executor(None, read_line)).strip():
        command, _, argument = line.partition(" ")
        if command == "connect":
            started = time.monotonic()
            opened = await connect_all(args, dialect, tally)
            done = time.monotonic()
            members = opened.clients  # the broadcast sender is the first that joined
            emit(
                event="ready",
                connections=len(members),
                memberships=opened.memberships,
                failed=opened.failed,
                error=opened.first_error,
                connect_started=started,
                connect_done=done,
            )
        elif command == "broadcast":
            index = int(argument)
            cpu_before = own_cpu()
            sent_at = None
            if args.sender and members:
                payload = f"{index:0{INDEX}d}{pad}"
                sent_at = time.monotonic()
                members[0].send_text(f'42["broadcast","{payload}"]' if dialect.socketio else f"B{payload}")
            await wait_for(tally.counts, index, len(members), args.idle)
            emit(
                event="broadcast",
                index=index,
                received=tally.counts[index],
                expected=len(members),
                sent_at=sent_at,
                last_receipt=tally.lasts[index] or None,
                unexpected=tally.unexpected,
                cpu_s=round(own_cpu() - cpu_before, 4),
            )
        elif command == "stop":
            break
        else:
            raise SystemExit(f"unknown command {line!r}")
    for client in members:
        if client.transport is not None:
            client.transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="ws://host:port/path of the server")
    parser.add_argument("--protocol", choices=("plain", "socketio"), default="plain")
    parser.add_argument("--first", type=int, default=0, help="global index of this process's first member")
    parser.add_argument("--count", type=int, required=True, help="members this process holds")
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--big-percent", type=int, default=3, help="members per hundred also in `big`")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--broadcasts", type=int, default=10)
    parser.add_argument("--sender", action="store_true", help="this process's first member broadcasts")
    parser.add_argument("--size", type=int, default=100, help="broadcast payload characters")
    parser.add_argument("--idle", type=float, default=10.0, help="give up on a broadcast after this silence")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    limit = raise_file_limit()
    if args.count + FILES_SPARE > limit:
        raise SystemExit(
            f"{args.count} sockets need more than the {limit} open files allowed: more processes"
        )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
