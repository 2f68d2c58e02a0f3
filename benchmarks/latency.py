"""Latency at a steady rate: end-to-end latency while one publisher sends at fixed rates.

    python -m benchmarks.run --workload latency,latency_cross --json latency.json --charts charts/
    python -m benchmarks.run --workload latency --clients 200 --latency-rates 1k,5k --latency-seconds 5

W1 and W3 send as fast as the publisher can, so their latencies are queueing under
saturation. Here the publisher sends on a schedule (benchmarks/steady.py), each message
stamped with the time it was due, at rates given in deliveries/s (messages/s x members):
`latency` has --clients members of one group on one server (memory backend),
`latency_cross` the same members split evenly over two servers on one Redis, publishing on
the first. Each system climbs --latency-rates, --latency-seconds per rate, and leaves the
ladder at the first rate where its p99 reaches --latency-target-ms or a message is lost:
its highest sustainable rate is the last rate before that. A rate whose p99 is already
certain to miss the target (more than 1% of its deliveries late, or overdue and not
received) is stopped at once, so a saturated system costs a second, not a backlog's drain;
the first rate always runs to the end, so every system has one complete row. A failed rate
runs again once, after the machine is quiet: a neighbour's burst on a shared machine can
only add latency, so a system leaves the ladder only if it fails the rate twice.

Every system of a workload is started and connected once, kept up over its ladder, and
warmed up with WARMUP_S at the first rate (not counted: lazy initialisation, Redis script
loading). The systems step interleaved: at each rate every system still on the ladder runs
once, the order flipped at every rate, so a neighbour's burst on a shared machine does not
land on one system only.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import dataclasses
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import report, run

DEFAULT_RATES = "1k,2k,5k,10k,20k,50k,100k,200k,500k"
WARMUP_S = 2.0  # at the first rate, before the ladder; not counted
LEAD = 0.2  # seconds between sending a step's command and its first message being due
PEERS = ("python-socketio", "django-channels")

WORKLOADS = {
    "latency": run.Workload(
        "latency", "Latency at a steady rate: one group, one server", "fanout", 1, "memory"
    ),
    "latency_cross": run.Workload(
        "latency_cross", "Latency at a steady rate: two servers on one Redis", "fanout", 2, "redis"
    ),
}
TWINS = {"latency": ("fanout", "bare"), "latency_cross": ("cross", "bare_redis")}  # run.py's cases to reuse


@dataclasses.dataclass(frozen=True)
class LatencyCase(run.Case):
    """A run.py case whose workload is one of this module's (run.WORKLOADS does not list them)."""

    @property
    def spec(self) -> run.Workload:
        return WORKLOADS[self.workload]


def cases(name: str) -> list[LatencyCase]:
    """Ours on both WebSocket paths, the bare baseline, python-socketio and Django Channels."""
    twin, bare = TWINS[name]
    chosen = [*run.ours(twin, bare), *(case for case in run.peers(twin) if case.system in PEERS)]
    return [
        LatencyCase(**{**{f.name: getattr(case, f.name) for f in dataclasses.fields(case)}, "workload": name})
        for case in chosen
    ]


def parse_rates(text: str) -> list[int]:
    """`1k,2k,5k,1.5m` -> [1000, 2000, 5000, 1500000]: strictly increasing deliveries/s."""
    rates = []
    for word in text.lower().replace("_", "").split(","):
        word = word.strip()
        scale = {"k": 1_000, "m": 1_000_000}.get(word[-1:], 1)
        try:
            rates.append(round(float(word[:-1] if scale > 1 else word) * scale))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a rate: {word!r}") from None
    if not rates or rates[0] <= 0 or any(b <= a for a, b in itertools.pairwise(rates)):
        raise argparse.ArgumentTypeError("rates must be positive and increasing")
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--latency-rates",
        type=parse_rates,
        default=parse_rates(DEFAULT_RATES),
        help=f"latency workloads: the ladder, in deliveries/s ({DEFAULT_RATES})",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=None,
        help="latency workloads: seconds per rate (20; 2 with --quick)",
    )
    parser.add_argument(
        "--latency-target-ms",
        type=float,
        default=50.0,
        help="latency workloads: a system leaves the ladder once its p99 reaches this",
    )


