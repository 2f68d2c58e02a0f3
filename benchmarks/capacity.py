"""W4 capacity: how many idle connections one server process holds, and what they cost it.

For each size (--capacity-sizes) and each system, two server runs, pinned to core 0 like
every server of run.py, with generator processes (benchmarks.capacity_loadgen, at most
--capacity-per-loadgen members each: every process of this machine may open 20,000
files) on the other cores:

Run A, every setting at its default (fastapi-channels keeps its heartbeat on: 30 s / 60 s):
  1. connect: every member connects and joins `g<i % --capacity-groups>`; 3 in every
     hundred also join `big`. connects/s = members / (first connect -> last join).
  2. RSS per connection: the server's RSS after connecting minus before, / members.
  3. idle CPU: the server's CPU over --capacity-idle seconds with nothing sent, as % of a
     core: the library's heartbeat (sweeps, and a ping to each connection idle for 30 s),
     uvicorn's keepalive (a WebSocket ping every 20 s), Engine.IO's pings (25 s). The
     window opens --capacity-settle s after the last join, once each of those has pinged
     every connection, so it sees their steady state, not the quiet first seconds.
  4. broadcast: --capacity-broadcasts times, --capacity-spacing apart, one member sends a
     message for every connection of the server (`B<payload>`); first send -> last
     delivery, p50/p99 over the broadcasts, every delivery counted, the server's CPU per
     broadcast (what grows with the connections) and the generators' CPU share (near 100%:
     they, not the server, set the broadcast time).
Run B, a short heartbeat (--capacity-hb-interval / --capacity-hb-timeout: a client silent
for about the timeout is dropped):
  5. cleanup: one generator process holding --capacity-vanish members is stopped
     (SIGSTOP: TCP stays up, nothing answers a ping); the time until the server's GET
     /stats shows exactly the connections, group memberships and groups the other members
     hold, then a check that it still does one ping interval later (no live one dropped).
     fastapi-channels: WS_HEARTBEAT_INTERVAL / WS_HEARTBEAT_TIMEOUT; the bare loop:
     uvicorn's keepalive (--ws-ping-interval / --ws-ping-timeout); python-socketio:
     Engine.IO's ping_interval / ping_timeout.

`python -m benchmarks.run --workload capacity --capacity-sizes 5000,10000,19000` runs it:
one row per system and size, in run.py's summary (and --json) with workload "capacity".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks import report
from benchmarks import run as harness
from benchmarks.capacity_loadgen import FILES_SPARE, groups_of, raise_file_limit

POLL = 0.05  # seconds between two reads of /stats while waiting for the cleanup
STATS_KEYS = ("connections", "memberships", "groups")
TRACE = 100  # changes of the connection count kept while waiting for the cleanup
# Settings a shell may have exported: run A must see the libraries' defaults.
TIMING_ENV = frozenset(
    (
        "WS_ENABLE_HEARTBEAT",
        "WS_HEARTBEAT_INTERVAL",
        "WS_HEARTBEAT_TIMEOUT",
        "SIO_PING_INTERVAL",
        "SIO_PING_TIMEOUT",
    )
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The capacity workload's flags (run.py's parser)."""
    group = parser.add_argument_group("capacity (W4)")
    group.add_argument(
        "--capacity-sizes",
        type=lambda v: [int(size) for size in v.split(",")],
        default=[5000, 10000, 19000],
        help="connections to one server process, one run per size",
    )
    group.add_argument(
        "--capacity-settle",
        type=float,
        default=30.0,
        help="seconds from the last join to the idle window: every default keepalive has pinged once",
    )
    group.add_argument(
        "--capacity-idle",
        type=float,
        default=60.0,
        help="idle window, seconds: three of uvicorn's 20 s keepalive periods, two of the heartbeat's",
    )
    group.add_argument("--capacity-broadcasts", type=int, default=10)
    group.add_argument("--capacity-spacing", type=float, default=1.0, help="seconds between broadcasts")
    group.add_argument(
        "--capacity-broadcast-timeout",
        type=float,
        default=30.0,
        help="a broadcast counts as lost where nothing arrives for this long (a busy server is slow)",
    )
    group.add_argument("--capacity-vanish", type=int, default=5000, help="clients that vanish at once")
    group.add_argument("--capacity-hb-interval", type=float, default=5.0, help="cleanup phase, seconds")
    group.add_argument("--capacity-hb-timeout", type=float, default=10.0, help="cleanup phase, seconds")
    group.add_argument("--capacity-groups", type=int, default=1000)
    group.add_argument("--capacity-big-percent", type=int, default=3, help="members also in `big`, %%")
    group.add_argument("--capacity-per-loadgen", type=int, default=9500, help="members per generator")
    group.add_argument(
        "--capacity-concurrency", type=int, default=100, help="handshakes in flight over all generators"
    )


