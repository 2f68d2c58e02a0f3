"""Run the benchmarks: every system of a workload, interleaved, for several rounds.

    python -m benchmarks.run                  # full: W1-W5 at the sizes below, 3 rounds
    python -m benchmarks.run --quick          # every workload at a small size, about a minute
    python -m benchmarks.run --workload fanout,cross --clients 500 --messages 200 --json out.json

Workloads (sizes are flags; the defaults are the full sizes):
    fanout    W1: --clients members of one group on one server, --messages from one publisher
    rooms     W2: --clients members in rooms of two on one server, each sending --room-messages
    cross     W3: two server processes on one Redis, members split evenly, publishing on one
    capacity  W4: --capacity-sizes connections in 1,000 groups on one server: connects/s, RSS per
              connection, idle CPU, broadcast time, heartbeat cleanup (benchmarks/capacity.py)
    large     W5: one group of --large-clients members over two servers on one Redis:
              deliveries/s and Redis commands per group send (INFO commandstats)

Latency at a steady rate (opt-in: not in the default list; see benchmarks/latency.py):
    latency        --clients members of one group on one server; the publisher climbs
                   --latency-rates (deliveries/s), --latency-seconds each: p50/p99/p99.9/max
                   per rate and each system's highest rate with p99 < --latency-target-ms
    latency_cross  the same over two servers on one Redis

Peers (python-socketio, Django Channels, broadcaster; `pip install .[bench]`) run in the
same invocation, on the same uvicorn and WebSocket implementation; a peer whose packages
are not importable is skipped with a note, unless --require-peers is given. granian rows
appear when granian is installed.

Servers (and Redis) are pinned to core 0 and the load generators to the other cores when
the machine has two or more. Each row gives medians over the rounds and the spread; ratios
compare medians with the bare baseline of the same workload run in the same invocation.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
FAST = "fastapi_channels.fastpath:FastWebSocketProtocol"
SANSIO = "websockets-sansio"
WS_NAMES = {SANSIO: "sansio", "websockets": "legacy", FAST: "fastpath", "granian": "granian"}


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    mode: str  # the load generator's --mode: fanout | rooms | idle
    servers: int
    backend: str  # what `channels` and the peers use: memory | redis


WORKLOADS = {
    "fanout": Workload("fanout", "W1 fan-out: one group, one server", "fanout", 1, "memory"),
    "rooms": Workload("rooms", "W2 chat rooms: rooms of two, everyone sending", "rooms", 1, "memory"),
    "cross": Workload("cross", "W3 cross-server: two servers on one Redis", "fanout", 2, "redis"),
    "capacity": Workload("capacity", "W4 capacity: idle connections on one server", "idle", 1, "memory"),
    "large": Workload("large", "W5 large group: two servers on one Redis", "fanout", 2, "redis"),
}


@dataclass(frozen=True)
class Case:
    workload: str
    system: str  # an app of benchmarks.systems, or a peer's name
    ws: str  # uvicorn's --ws, or "granian"
    baseline: bool = False
    app: str = ""  # module:attribute; default benchmarks.systems:<system>
    protocol: str = "plain"  # the load generator's --protocol
    requires: tuple[str, ...] = ()  # importable modules the case needs
    redis_mode: str = "standalone"  # REDIS_MODE of a redis case: "cluster" runs on a 3-master cluster

    @property
    def spec(self) -> Workload:
        return WORKLOADS[self.workload]

    @property
    def peer(self) -> bool:
        return self.protocol == "socketio" or self.app.startswith("benchmarks.peers.")

    @property
    def target(self) -> str:
        return self.app or f"benchmarks.systems:{self.system}"

    @property
    def path(self) -> str:
        return "/socket.io/?EIO=4&transport=websocket" if self.protocol == "socketio" else "/ws"

    @property
    def missing(self) -> list[str]:
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    @property
    def label(self) -> str:
        backend = f"/{self.spec.backend}" if self.system.startswith("channels") or self.peer else ""
        if self.redis_mode == "cluster":
            backend += "-cluster"
        return f"{self.system}{backend} [{WS_NAMES.get(self.ws, self.ws)}]"


def peers(workload: str) -> list[Case]:
    """The peers for one workload, under uvicorn's sans-I/O WebSocket implementation."""
    redis = ("redis",) if WORKLOADS[workload].backend == "redis" else ()
    return [
        Case(
            workload,
            "python-socketio",
            SANSIO,
            app="benchmarks.peers.socketio_app:app",
            protocol="socketio",
            requires=("socketio", "engineio", *redis),
        ),
        Case(
            workload,
            "django-channels",
            SANSIO,
            app="benchmarks.peers.django_app:app",
            requires=("django", "channels", *(("channels_redis",) if redis else ())),
        ),
        Case(
            workload,
            "broadcaster",
            SANSIO,
            app="benchmarks.peers.broadcaster_app:app",
            requires=("broadcaster", *redis),
        ),
    ]


