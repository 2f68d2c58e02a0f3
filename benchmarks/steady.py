"""The steady-rate load generator: a publisher process and N member processes.

loadgen.py publishes as fast as it can, so its latencies are queueing under saturation.
Here the publisher sends on a schedule instead: message k of a step is due at
`t0 + k / rate` and carries that due time, not the time it actually left, so a publisher
that falls behind (a stalled loop, a busy core) adds to the measured latency instead of
hiding it (no coordinated omission). The publisher is a process of its own (`--role
publisher`) so that the members' receive work cannot delay its sends, and it wakes
PRECISE s early and sleeps the rest (clock_nanosleep, ~0.1 ms late) instead of relying on
the event loop's timers (epoll's 1 ms granularity: ~0.8 ms late on average). Each member
process (`--role members`) is loadgen.py's receiving side: the same wire client, the same
dialects, latency = receipt time - the stamp (CLOCK_MONOTONIC is one clock for every
process of the machine).

Driven by benchmarks.latency over stdin/stdout, one step (one rate) at a time:

1. connect (members: join this process's share of the group), print `{"event": "ready"}`;
2. for each line `step <id> <messages/s> <messages> <t0> <target s> <latency file>`:
   publish, or count deliveries (each message carries `~s<id>~` after its stamp, so the
   backlog of a stopped step, still arriving, is not counted in the next); every PROGRESS
   s print `{"event": "progress", "late": n}`, the deliveries already certain to miss the
   target (late ones received, plus those overdue by more than the target and not
   received), so that the driver can stop a step whose p99 is decided; the line `stop
   <id>` ends the step at once. Otherwise the publisher is done after its last send, a
   member process when every delivery arrived or none arrived for `--idle` s after the
   last was due. Members write the step's latencies (s) to the file as raw doubles; each
   prints `{"event": "done", ...}`;
3. `quit` (or the end of stdin): close every connection and exit.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.loadgen import BATCH, STAMP, Dialect, Tally, emit, own_cpu
from benchmarks.wire import WireClient

PROGRESS = 0.25  # seconds between progress lines during a step
MARK = b"~s"  # after the stamp, `~s<step id>~` names the step a message belongs to
# asyncio reads a socket into a fresh 256 KiB bytes object; above glibc's mmap threshold that
# is an mmap, a page fault, an mremap and a munmap per read, which doubled the members' CPU
# per delivery (one frame per read at a steady rate). Reads of at most this come off the heap.
READ_SIZE = 64 * 1024
PRECISE = 0.002  # the publisher's loop wakes this early; time.sleep covers the rest to the due time


@dataclass(frozen=True)
class Step:
    """One rate of the ladder: `messages` sends, the k-th due at `t0 + k / rate` (monotonic s)."""

    ident: str
    rate: float  # messages per second
    messages: int
    t0: float
    target: float  # seconds: the latency a delivery must stay under
    latency_file: str

    @classmethod
    def parse(cls, words: list[str]) -> Step:
        ident, rate, messages, t0, target, latency_file = words
        return cls(ident, float(rate), int(messages), float(t0), float(target), latency_file)

    def due(self, index: int) -> float:
        return self.t0 + index / self.rate

    def due_by(self, moment: float) -> int:
        """How many of the step's messages were due at or before `moment`."""
        if moment < self.t0 or self.messages == 0:
            return 0
        return min(self.messages, int((moment - self.t0) * self.rate) + 1)

    @property
    def last_due(self) -> float:
        return self.due(max(self.messages - 1, 0))


def tag(ident: str) -> bytes:
    return MARK + ident.encode() + b"~"