def late_bound(total: int) -> int:
    """How many of `total` deliveries must reach the target for the p99 to reach it too.

    report.percentiles takes the sample at index int(0.99 n) of the sorted n; it reaches the
    target exactly when at least n - int(0.99 n) samples do.
    """
    return total - int(0.99 * total)


def latency_figures(ordered: Sequence[float]) -> dict[str, float]:
    """report.percentiles (p50/p99/max) plus p99.9, in ms, from sorted latencies in seconds."""
    at = min(len(ordered) - 1, int(0.999 * len(ordered)))
    return {**report.percentiles(ordered), "p999_ms": round(ordered[at] * 1000, 2) if ordered else 0.0}


def sustained_rate(steps: Sequence[dict[str, Any]]) -> int | None:
    """The highest rate of the ladder before its first failed step (None if the first failed)."""
    best = None
    for step in steps:
        if not step["ok"]:
            break
        best = step["rate"]
    return best


def verdict(step: dict[str, Any], target_ms: float) -> str:
    """Why a step failed, in a few words."""
    if step["stopped_after_s"] is not None:
        return f"stopped after {step['stopped_after_s']:g} s: p99 certain to reach {target_ms:g} ms"
    if step["lost"]:
        return f"lost {step['lost']:,}"
    return f"p99 {step['p99_ms']:g} ms"