def ours(workload: str, bare: str) -> list[Case]:
    """The baseline and fastapi-channels under uvicorn's sans-I/O and the fast path."""
    return [
        Case(workload, bare, SANSIO, baseline=True),
        Case(workload, "channels", SANSIO),
        Case(workload, "channels", FAST),
    ]


def on_a_cluster(workload: str) -> list[Case]:
    """fastapi-channels on the fast path with REDIS_MODE=cluster (a three-master Redis Cluster)."""
    return [Case(workload, "channels", FAST, redis_mode="cluster")]


def history(workload: str) -> list[Case]:
    """The same group as JSON objects, without and with history, on the fast path (issue 12)."""
    return [
        Case(workload, "channels_json", FAST, protocol="json"),
        Case(workload, "channels_history", FAST, protocol="json"),
    ]


def granian(workload: str, bare: str) -> list[Case]:
    return [
        Case(workload, bare, "granian", requires=("granian",)),
        Case(workload, "channels", "granian", requires=("granian",)),
    ]


def legacy(workload: str, bare: str) -> list[Case]:
    return [Case(workload, bare, "websockets"), Case(workload, "channels", "websockets")]


CASES = {
    "fanout": [
        *ours("fanout", "bare"),
        *granian("fanout", "bare"),
        *legacy("fanout", "bare"),
        *peers("fanout"),
    ],
    "rooms": [*ours("rooms", "bare"), *peers("rooms")],
    "cross": [
        *ours("cross", "bare_redis"),
        *on_a_cluster("cross"),
        *history("cross"),
        *granian("cross", "bare_redis"),
        *peers("cross"),
    ],
    # The capacity study (benchmarks/capacity.py): channels with its heartbeat on, and the one
    # peer with a broadcast and a ping timeout of its own (python-socketio).
    "capacity": [
        Case("capacity", "bare", SANSIO, baseline=True),
        Case("capacity", "channels", SANSIO, app="benchmarks.systems:channels_capacity"),
        Case("capacity", "channels", FAST, app="benchmarks.systems:channels_capacity"),
        peers("capacity")[0],
    ],
    "large": [*ours("large", "bare_redis"), *on_a_cluster("large"), *peers("large")],
}


@dataclass
class Results:
    runs: dict[Case, list[dict[str, Any]]] = field(default_factory=dict)
    profiles: dict[str, str] = field(default_factory=dict)  # label -> top of the profile

    def add(self, case: Case, result: dict[str, Any]) -> None:
        self.runs.setdefault(case, []).append(result)


