"""Run the benchmarks: every system of a workload, interleaved, for several rounds.

    python -m benchmarks.run                 # full: 1,000 clients x 500 messages, 3 rounds
    python -m benchmarks.run --quick         # about a minute
    python -m benchmarks.run --workload fanout --clients 500 --messages 200 --json out.json

Workloads:
    fanout   W1: clients in one group on one server; the publisher on the same server
    cross    W3: two server processes on one Redis, clients split evenly, publishing on one

Peers (python-socketio, Django Channels, broadcaster; `pip install .[bench]`) run in the
same invocation, on the same uvicorn and WebSocket implementation; a peer whose packages are
not importable is skipped with a note, unless --require-peers is given.

Servers are pinned to core 0 and the load generator to core 1 when the machine has two or
more. Each row gives medians over the rounds and the spread; ratios compare medians with
the bare baseline of the same workload run in the same invocation.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAST = "fastapi_channels.fastpath:FastWebSocketProtocol"
WS_NAMES = {"websockets-sansio": "sansio", "websockets": "legacy", FAST: "fastpath"}


@dataclass(frozen=True)
class Case:
    workload: str
    system: str  # an app of benchmarks.systems, or a peer's name
    ws: str
    servers: int
    backend: str = "memory"
    baseline: bool = False
    app: str = ""  # module:attribute for uvicorn; default benchmarks.systems:<system>
    protocol: str = "plain"  # the load generator's --protocol
    requires: tuple[str, ...] = ()  # importable modules a peer needs (empty: not a peer)

    @property
    def peer(self) -> bool:
        return bool(self.requires)

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
        backend = f"/{self.backend}" if self.system == "channels" or self.peer else ""
        return f"{self.system}{backend} [{WS_NAMES.get(self.ws, self.ws)}]"


def peers(workload: str, servers: int, backend: str) -> list[Case]:
    """The peers for one workload, under uvicorn's sans-I/O WebSocket implementation."""
    redis = ("redis",) if backend == "redis" else ()
    return [
        Case(
            workload,
            "python-socketio",
            "websockets-sansio",
            servers,
            backend,
            app="benchmarks.peers.socketio_app:app",
            protocol="socketio",
            requires=("socketio", "engineio", *redis),
        ),
        Case(
            workload,
            "django-channels",
            "websockets-sansio",
            servers,
            backend,
            app="benchmarks.peers.django_app:app",
            requires=("django", "channels", *(("channels_redis",) if redis else ())),
        ),
        Case(
            workload,
            "broadcaster",
            "websockets-sansio",
            servers,
            backend,
            app="benchmarks.peers.broadcaster_app:app",
            requires=("broadcaster", *redis),
        ),
    ]


CASES = {
    "fanout": [
        Case("fanout", "bare", "websockets-sansio", 1, baseline=True),
        Case("fanout", "channels", "websockets-sansio", 1),
        Case("fanout", "channels", FAST, 1),
        Case("fanout", "bare", "websockets", 1),
        Case("fanout", "channels", "websockets", 1),
        *peers("fanout", 1, "memory"),
    ],
    "cross": [
        Case("cross", "bare_redis", "websockets-sansio", 2, baseline=True),
        Case("cross", "channels", "websockets-sansio", 2, backend="redis"),
        Case("cross", "channels", FAST, 2, backend="redis"),
        *peers("cross", 2, "redis"),
    ],
}


@dataclass
class Results:
    runs: dict[Case, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, case: Case, result: dict[str, Any]) -> None:
        self.runs.setdefault(case, []).append(result)


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


def pinned(core: int) -> Any:
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {core})


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