def quick(args: argparse.Namespace) -> None:
    """--quick: one small size, short phases."""
    args.capacity_sizes, args.capacity_vanish = [1000], 500
    args.capacity_idle, args.capacity_broadcasts, args.capacity_spacing = 2.0, 3, 0.5
    args.capacity_settle = 0.0
    args.capacity_hb_interval, args.capacity_hb_timeout = 1.0, 3.0


@dataclass(frozen=True)
class Share:
    """One generator process's members: global indexes first .. first + count - 1."""

    first: int
    count: int

    @property
    def members(self) -> range:
        return range(self.first, self.first + self.count)


def split(total: int, per_process: int, first: int = 0) -> list[Share]:
    """`total` members over as few processes as hold at most `per_process` each, evenly."""
    if total <= 0:
        return []
    processes = math.ceil(total / per_process)
    base, extra = divmod(total, processes)
    shares = []
    for index in range(processes):
        count = base + (1 if index < extra else 0)
        shares.append(Share(first, count))
        first += count
    return shares


def held(shares: Sequence[Share], args: argparse.Namespace) -> dict[str, int]:
    """What the server must hold for these members: connections, memberships, groups."""
    groups: set[str] = set()
    memberships = 0
    for share in shares:
        for member in share.members:
            joined = groups_of(member, args.capacity_groups, args.capacity_big_percent)
            memberships += len(joined)
            groups.update(joined)
    return {
        "connections": sum(share.count for share in shares),
        "memberships": memberships,
        "groups": len(groups),
    }