# --- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def stop_process(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pinned(core: int) -> Any:
    if cores() < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {core})


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (granian serves from a child process)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                pending.extend(int(child) for child in children)
    return found


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot, over all cores (/proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user


def wait_for_quiet(limit: float = 0.25, patience: float = 60) -> float:
    """Wait (up to `patience` s) until other work uses under `limit` of a core; return that share."""
    deadline = time.monotonic() + patience
    while True:
        before, started = machine_busy_seconds(), time.monotonic()
        time.sleep(0.5)
        share = (machine_busy_seconds() - before) / (time.monotonic() - started)
        if share < limit or time.monotonic() > deadline:
            return round(share, 2)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def redis_commands(url: str | None, nodes: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """Calls per command since each Redis started (INFO commandstats, `info` itself left out),
    by node: the one Redis at `url`, or each master of a cluster (`nodes`)."""
    if url is None:
        return {}
    from redis import Redis

    counts = {}
    for node in nodes or [url]:
        with Redis.from_url(node) as client:
            stats = client.info("commandstats")
        counts[node] = {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name != "cmdstat_info"
        }
    return counts


@contextlib.contextmanager
def redis_cluster() -> Iterator[tuple[str, list[str]]]:
    """Three masters, no replicas, pinned to the servers' core: (a node's URL, every master's)."""
    from tests.support.redis_cluster import ClusterDeployment

    deployment = ClusterDeployment(masters=3)
    deployment.start()
    try:
        if cores() >= 2 and hasattr(os, "sched_setaffinity"):
            for node in deployment.nodes:
                assert node.process is not None
                os.sched_setaffinity(node.process.pid, {0})
        yield deployment.url, [f"redis://{master.address}" for master in deployment.masters()]
    finally:
        deployment.stop()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pinned(0),
    )
    try:
        wait_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def server_command(case: Case, port: int) -> list[str]:
    if case.ws == "granian":
        return [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "asyncio",
            "--log-level",
            "warning",
            "--no-access-log",
            case.target,
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        case.target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ws",
        case.ws,
        "--ws-per-message-deflate",
        "false",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


@contextlib.contextmanager
def servers(
    case: Case, redis_url: str | None, log: Path
) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    """The case's server processes; their output goes to `log` (run.py counts its tracebacks)."""
    started: list[tuple[int, subprocess.Popen[bytes]]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_STATS": "false", "BACKEND_TYPE": case.spec.backend}
    if redis_url:
        env |= {
            "REDIS_URL": redis_url,
            "REDIS_MODE": case.redis_mode,
            "REDIS_CHANNEL_PREFIX": f"b{uuid.uuid4().hex[:6]}:",
        }
    try:
        for _ in range(case.spec.servers):
            port = free_port()
            with log.open("ab") as output:
                process = subprocess.Popen(
                    server_command(case, port),
                    cwd=ROOT,
                    env=env,
                    preexec_fn=pinned(0),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            started.append((port, process))
            wait_port(port, process)
        yield started
    finally:
        for _, process in started:
            process.terminate()
        for _, process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- one run ---------------------------------------------------------------------------------------
class Generators:
    """The load generator processes of one run, driven in lock step over stdin/stdout."""

    def __init__(self, commands: list[list[str]]) -> None:
        self.processes = [
            subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for command in commands
        ]

    def read_all(self, event: str) -> list[dict[str, Any]]:
        replies = []
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                process.wait(10)
                stderr = process.stderr.read() if process.stderr else ""
                raise RuntimeError(f"a load generator exited with {process.returncode}:\n{stderr[-3000:]}")
            reply = json.loads(line)
            if reply.get("event") != event:
                raise RuntimeError(f"expected {event!r} from a load generator, got {reply}")
            replies.append(reply)
        return replies

    def go(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()

    def close(self) -> None:
        for process in self.processes:
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def loadgen_commands(
    case: Case, args: argparse.Namespace, ports: list[int], clients: int, messages: int, latency_dir: Path
) -> list[list[str]]:
    count = args.loadgens
    spare = list(range(1, cores()))  # core 0 runs the servers
    commands = []
    for index in range(count):
        command = [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "--mode",
            case.spec.mode,
            "--clients",
            str(clients),
            "--messages",
            str(messages),
            "--size",
            str(args.size),
            "--index",
            str(index),
            "--of",
            str(count),
            "--protocol",
            case.protocol,
            "--publish-url",
            f"ws://127.0.0.1:{ports[0]}{case.path}",
            "--latency-file",
            str(latency_dir / f"{index}.bin"),
            "--idle",
            str(args.idle),
        ]
        for port in ports:
            command += ["--url", f"ws://127.0.0.1:{port}{case.path}"]
        if spare and not args.float_loadgens:
            command += ["--cpu", str(spare[index % len(spare)])]
        commands.append(command)
    return commands


def sizes(case: Case, args: argparse.Namespace) -> tuple[int, int]:
    if case.workload == "large":
        return args.large_clients, args.large_messages
    if case.workload == "rooms":
        return args.clients, args.room_messages
    return args.clients, args.messages


@dataclass
class Measured:
    """What run.py itself reads around one publish phase."""

    ready: list[dict[str, Any]]
    done: list[dict[str, Any]]
    server_cpu_s: float
    other_cpu_s: float  # the rest of the machine over the phase: other processes, uncharged kernel work
    rss_before: int
    rss_connected: int
    redis_calls: dict[str, dict[str, int]]  # by node: calls per command over the phase


def measure(
    case: Case,
    args: argparse.Namespace,
    redis_url: str | None,
    running: list[tuple[int, subprocess.Popen[bytes]]],
    workdir: Path,
    profile_to: Path | None,
    redis_nodes: Sequence[str] = (),
) -> Measured:
    clients, messages = sizes(case, args)
    server_pids = [pid for _, process in running for pid in process_tree(process.pid)]
    rss_before = rss_bytes(server_pids)
    ports = [port for port, _ in running]
    generators = Generators(loadgen_commands(case, args, ports, clients, messages, workdir))
    try:
        ready = generators.read_all("ready")
        server_pids = [pid for _, process in running for pid in process_tree(process.pid)]
        rss_connected = rss_bytes(server_pids)
        commands_before = redis_commands(redis_url, redis_nodes)
        cpu_before, machine_before = cpu_seconds(server_pids), machine_busy_seconds()
        profiler = start_profiler(process_tree(running[0][1].pid)[-1], profile_to) if profile_to else None
        generators.go()
        done = generators.read_all("done")
        server_cpu = cpu_seconds(server_pids) - cpu_before
        machine = machine_busy_seconds() - machine_before
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        commands_after = redis_commands(redis_url, redis_nodes)
    finally:
        generators.close()
    calls = {
        node: {name: after[name] - commands_before[node].get(name, 0) for name in after}
        for node, after in commands_after.items()
    }
    generators_cpu = sum(reply["cpu_s"] for reply in done)
    other = max(0.0, machine - server_cpu - generators_cpu)
    return Measured(ready, done, server_cpu, other, rss_before, rss_connected, calls)


def run_case(
    case: Case,
    args: argparse.Namespace,
    redis_url: str | None,
    profile_to: Path | None = None,
    redis_nodes: Sequence[str] = (),
) -> dict[str, Any]:
    """One run of `case`; `redis_nodes`: a cluster's masters (their commands counted by shard)."""
    clients, messages = sizes(case, args)
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        log = Path(tmp) / "server.log"
        with servers(case, redis_url, log) as running:
            measured = measure(case, args, redis_url, running, Path(tmp), profile_to, redis_nodes)
        latencies = array.array("d")
        for index in range(len(measured.done)):
            with contextlib.suppress(FileNotFoundError), open(Path(tmp) / f"{index}.bin", "rb") as source:
                latencies.frombytes(source.read())
        # Read once the servers stopped: a traceback at shutdown (a peer's teardown) counts too.
        tracebacks = log.read_text(errors="replace").count("Traceback (most recent call last)")
    done = measured.done
    received = sum(reply["received"] for reply in done)
    starts = [reply["started"] for reply in done if reply["started"] is not None]
    elapsed = max(max(reply["last_receipt"] for reply in done) - min(starts), 1e-9) if starts else 0.0
    connect_s = max(reply["connect_s"] for reply in measured.ready)
    result: dict[str, Any] = {
        "deliveries": received,
        "lost": sum(reply["expected"] for reply in done) - received,
        "elapsed_s": round(elapsed, 4),
        "deliveries_per_s": round(received / elapsed) if elapsed else 0,
        **report.percentiles(sorted(latencies)),
        "loadgen_cpu_share": round(max(reply["cpu_s"] for reply in done) / elapsed, 3) if elapsed else 0.0,
        "server_cpu_s_per_100k": round(measured.server_cpu_s / max(received, 1) * 100_000, 3),
        "connections": clients,
        "connect_per_s": round(clients / max(connect_s, 1e-9)),
        "rss_per_connection_kib": round(
            (measured.rss_connected - measured.rss_before) / max(clients, 1) / 1024, 2
        ),
        "server_tracebacks": tracebacks,
        "other_cpu_share": round(measured.other_cpu_s / elapsed, 3) if elapsed else 0.0,
    }
    if redis_url and messages:
        by_node = measured.redis_calls.values()
        result["redis_commands_per_send"] = round(sum(sum(c.values()) for c in by_node) / messages, 2)
        publishes = sum(c.get("publish", 0) + c.get("spublish", 0) for c in by_node)
        result["redis_publish_per_send"] = round(publishes / messages, 2)
        if redis_nodes:  # how the commands spread over the shards, busiest first
            result["redis_commands_per_send_by_shard"] = sorted(
                (round(sum(c.values()) / messages, 2) for c in by_node), reverse=True
            )
    return result


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling one server process over the publish phase (idle samples left out)."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    process = subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # py-spy attaches before the first message goes out
    return process


def chosen(args: argparse.Namespace, case: Case, workload: str) -> bool:
    """Whether --systems, --no-peers and the installed packages leave `case` in the run; a
    missing peer is reported (fatal with --require-peers)."""
    if case.peer and not args.peers:
        return False
    if args.systems and not any(name in case.label for name in args.systems):
        return False
    if case.missing:
        note = f"{case.label} ({workload}) needs {', '.join(case.missing)}: pip install .[bench]"
        if args.require_peers and case.peer:
            raise SystemExit(f"error: {note}")
        print(f"  skipped {note}", file=sys.stderr)
        return False
    return True


def selected(args: argparse.Namespace, workload: str) -> list[Case]:
    return [
        case
        for case in CASES[workload]
        if (case.ws != "websockets" or args.all_ws) and chosen(args, case, workload)
    ]


def run(args: argparse.Namespace) -> Results:
    results = Results()
    for workload in args.workload:
        cases = selected(args, workload)
        needs_redis = WORKLOADS[workload].backend == "redis" and bool(cases)
        broker: contextlib.AbstractContextManager[str | None] = (
            redis_server() if needs_redis else contextlib.nullcontext()
        )
        on_cluster = any(case.redis_mode == "cluster" for case in cases)
        cluster: contextlib.AbstractContextManager[tuple[str, list[str]] | None] = (
            redis_cluster() if on_cluster else contextlib.nullcontext()
        )
        with broker as redis_url, cluster as cluster_nodes:
            for round_ in range(args.rounds):
                order = cases if round_ % 2 == 0 else cases[::-1]  # interleaved, the order flipped each round
                for case in order:
                    quiet = wait_for_quiet() if args.wait_quiet else None
                    if case.redis_mode == "cluster" and cluster_nodes is not None:
                        result = run_case(case, args, cluster_nodes[0], redis_nodes=cluster_nodes[1])
                    else:
                        result = run_case(case, args, redis_url)
                    result["busy_before_start"] = quiet
                    results.add(case, result)
                    figure = f"{result['deliveries_per_s']:>9,}/s"
                    print(f"  round {round_ + 1} {workload:8} {case.label:36} {figure}", file=sys.stderr)
            if args.profile and workload in ("fanout", "cross"):
                args.profile.mkdir(parents=True, exist_ok=True)
                for case in cases:
                    if case.system == "channels" or case.baseline:
                        out = args.profile / f"{workload}-{case.system}-{WS_NAMES.get(case.ws, case.ws)}.txt"
                        run_case(case, args, redis_url, profile_to=out)  # not counted: sampling costs CPU
                        if out.exists():
                            results.profiles[f"{case.label} ({workload})"] = report.top_of_profile(
                                out.read_text()
                            )
    return results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workload", default=",".join(WORKLOADS), type=lambda v: v.split(","))
    parser.add_argument("--clients", type=int, default=1000, help="W1, W2, W3 and latency members")
    parser.add_argument("--messages", type=int, default=500, help="W1, W3 messages")
    parser.add_argument("--room-messages", type=int, default=100, help="W2 messages per member")
    parser.add_argument("--large-clients", type=int, default=2000, help="W5 group members")
    parser.add_argument("--large-messages", type=int, default=200, help="W5 messages")
    parser.add_argument("--size", type=int, default=100, help="message size in bytes")
    parser.add_argument(
        "--idle", type=float, default=3.0, help="a run ends after this many seconds without a delivery"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--loadgens", type=int, default=1, help="load generator processes sharing the clients"
    )
    parser.add_argument(
        "--float-loadgens",
        action="store_true",
        help="do not pin the load generators (on a 2-core machine: let them use the server's core too)",
    )
    parser.add_argument(
        "--systems", type=lambda v: v.split(","), default=[], help="only labels containing one of these"
    )
    parser.add_argument(
        "--all-ws", action="store_true", help="also uvicorn's legacy websockets implementation"
    )
    parser.add_argument(
        "--require-peers", action="store_true", help="fail when a peer's packages are missing"
    )
    parser.add_argument("--no-peers", dest="peers", action="store_false", help="leave the peers out")
    parser.add_argument("--peers", dest="peers", action="store_true", help="include the peers in --quick")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, 2 rounds, peers only with --peers: about a minute"
    )
    parser.add_argument(
        "--no-wait-quiet",
        dest="wait_quiet",
        action="store_false",
        help="start each run at once instead of waiting (up to 60 s) for the machine to be idle",
    )
    parser.add_argument("--json", type=Path, help="write the summary and raw runs here")
    parser.add_argument("--charts", type=Path, help="write one PNG chart per workload into this directory")
    parser.add_argument("--profile", type=Path, help="py-spy the servers of W1 and W3 into this directory")
    from benchmarks import latency  # here, not at the top: latency imports this module

    latency.add_arguments(parser)  # --latency-rates, --latency-seconds, --latency-target-ms
    from benchmarks import capacity  # here too: capacity imports this module

    capacity.add_arguments(parser)  # --capacity-sizes, --capacity-idle, --capacity-vanish, ...
    parser.set_defaults(peers=None)
    args = parser.parse_args(argv)
    if args.peers is None:
        args.peers = not args.quick
    if args.quick:
        args.clients, args.messages, args.rounds = 200, 100, 2
        args.large_clients, args.large_messages, args.room_messages = 400, 50, 20
        capacity.quick(args)
    latency_names = [name for name in args.workload if name in latency.WORKLOADS]  # opt-in, not default
    args.workload = [name for name in args.workload if name not in latency.WORKLOADS]
    unknown = set(args.workload) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    # W4 is a study of its own (sizes, not rounds), run after the others: one row per system and size.
    capacity_cases = selected(args, "capacity") if "capacity" in args.workload else []
    args.workload = [name for name in args.workload if name != "capacity"]
    results = run(args)
    rows = report.summarise(results.runs.items())
    rows += latency.run_workloads(args, latency_names)  # one row per system, its ladder in "steps"
    rows += capacity.study(args, capacity_cases)
    print(report.render(rows, WORKLOADS))
    if latency_names:
        print(latency.render(rows))
    for label, top in results.profiles.items():
        print(f"\nprofile: {label}\n{top}")
    if args.charts:
        report.charts(rows, WORKLOADS, args.charts)
        latency.charts(rows, args.charts)
    if args.json:
        raw = {f"{case.label} ({case.workload})": runs for case, runs in results.runs.items()}
        args.json.write_text(
            json.dumps(
                {"summary": rows, "runs": raw, "profiles": results.profiles, "argv": sys.argv[1:]}, indent=2
            )
        )
    return rows


if __name__ == "__main__":
    main()