class SteadyGenerators(run.Generators):
    """run.py's lock-step generators, plus the step protocol of benchmarks.steady."""

    def send(self, line: str, to: Sequence[int] | None = None) -> None:
        for index, process in enumerate(self.processes):
            if (to is None or index in to) and process.stdin is not None:
                process.stdin.write(line + "\n")
                process.stdin.flush()

    def read_one(self, index: int) -> dict[str, Any]:
        process = self.processes[index]
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            process.wait(10)
            stderr = process.stderr.read() if process.stderr else ""
            raise RuntimeError(f"a steady generator exited with {process.returncode}:\n{stderr[-3000:]}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def collect(self, ident: str, bound: int | None) -> tuple[list[dict[str, Any]], float | None]:
        """Every generator's `done`; on the way, stop the step once `bound` deliveries are late.

        Returns the replies and the (monotonic) time of the stop, None if the step ran out.
        """
        done: list[dict[str, Any] | None] = [None] * len(self.processes)
        late = [0] * len(self.processes)
        stopped_at = None
        while any(reply is None for reply in done):
            for index in range(len(self.processes)):
                if done[index] is not None:
                    continue
                reply = self.read_one(index)
                if reply.get("event") == "progress":
                    late[index] = reply["late"]
                elif reply.get("event") == "done":
                    done[index] = reply
                else:
                    raise RuntimeError(f"expected progress or done from a generator, got {reply}")
            if bound is not None and stopped_at is None and sum(late) >= bound:
                stopped_at = time.monotonic()
                self.send(f"stop {ident}", [index for index, reply in enumerate(done) if reply is None])
        return [reply for reply in done if reply is not None], stopped_at


def generator_commands(case: LatencyCase, args: argparse.Namespace, ports: list[int]) -> list[list[str]]:
    """benchmarks.steady: the publisher first, then --loadgens member processes sharing the
    members, pinned as run.py pins its generators. The publisher floats: it needs little CPU,
    but on time, wherever a core is free."""
    spare = list(range(1, run.cores()))  # core 0 runs the servers
    common = [sys.executable, "-m", "benchmarks.steady", "--clients", str(args.clients)]
    common += ["--size", str(args.size), "--idle", str(args.idle), "--protocol", case.protocol]
    common += ["--publish-url", f"ws://127.0.0.1:{ports[0]}{case.path}"]
    for port in ports:
        common += ["--url", f"ws://127.0.0.1:{port}{case.path}"]
    commands = [[*common, "--role", "publisher"]]
    for index in range(args.loadgens):
        commands.append([*common, "--role", "members", "--index", str(index), "--of", str(args.loadgens)])
    if spare and not args.float_loadgens:
        for index, command in enumerate(commands[1:]):
            command += ["--cpu", str(spare[index % len(spare)])]
    return commands


class Ladder:
    """One system kept up over its ladder: its servers, its generators, the steps it ran."""

    def __init__(
        self,
        case: LatencyCase,
        args: argparse.Namespace,
        redis_url: str | None,
        workdir: Path,
        seconds: float,
    ) -> None:
        self.case = case
        self.seconds = seconds
        self.args = args
        self.redis_url = redis_url
        self.workdir = workdir
        self.target_ms: float = args.latency_target_ms
        self.steps: list[dict[str, Any]] = []
        self.tracebacks = 0
        self.connect_s = 0.0
        self._stack = contextlib.ExitStack()
        self._count = 0
        self._open = False
        self._pids: list[int] = []
        self._generators: SteadyGenerators | None = None

    def __enter__(self) -> Ladder:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "server.log"
        self._open = True
        try:
            self._stack.callback(self._count_tracebacks, log)  # last: a traceback at shutdown counts
            running = self._stack.enter_context(run.servers(self.case, self.redis_url, log))
            ports = [port for port, _ in running]
            generators = SteadyGenerators(generator_commands(self.case, self.args, ports))
            self._stack.callback(generators.close)  # end of stdin: each generator closes and exits
            self._generators = generators
            ready = generators.read_all("ready")
        except BaseException:
            self.close()
            raise
        self.connect_s = max(reply["connect_s"] for reply in ready)
        self._pids = [pid for _, process in running for pid in run.process_tree(process.pid)]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._open:
            self._open = False
            self._stack.close()

    def _count_tracebacks(self, log: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tracebacks = log.read_text(errors="replace").count("Traceback (most recent call last)")

    @property
    def on_ladder(self) -> bool:
        return self._open

    def step(
        self, rate: int, seconds: float | None = None, may_stop: bool = True, counted: bool = True
    ) -> dict[str, Any]:
        """Run one rate for `seconds` (the ladder's by default), stopped as soon as its p99 is
        certain to reach the target if `may_stop`; kept in the ladder's steps if `counted`."""
        seconds = self.seconds if seconds is None else seconds
        generators = self._generators
        assert generators is not None and self._open
        members = self.args.clients
        per_s = rate / members
        messages = max(1, round(per_s * seconds))
        total = members * messages
        self._count += 1
        ident = str(self._count)
        files = [self.workdir / f"{ident}-{index}.bin" for index in range(len(generators.processes))]
        cpu_before, machine_before = run.cpu_seconds(self._pids), run.machine_busy_seconds()
        began = time.monotonic()
        t0 = began + LEAD
        target_s = self.target_ms / 1000
        for index, path in enumerate(files):
            generators.send(f"step {ident} {per_s:.9g} {messages} {t0:.6f} {target_s:.6f} {path}", [index])
        done, stopped_at = generators.collect(ident, late_bound(total) if may_stop else None)
        ended = time.monotonic()
        server_cpu = run.cpu_seconds(self._pids) - cpu_before
        machine = run.machine_busy_seconds() - machine_before
        latencies: array.array[float] = array.array("d")
        for path in files:
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as source:
                latencies.frombytes(source.read())
            path.unlink(missing_ok=True)
        received = sum(reply["received"] for reply in done)
        stopped = any(reply["stopped"] for reply in done)
        lost = None if stopped else total - received
        wall = max(ended - began, 1e-9)  # what the CPU figures were read over
        generators_cpu = sum(reply["cpu_s"] for reply in done)
        publisher, members_done = done[0], done[1:]  # the publisher's process comes first
        figures = latency_figures(sorted(latencies))
        del latencies
        result: dict[str, Any] = {
            "rate": rate,
            "messages_per_s": round(per_s, 3),
            "messages": messages,
            "sent": publisher["sent"],
            "deliveries": received,
            "expected": total,
            "lost": lost,
            "stopped_after_s": round(stopped_at - t0, 2) if stopped_at is not None and stopped else None,
            **figures,
            "ok": not stopped and lost == 0 and figures["p99_ms"] < self.target_ms,
            "publisher_lag_max_ms": publisher["lag_max_ms"],
            "publisher_lag_mean_ms": publisher["lag_mean_ms"],
            "server_cpu_share": round(server_cpu / wall, 3),
            "loadgen_cpu_share": round(max(reply["cpu_s"] for reply in members_done) / wall, 3),
            "publisher_cpu_share": round(publisher["cpu_s"] / wall, 3),
            "other_cpu_share": round(max(0.0, machine - server_cpu - generators_cpu) / wall, 3),
            "wall_s": round(wall, 2),
        }
        if counted:
            self.steps.append(result)
        return result

    def row(self) -> dict[str, Any]:
        failed = next((step for step in self.steps if not step["ok"]), None)
        return {
            "workload": self.case.workload,
            "system": self.case.label,
            "baseline": self.case.baseline,
            "ours": self.case.system.startswith("channels"),
            "ws": run.WS_NAMES.get(self.case.ws, self.case.ws),
            "members": self.args.clients,
            "seconds": self.seconds,
            "target_p99_ms": self.target_ms,
            "connect_s": self.connect_s,
            "sustained_rate": sustained_rate(self.steps),
            "failed_rate": failed["rate"] if failed else None,
            "failed_because": verdict(failed, self.target_ms) if failed else None,
            "server_tracebacks": self.tracebacks,
            "steps": self.steps,
        }


def selected(args: argparse.Namespace, name: str) -> list[LatencyCase]:
    """The cases of `name` that --systems, --no-peers and the installed packages leave."""
    return [case for case in cases(name) if run.chosen(args, case, name)]


def run_workloads(args: argparse.Namespace, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every selected system of each latency workload up its ladder; one row per system."""
    seconds = args.latency_seconds or (2.0 if args.quick else 20.0)
    rates: list[int] = args.latency_rates
    rows: list[dict[str, Any]] = []
    for name in names:
        chosen = selected(args, name)
        if not chosen:
            continue
        broker: contextlib.AbstractContextManager[str | None] = (
            run.redis_server() if WORKLOADS[name].backend == "redis" else contextlib.nullcontext()
        )
        with broker as redis_url, tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
            with contextlib.ExitStack() as stack:
                ladders = [
                    stack.enter_context(Ladder(case, args, redis_url, Path(tmp) / str(index), seconds))
                    for index, case in enumerate(chosen)
                ]
                for ladder in ladders:
                    ladder.step(rates[0], min(WARMUP_S, seconds), may_stop=False, counted=False)
                for index, rate in enumerate(rates):
                    alive = [ladder for ladder in ladders if ladder.on_ladder]
                    if not alive:
                        break
                    for ladder in alive if index % 2 == 0 else alive[::-1]:
                        step = climb(ladder, rate, args, first=index == 0)
                        if not step["ok"]:
                            ladder.close()  # off the ladder: free its core time and sockets now
            rows.extend(ladder.row() for ladder in ladders)
    return rows


def climb(ladder: Ladder, rate: int, args: argparse.Namespace, first: bool) -> dict[str, Any]:
    """One rung: the step, and once more if it failed (a neighbour's burst, not the system,
    may have failed it; the first attempt's figures are kept in the second's
    `first_attempt`). The first rate is never stopped early, so that every system has one
    complete row."""
    step = _attempt(ladder, rate, args, first, "")
    if step["ok"]:
        return step
    failed = ladder.steps.pop()
    step = _attempt(ladder, rate, args, first, " (again)")  # waiting for quiet lets a backlog drain
    step["first_attempt"] = {
        key: failed[key]
        for key in ("p50_ms", "p99_ms", "max_ms", "lost", "stopped_after_s", "other_cpu_share")
    }
    return step


def _attempt(ladder: Ladder, rate: int, args: argparse.Namespace, first: bool, note: str) -> dict[str, Any]:
    quiet = run.wait_for_quiet() if args.wait_quiet else None
    step = ladder.step(rate, may_stop=not first)
    step["busy_before_start"] = quiet
    print(f"  {ladder.case.workload:13} {ladder.case.label:34} {_line(step)}{note}", file=sys.stderr)
    return step


def _line(step: dict[str, Any]) -> str:
    outcome = "ok" if step["ok"] else "off the ladder"
    lost = "stopped" if step["lost"] is None else f"lost {step['lost']}"
    return (
        f"{step['rate']:>9,}/s  p50 {step['p50_ms']:>8} p99 {step['p99_ms']:>8} max {step['max_ms']:>8} ms"
        f"  {lost}  server CPU {step['server_cpu_share']:.0%}  {outcome}"
    )


# --- the report ------------------------------------------------------------------------------------
def _ratio(ours: float | None, theirs: float | None, lowest: int) -> str:
    """ours ÷ theirs; a system that sustains no rate of the ladder sustains less than the lowest."""
    if ours is None:
        return "—"
    if theirs is None:
        return f"> {ours / lowest:,.0f}x"
    return f"{ours / theirs:,.1f}x"


def _ms(step: dict[str, Any], key: str) -> str:
    """A latency figure; a dash when nothing arrived (a step stopped before the first delivery)."""
    return f"{step[key]:g}" if step["deliveries"] else "—"


def _cell(step: dict[str, Any] | None) -> str:
    if step is None:
        return ""
    if step["ok"]:
        return _ms(step, "p99_ms")
    return f"{_ms(step, 'p99_ms')} ✗" + (" (stopped)" if step["stopped_after_s"] is not None else "")


def render(rows: Sequence[dict[str, Any]]) -> str:
    """Per latency workload: the sustainable rates, p99 by rate side by side, every step in full."""
    sections = []
    for name, workload in WORKLOADS.items():
        mine = [row for row in rows if row.get("workload") == name]
        if not mine:
            continue
        first = mine[0]
        target = first["target_p99_ms"]
        all_rates = sorted({step["rate"] for row in mine for step in row["steps"]})
        lowest = all_rates[0] if all_rates else 1
        socketio = next((row for row in mine if row["system"].startswith("python-socketio")), None)
        base = next((row for row in mine if row["baseline"]), None)
        seconds = next((row["seconds"] for row in mine if row["seconds"]), 0)
        summary = _table(
            [
                "system",
                f"highest rate with p99 < {target:g} ms",
                "p99 there (ms)",
                "vs bare",
                "vs python-socketio",
                "left the ladder at",
                "because",
                "server tracebacks",
            ],
            [
                [
                    row["system"],
                    f"{row['sustained_rate']:,}/s" if row["sustained_rate"] else "none",
                    next((s["p99_ms"] for s in row["steps"] if s["rate"] == row["sustained_rate"]), "—"),
                    _ratio(row["sustained_rate"], base["sustained_rate"], lowest) if base else "—",
                    _ratio(row["sustained_rate"], socketio["sustained_rate"], lowest) if socketio else "—",
                    f"{row['failed_rate']:,}/s" if row["failed_rate"] else "(top of the ladder)",
                    row["failed_because"] or "",
                    row["server_tracebacks"],
                ]
                for row in mine
            ],
        )
        ours = [row for row in mine if row["ours"]]
        by_rate = _table(
            [
                "deliveries/s",
                "messages/s",
                *(row["system"] for row in mine),
                *(f"{row['ws']} ÷ bare" for row in ours if base),
            ],
            [
                [
                    f"{rate:,}",
                    f"{rate / first['members']:g}",
                    *(_cell(_at(row, rate)) for row in mine),
                    *(_p99_ratio(_at(row, rate), _at(base, rate)) for row in ours if base),
                ]
                for rate in all_rates
            ],
        )
        details = _table(
            [
                "system",
                "deliveries/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "lost",
                "server CPU",
                "loadgen CPU",
                "other CPU",
                "publisher lag max ms",
            ],
            [
                [
                    row["system"],
                    f"{step['rate']:,}",
                    *(_ms(step, key) for key in ("p50_ms", "p99_ms", "p999_ms", "max_ms")),
                    step["lost"]
                    if step["lost"] is not None
                    else f"stopped after {step['stopped_after_s']:g} s",
                    f"{step['server_cpu_share']:.0%}",
                    f"{step['loadgen_cpu_share']:.0%}",
                    f"{step['other_cpu_share']:.0%}",
                    step["publisher_lag_max_ms"],
                ]
                for row in mine
                for step in row["steps"]
            ],
        )
        sections.append(
            f"### {workload.title} ({first['members']:,} members, {seconds:g} s per rate)\n\n{summary}\n\n"
            f"p99 ms by rate (✗: the step that took the system off the ladder; empty: not run; "
            f"the ratios only where both sustain the rate):\n\n{by_rate}\n\nEvery step:\n\n{details}"
        )
    return "\n\n".join(sections)


def _at(row: dict[str, Any] | None, rate: int) -> dict[str, Any] | None:
    if row is None:
        return None
    return next((step for step in row["steps"] if step["rate"] == rate), None)


def _p99_ratio(ours: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    if ours is None or base is None or not (ours["ok"] and base["ok"]) or not base["p99_ms"]:
        return ""
    return f"{ours['p99_ms'] / base['p99_ms']:.2f}"


def _table(header: Sequence[str], lines: Sequence[Sequence[object]]) -> str:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    out.extend("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)
    return "\n".join(out)


def charts(rows: Sequence[dict[str, Any]], directory: Path) -> list[Path]:
    """One PNG per latency workload: p99 against the rate per system, the target as a line."""
    if not any(row.get("workload") in WORKLOADS and row["steps"] for row in rows):
        return []  # no latency rows: leave matplotlib unimported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, workload in WORKLOADS.items():
        mine = [row for row in rows if row.get("workload") == name and row["steps"]]
        if not mine:
            continue
        figure, axes = plt.subplots(figsize=(9, 5))
        for row in mine:
            steps = row["steps"]
            rates = [step["rate"] for step in steps]
            p99s = [max(step["p99_ms"], 0.01) for step in steps]  # a log axis has no zero
            style = "-" if row["ours"] else "--"
            (line,) = axes.plot(rates, p99s, style, marker="o", label=row["system"])
            failed = [(r, p) for r, p, step in zip(rates, p99s, steps, strict=True) if not step["ok"]]
            if failed:
                axes.plot(*zip(*failed, strict=True), "x", color=line.get_color(), markersize=12)
        target = mine[0]["target_p99_ms"]
        axes.axhline(target, color="#cc0000", linewidth=1, linestyle=":", label=f"target: p99 {target:g} ms")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("deliveries/s (log scale)")
        axes.set_ylabel("p99 latency, ms (log scale)")
        axes.set_title(f"{workload.title}\n(x: the rate that took a system off the ladder)")
        axes.legend(fontsize=8)
        axes.grid(True, which="major", alpha=0.3)
        figure.tight_layout()
        path = directory / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