# --- processes -------------------------------------------------------------------------------------
@contextlib.contextmanager
def serve(
    case: harness.Case, port: int, log: Path, env: dict[str, str], extra: Sequence[str]
) -> Iterator[subprocess.Popen[bytes]]:
    """One server process of `case` on core 0 (run.py's command plus `extra` arguments)."""
    base = {key: value for key, value in os.environ.items() if key not in TIMING_ENV}
    environment = {**base, "PYTHONPATH": str(harness.ROOT), "LOG_STATS": "false", "BACKEND_TYPE": "memory"}
    with log.open("ab") as output:
        process = subprocess.Popen(
            [*harness.server_command(case, port), *extra],
            cwd=harness.ROOT,
            env={**environment, **env},
            preexec_fn=harness.pinned(0),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        harness.wait_port(port, process)
        yield process
    finally:
        harness.stop_process(process, 30)


def stats(port: int) -> dict[str, Any]:
    """The server's GET /stats (a server busy with a mass disconnect may take seconds to answer)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=120) as response:
        figures: dict[str, Any] = json.load(response)
    return figures


class Fleet:
    """The generator processes of one server run, one JSON line per command and per reply.

    Started before the server (they import while it starts) and closed before it stops, so
    the server never has to close thousands of connections itself.
    """

    def __init__(self, commands: Sequence[list[str]], workdir: Path, name: str) -> None:
        self.closed = False
        self.logs: list[Path] = []
        self.processes: list[subprocess.Popen[str]] = []
        for index, command in enumerate(commands):
            log = workdir / f"{name}-generator-{index}.log"
            self.logs.append(log)
            with log.open("w") as errors:  # a file, not a pipe: nothing can block on it
                self.processes.append(
                    subprocess.Popen(
                        command,
                        cwd=harness.ROOT,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=errors,
                        text=True,
                    )
                )

    def tell(self, line: str, processes: Sequence[subprocess.Popen[str]] | None = None) -> None:
        for process in self.processes if processes is None else processes:
            stdin: IO[str] | None = process.stdin
            assert stdin is not None
            stdin.write(line + "\n")
            stdin.flush()

    def replies(
        self, event: str, processes: Sequence[subprocess.Popen[str]] | None = None
    ) -> list[dict[str, Any]]:
        answers = []
        for process in self.processes if processes is None else processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                process.wait(10)
                log = self.logs[self.processes.index(process)]
                raise RuntimeError(
                    f"a capacity generator exited with {process.returncode}:\n{log.read_text()[-3000:]}"
                )
            reply = json.loads(line)
            if reply.get("event") != event:
                raise RuntimeError(f"expected {event!r} from a capacity generator, got {reply}")
            answers.append(reply)
        return answers

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every generator still running (each drops its connections) and reap it."""
        if self.closed:
            return
        self.closed = True
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # one left stopped by a failed cleanup phase
                with contextlib.suppress(OSError):
                    self.tell("stop", [process])
        for process in self.processes:
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def generator_commands(
    case: harness.Case, args: argparse.Namespace, port: int, shares: Sequence[Share]
) -> list[list[str]]:
    """One capacity generator per share, the first one sending the broadcasts."""
    spare = list(range(1, harness.cores()))  # core 0 runs the server
    concurrency = max(1, args.capacity_concurrency // max(1, len(shares)))
    commands = []
    for index, share in enumerate(shares):
        command = [
            sys.executable,
            "-m",
            "benchmarks.capacity_loadgen",
            "--url",
            f"ws://127.0.0.1:{port}{case.path}",
            "--protocol",
            "socketio" if case.protocol == "socketio" else "plain",
            "--first",
            str(share.first),
            "--count",
            str(share.count),
            "--groups",
            str(args.capacity_groups),
            "--big-percent",
            str(args.capacity_big_percent),
            "--concurrency",
            str(concurrency),
            "--broadcasts",
            str(args.capacity_broadcasts),
            "--size",
            str(args.size),
            "--idle",
            str(args.capacity_broadcast_timeout),
        ]
        if index == 0:
            command.append("--sender")
        if spare and not args.float_loadgens:
            command += ["--cpu", str(spare[index % len(spare)])]
        commands.append(command)
    return commands


def connect(fleet: Fleet) -> tuple[list[dict[str, Any]], float]:
    """Start every generator's connect phase at once; (their replies, first connect -> last join)."""
    fleet.replies("started")
    fleet.tell("connect")
    ready = fleet.replies("ready")
    return ready, max(r["connect_done"] for r in ready) - min(r["connect_started"] for r in ready)


def kernel_memory() -> tuple[int, int] | None:
    """(slab bytes in use, TCP buffer bytes) of the whole machine, None where /proc hides them.

    A loopback connection's both ends live in this kernel: the socket structures (slab) and
    whatever sits in their buffers are what a server pays besides its own RSS.
    """
    try:
        slab = 0
        for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
            fields = line.split()
            slab += int(fields[1]) * int(fields[3])  # active objects x object size
        sockstat = Path("/proc/net/sockstat").read_text().splitlines()
        tcp = next(line for line in sockstat if line.startswith("TCP:")).split()
        pages = int(tcp[tcp.index("mem") + 1])
    except (OSError, ValueError, StopIteration, IndexError):
        return None
    return slab, pages * os.sysconf("SC_PAGE_SIZE")


def per_connection_kib(
    before: tuple[int, int] | None, after: tuple[int, int] | None, count: int
) -> list[float]:
    """Growth of `kernel_memory()` per connection, KiB: [slab, TCP buffers] ([] if unreadable)."""
    if before is None or after is None:
        return []
    return [
        round((late - early) / max(count, 1) / 1024, 2) for early, late in zip(before, after, strict=True)
    ]


def tracebacks(log: Path) -> int:
    return log.read_text(errors="replace").count("Traceback (most recent call last)")


# --- run A: connect, RSS, idle CPU, broadcasts ------------------------------------------------------
def measure_load(case: harness.Case, args: argparse.Namespace, size: int, workdir: Path) -> dict[str, Any]:
    shares = split(size, args.capacity_per_loadgen)
    log = workdir / "server-load.log"
    port = harness.free_port()
    commands = generator_commands(case, args, port, shares)
    with Fleet(commands, workdir, "load") as fleet, serve(case, port, log, {}, ()) as process:
        pids = harness.process_tree(process.pid)
        rss_before, kernel_before = harness.rss_bytes(pids), kernel_memory()
        try:
            ready, connect_s = connect(fleet)
            rss_connected, kernel_connected = harness.rss_bytes(pids), kernel_memory()
            registered = stats(port)
            time.sleep(args.capacity_settle)
            primed = stats(port)  # read before the window: the requests cost the server a little
            cpu_before, busy_before, started = (
                harness.cpu_seconds(pids),
                harness.machine_busy_seconds(),
                time.monotonic(),
            )
            time.sleep(args.capacity_idle)
            window = time.monotonic() - started
            idle_cpu = harness.cpu_seconds(pids) - cpu_before
            other_cpu = max(0.0, harness.machine_busy_seconds() - busy_before - idle_cpu)
            idled = stats(port)
            durations: list[float] = []
            loadgen_shares: list[float] = []  # the generators' CPU over a broadcast / its duration
            lost = unexpected = 0
            cpu_before, phase_started = harness.cpu_seconds(pids), time.monotonic()
            for index in range(args.capacity_broadcasts):
                if index:
                    time.sleep(args.capacity_spacing)
                fleet.tell(f"broadcast {index}")
                replies = fleet.replies("broadcast")
                sent_at = next((r["sent_at"] for r in replies if r["sent_at"] is not None), None)
                lasts = [r["last_receipt"] for r in replies if r["last_receipt"] is not None]
                lost += sum(r["expected"] - r["received"] for r in replies)
                unexpected = max(unexpected, sum(r["unexpected"] for r in replies))
                if lasts and sent_at is not None:  # None: the sender's generator holds no member
                    durations.append(max(lasts) - sent_at)
                    loadgen_shares.append(sum(r["cpu_s"] for r in replies) / max(durations[-1], 1e-9))
            # The background load (keepalive pings) runs on meanwhile, spacing included: at
            # idle_cpu_percent of broadcast_phase_s, the amount to take off for the broadcasts alone.
            broadcast_cpu, phase = harness.cpu_seconds(pids) - cpu_before, time.monotonic() - phase_started
        finally:
            fleet.close()
    timing = report.percentiles(sorted(durations))
    expected = held(shares, args)
    connected = sum(r["connections"] for r in ready)
    return {
        "loadgens": len(shares),
        "connected": connected,
        "connect_failed": sum(r["failed"] for r in ready),
        "connect_error": next((r["error"] for r in ready if r["error"]), None),
        "connect_s": round(connect_s, 3),
        "connect_per_s": round(connected / max(connect_s, 1e-9)),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_connected_mib": round(rss_connected / 2**20, 1),
        "rss_per_connection_kib": round((rss_connected - rss_before) / max(connected, 1) / 1024, 2),
        # Machine-wide, both ends of each loopback connection, other processes' churn included.
        "kernel_kib_per_connection": per_connection_kib(kernel_before, kernel_connected, connected),
        "registered": {key: registered.get(key) for key in STATS_KEYS},
        "expected": expected,
        "memberships_joined": sum(r["memberships"] for r in ready),
        "idle_window_s": round(window, 2),
        "idle_cpu_percent": round(idle_cpu / window * 100, 2),
        "idle_other_cpu_percent": round(other_cpu / window * 100, 1),
        # fastapi-channels counts its heartbeat pings: how many fell in the window
        "idle_heartbeat_pings": (
            idled["heartbeat_pings"] - primed["heartbeat_pings"] if "heartbeat_pings" in idled else None
        ),
        "broadcasts": len(durations),
        "broadcast_ms": [round(seconds * 1000, 2) for seconds in durations],
        "broadcast_p50_ms": timing["p50_ms"],
        "broadcast_p99_ms": timing["p99_ms"],
        "broadcast_lost": lost,
        "broadcast_server_cpu_ms": round(broadcast_cpu / max(len(durations), 1) * 1000, 1),
        "broadcast_phase_s": round(phase, 2),
        "broadcast_loadgen_cpu_share": round(statistics.median(loadgen_shares or [0.0]), 2),
        "unexpected_frames": unexpected,
        "server_tracebacks": tracebacks(log),
    }


# --- run B: heartbeat-timeout cleanup ---------------------------------------------------------------
def cleanup_settings(case: harness.Case, args: argparse.Namespace) -> tuple[dict[str, str], list[str], str]:
    """(server environment, extra server arguments, description) so a client silent for about
    --capacity-hb-timeout seconds is dropped, with a ping every --capacity-hb-interval."""
    interval, timeout = args.capacity_hb_interval, args.capacity_hb_timeout
    if timeout <= interval:
        raise SystemExit("--capacity-hb-timeout must exceed --capacity-hb-interval")
    grace = round(timeout - interval, 3)  # a ping's answer may take this long: silence = interval + grace
    if case.protocol == "socketio":
        env = {"SIO_PING_INTERVAL": f"{interval:g}", "SIO_PING_TIMEOUT": f"{grace:g}"}
        return env, [], f"Engine.IO ping_interval={interval:g} ping_timeout={grace:g}"
    if case.system.startswith("channels"):
        env = {"WS_HEARTBEAT_INTERVAL": f"{interval:g}", "WS_HEARTBEAT_TIMEOUT": f"{timeout:g}"}
        return env, [], f"WS_HEARTBEAT_INTERVAL={interval:g} WS_HEARTBEAT_TIMEOUT={timeout:g}"
    extra = ["--ws-ping-interval", f"{interval:g}", "--ws-ping-timeout", f"{grace:g}"]
    return {}, extra, "uvicorn " + " ".join(extra)


def measure_cleanup(case: harness.Case, args: argparse.Namespace, size: int, workdir: Path) -> dict[str, Any]:
    vanish = min(args.capacity_vanish, size)
    victim, *rest = [Share(0, vanish), *split(size - vanish, args.capacity_per_loadgen, first=vanish)]
    expected = held(rest, args)
    env, extra, settings = cleanup_settings(case, args)
    log = workdir / "server-cleanup.log"
    port = harness.free_port()
    commands = generator_commands(case, args, port, [victim, *rest])
    with Fleet(commands, workdir, "cleanup") as fleet, serve(case, port, log, env, extra):
        stopped = fleet.processes[0]
        try:
            ready, _ = connect(fleet)
            before = stats(port)
            stopped.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            deadline = started + 3 * args.capacity_hb_timeout + 30
            seconds = None
            trace = [[0.0, before["connections"]]]  # [seconds after the stop, connections] at each change
            while time.monotonic() < deadline:
                now = stats(port)
                elapsed = time.monotonic() - started
                if now["connections"] != trace[-1][1] and len(trace) < TRACE:
                    trace.append([round(elapsed, 3), now["connections"]])
                if all(now.get(key) == value for key, value in expected.items()):
                    seconds = elapsed
                    break
                if now["connections"] < expected["connections"]:
                    break  # live clients were dropped too: the count cannot come back
                time.sleep(POLL)
            time.sleep(args.capacity_hb_interval)  # the others answer their pings: none may go
            after = stats(port)
        finally:
            stopped.kill()  # a stopped process takes SIGKILL; its sockets close with it
            stopped.wait()
            fleet.close()
    return {
        "cleanup_vanished": vanish,
        "cleanup_connect_failed": sum(r["failed"] for r in ready),
        "cleanup_by": settings,
        "cleanup_s": None if seconds is None else round(seconds, 3),
        "cleanup_trace": trace,
        "cleanup_before": {key: before.get(key) for key in STATS_KEYS},
        "cleanup_expected": expected,
        "cleanup_after": {key: after.get(key) for key in STATS_KEYS},
        "cleanup_stable": all(after.get(key) == value for key, value in expected.items()),
        "cleanup_server_closed": after.get("heartbeat_closes"),  # fastapi-channels counts them
        "cleanup_tracebacks": tracebacks(log),
    }


# --- the study -------------------------------------------------------------------------------------
def study(args: argparse.Namespace, cases: Sequence[harness.Case]) -> list[dict[str, Any]]:
    """Every case at every size (sizes in order, the systems of one size one after another)."""
    if not cases:
        return []
    largest = max(args.capacity_sizes)
    limit = raise_file_limit()  # the servers inherit it
    if largest + FILES_SPARE > limit:
        raise SystemExit(f"{largest} connections to one server need more than the {limit} open files allowed")
    rows: list[dict[str, Any]] = []
    for size in args.capacity_sizes:
        mine = []
        for case in cases:
            row: dict[str, Any] = {
                "workload": "capacity",
                "system": case.label,
                "baseline": case.baseline,
                "connections": size,
            }
            took = 0.0  # the two server runs, without the waits for a quiet machine before each
            with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
                for phase, measure in (("", measure_load), ("cleanup_", measure_cleanup)):
                    row[f"{phase}busy_before_start"] = harness.wait_for_quiet() if args.wait_quiet else None
                    started = time.monotonic()
                    row |= measure(case, args, size, Path(tmp))
                    took += time.monotonic() - started
            row["run_s"] = round(took, 1)
            print(
                f"  capacity {size:>7,} {case.label:34} {row['rss_per_connection_kib']:>7} KiB/conn "
                f"idle {row['idle_cpu_percent']:>5}% broadcast p50 {row['broadcast_p50_ms']} ms "
                f"cleanup {row['cleanup_s']} s ({row['run_s']} s)",
                file=sys.stderr,
            )
            mine.append(row)
        base = next((row for row in mine if row["baseline"]), None)
        for row in mine:
            base_rss = base["rss_per_connection_kib"] if base else 0
            row["rss_ratio_to_bare"] = (
                round(row["rss_per_connection_kib"] / base_rss, 2) if base_rss else None
            )
        rows += mine
    return rows