def this_step(step_tag: bytes, inner: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """Pass `inner` this step's deliveries and anything else (pings), not an earlier step's
    stragglers (the backlog of a stopped step, still arriving)."""

    def on_message(payload: bytes) -> None:
        if MARK in payload and step_tag not in payload:
            return
        inner(payload)

    return on_message


def count_late(latencies: array.array[float], start: int, target: float) -> int:
    """Samples from `start` on that reached `target` (scanned in slices between progress lines)."""
    return sum(1 for value in latencies[start:] if value >= target)


class Publisher:
    """Sends a step's messages on schedule, each stamped with its due time."""

    def __init__(self, client: WireClient, dialect: Dialect, size: int) -> None:
        self.client = client
        self.dialect = dialect
        self.size = size
        self.loop = asyncio.get_running_loop()
        # The loop's clock is CLOCK_MONOTONIC in asyncio; the offset keeps call_at right if not.
        self.offset = self.loop.time() - time.monotonic()
        self.current: Step | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.sent = 0
        self.lag_max = 0.0
        self.lag_total = 0.0
        self.finished = asyncio.Event()

    def start(self, step: Step) -> None:
        self.current, self.sent, self.lag_max, self.lag_total = step, 0, 0.0, 0.0
        self.finished = asyncio.Event()
        self._wake(step.t0)

    def _wake(self, due: float) -> None:
        self.handle = self.loop.call_at(due - PRECISE + self.offset, self._tick)

    def _tick(self) -> None:
        """Sleep the last moment to the due time, send every message that is due (several when
        this process was late), then have the loop wake it again before the next."""
        step = self.current
        assert step is not None
        marker = tag(step.ident).decode()
        pad = marker + "x" * max(0, self.size - STAMP - len(marker))
        early = step.due(self.sent) - time.monotonic()
        if early > 0:
            time.sleep(min(early, PRECISE))  # blocking is fine: this process has nothing else to do
        now = time.monotonic()
        while self.sent < step.messages and (due := step.due(self.sent)) <= now:
            self.client.send_text(self.dialect.publish(f"{due:020.6f}{pad}", None))
            self.lag_max = max(self.lag_max, now - due)
            self.lag_total += now - due
            self.sent += 1
        if self.sent < step.messages:
            self._wake(step.due(self.sent))
        else:
            self.handle = None
            self.finished.set()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.finished.set()

    async def close(self) -> None:
        self.stop()
        await self.client.close()

    async def step(self, step: Step, commands: Commands) -> None:
        """One step from the publisher's process: send on schedule until done or stopped."""
        cpu_before = own_cpu()
        self.start(step)
        stopped = False
        while not self.finished.is_set():
            words = await commands.next(PROGRESS)
            if words == [] or (words is not None and words[:2] == ["stop", step.ident]):
                stopped = True
                self.stop()
            elif not self.finished.is_set():
                emit(event="progress", late=0)
        emit(
            event="done",
            received=0,
            expected=0,
            stopped=stopped,
            last_receipt=0.0,
            cpu_s=round(own_cpu() - cpu_before, 4),
            sent=self.sent,
            lag_max_ms=round(self.lag_max * 1000, 3),
            lag_mean_ms=round(self.lag_total / max(self.sent, 1) * 1000, 3),
        )


class Commands:
    """The driver's lines from stdin, read by the event loop (no thread)."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.reader), sys.stdin)

    async def next(self, timeout: float | None = None) -> list[str] | None:
        """The next line's words; [] at the end of stdin; None when `timeout` passed first."""
        try:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
        except TimeoutError:
            return None
        return line.decode().split() if line else []


class Members:
    """This process's share of the group's members, counting each step's deliveries."""

    def __init__(self, args: argparse.Namespace, dialect: Dialect) -> None:
        self.args = args
        self.dialect = dialect
        self.clients: list[WireClient] = []

    async def connect(self) -> None:
        urls: list[str] = self.args.url
        indexes = list(range(self.args.index, self.args.clients, self.args.of))
        for start in range(0, len(indexes), BATCH):
            batch = indexes[start : start + BATCH]
            self.clients.extend(
                await asyncio.gather(*(self.dialect.open(urls[i % len(urls)], None) for i in batch))
            )
        for client in self.clients:
            if client.transport is not None and hasattr(client.transport, "max_size"):
                client.transport.max_size = READ_SIZE  # (asyncio's selector transport reads this)
        self.idle()

    def idle(self) -> None:
        """Between steps: deliveries go to a throwaway tally (pings are still answered)."""
        for client in self.clients:
            client.on_message = self.dialect.counter(client, Tally(0))

    async def step(self, step: Step, commands: Commands) -> None:
        tally = Tally(len(self.clients) * step.messages)
        step_tag = tag(step.ident)
        for client in self.clients:
            client.on_message = this_step(step_tag, self.dialect.counter(client, tally))
        cpu_before = own_cpu()
        scanned = late = 0
        stopped = False
        while True:
            words = await commands.next(PROGRESS)
            if words == [] or (words is not None and words[:2] == ["stop", step.ident]):
                stopped = True  # stopped by the driver, or the driver went away
                break
            now = time.monotonic()
            late += count_late(tally.latencies, scanned, step.target)
            scanned = len(tally.latencies)
            if tally.received >= tally.expected:
                break
            if now > step.last_due and now - max(tally.last_receipt, step.last_due) >= self.args.idle:
                break  # the rest is lost
            overdue = len(self.clients) * step.due_by(now - step.target) - tally.received
            emit(event="progress", late=late + max(0, overdue))
        self.idle()
        cpu_used = own_cpu() - cpu_before
        with open(step.latency_file, "wb") as out:
            tally.latencies.tofile(out)
        emit(
            event="done",
            received=tally.received,
            expected=tally.expected,
            stopped=stopped,
            last_receipt=tally.last_receipt,
            cpu_s=round(cpu_used, 4),
        )

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients))


async def run(args: argparse.Namespace) -> None:
    commands = Commands()
    await commands.open()
    dialect = Dialect(args.protocol)
    role: Members | Publisher
    started = time.monotonic()
    if args.role == "publisher":
        client = await dialect.open(args.publish_url or args.url[0], None, join=False)
        client.on_message = dialect.counter(client, Tally(0))  # answers pings; gets nothing else
        role = Publisher(client, dialect, args.size)
    else:
        role = Members(args, dialect)
        await role.connect()
    emit(event="ready", connect_s=round(time.monotonic() - started, 4))
    while True:
        words = await commands.next()
        if not words or words[0] == "quit":
            break
        if words[0] == "step":
            await role.step(Step.parse(words[1:]), commands)
        elif words[0] != "stop":  # a stop that crossed the step's natural end is stale
            raise SystemExit(f"unknown command: {words}")
    await role.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", choices=("members", "publisher"), default="members")
    parser.add_argument("--url", action="append", required=True, help="member URL(s); members alternate")
    parser.add_argument("--publish-url")
    parser.add_argument("--clients", type=int, default=1000, help="members over all generator processes")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--index", type=int, default=0, help="this member process's index")
    parser.add_argument("--of", type=int, default=1, help="how many member processes share the members")
    parser.add_argument("--protocol", choices=("plain", "json", "socketio"), default="plain")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