@contextlib.contextmanager
def servers(case: Case, redis_url: str | None) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    started: list[tuple[int, subprocess.Popen[bytes]]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_STATS": "false", "BACKEND_TYPE": case.backend}
    if redis_url:
        env |= {"REDIS_URL": redis_url, "REDIS_CHANNEL_PREFIX": f"b{uuid.uuid4().hex[:6]}:"}
    try:
        for _ in range(case.servers):
            port = free_port()
            process = subprocess.Popen(
                [
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
                ],
                cwd=ROOT,
                env=env,
                preexec_fn=pinned(0),
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


def run_case(case: Case, args: argparse.Namespace, redis_url: str | None) -> dict[str, Any]:
    with servers(case, redis_url) as running:
        command = [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "--clients",
            str(args.clients),
            "--messages",
            str(args.messages),
            "--size",
            str(args.size),
        ]
        for port, process in running:
            command += ["--url", f"ws://127.0.0.1:{port}{case.path}", "--pid", str(process.pid)]
        command += [
            "--publish-url",
            f"ws://127.0.0.1:{running[0][0]}{case.path}",
            "--protocol",
            case.protocol,
        ]
        if (os.cpu_count() or 1) >= 2:
            command += ["--cpu", "1"]
        output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
        if output.returncode != 0:
            raise RuntimeError(f"load generator failed for {case.label}:\n{output.stderr[-2000:]}")
        return dict(json.loads(output.stdout.strip().splitlines()[-1]))


def run(args: argparse.Namespace) -> Results:
    results = Results()
    for workload in args.workload:
        cases = []
        for case in CASES[workload]:
            if case.ws == "websockets" and not args.all_ws:
                continue
            if case.peer and not args.peers:
                continue
            if case.missing:
                note = f"{case.label} ({workload}) needs {', '.join(case.missing)}: pip install .[bench]"
                if args.require_peers:
                    raise SystemExit(f"error: {note}")
                print(f"  skipped {note}", file=sys.stderr)
                continue
            cases.append(case)
        needs_redis = any(case.servers > 1 for case in cases)
        with redis_server() if needs_redis else contextlib.nullcontext() as redis_url:  # type: ignore[attr-defined]
            for round_ in range(args.rounds):
                for case in cases:  # interleaved: every system once per round
                    result = run_case(case, args, redis_url)
                    results.add(case, result)
                    rate = result["deliveries_per_s"]
                    print(
                        f"  round {round_ + 1} {case.workload:6} {case.label:36} {rate:>9,}/s",
                        file=sys.stderr,
                    )
    return results


def summarise(results: Results) -> list[dict[str, Any]]:
    rows = []
    baselines = {case.workload: runs for case, runs in results.runs.items() if case.baseline}
    for case, runs in results.runs.items():
        rates = [r["deliveries_per_s"] for r in runs]
        base = baselines.get(case.workload)
        base_rate = statistics.median(r["deliveries_per_s"] for r in base) if base else None
        base_cpu = statistics.median(r["server_cpu_s_per_100k"] for r in base) if base else None
        cpu = statistics.median(r["server_cpu_s_per_100k"] for r in runs)
        rows.append(
            {
                "workload": case.workload,
                "system": case.label,
                "deliveries_per_s": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                "max_ms": max(r["max_ms"] for r in runs),
                "lost": sum(r["lost"] for r in runs),
                "server_cpu_s_per_100k": cpu,
                "loadgen_cpu_share": statistics.median(r["loadgen_cpu_share"] for r in runs),
                "ratio_to_bare": round(statistics.median(rates) / base_rate, 2) if base_rate else None,
                "cpu_ratio_to_bare": round(cpu / base_cpu, 2) if base_cpu else None,
                "rounds": len(runs),
            }
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | system | deliveries/s (median) | spread | p50 ms | p99 ms | max ms | lost "
        "| server CPU s/100k | vs bare (rate) | vs bare (CPU) | loadgen CPU |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [
            row["workload"],
            row["system"],
            f"{row['deliveries_per_s']:,.0f}",
            f"{row['min']:,} to {row['max']:,}",
            row["p50_ms"],
            row["p99_ms"],
            row["max_ms"],
            row["lost"],
            row["server_cpu_s_per_100k"],
            row["ratio_to_bare"],
            row["cpu_ratio_to_bare"],
            f"{row['loadgen_cpu_share']:.0%}",
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workload", default="fanout,cross", type=lambda v: v.split(","))
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--all-ws", action="store_true", help="also uvicorn's legacy websockets implementation"
    )
    parser.add_argument(
        "--require-peers",
        action="store_true",
        help="fail, instead of skipping, when a peer's packages are not importable",
    )
    parser.add_argument(
        "--no-peers", dest="peers", action="store_false", help="only the systems of systems.py"
    )
    parser.add_argument("--quick", action="store_true", help="300 clients x 100 messages, 2 rounds")
    parser.add_argument("--json", type=Path, help="write the summary and raw runs here")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.messages, args.rounds = 300, 100, 2
    unknown = set(args.workload) - set(CASES)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    results = run(args)
    rows = summarise(results)
    print(render(rows))
    if args.json:
        raw = {case.label + f" ({case.workload})": runs for case, runs in results.runs.items()}
        args.json.write_text(json.dumps({"summary": rows, "runs": raw, "argv": sys.argv[1:]}, indent=2))
    return rows


if __name__ == "__main__":
    main()
