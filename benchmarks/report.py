"""Turning runs into the report: medians and spreads, Markdown tables, charts, profile tops.

Pure functions over the runs' dictionaries, so the report can be rebuilt from a saved
`--json` file (`python -m benchmarks.report results.json --charts docs/benchmarks`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol


class CaseLike(Protocol):
    @property
    def workload(self) -> str: ...
    @property
    def baseline(self) -> bool: ...
    @property
    def label(self) -> str: ...


class WorkloadLike(Protocol):
    @property
    def title(self) -> str: ...


def percentiles(ordered: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds of sorted latencies in seconds."""

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2) if ordered else 0.0

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": at(1.0)}


def _ratio(value: float, base: float | None) -> float | None:
    return round(value / base, 2) if base else None


def summarise(runs: Iterable[tuple[CaseLike, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per case: medians over its rounds, the spread, and ratios to the workload's baseline."""
    runs = list(runs)
    baselines = {case.workload: case_runs for case, case_runs in runs if case.baseline}
    rows = []
    for case, case_runs in runs:
        base = baselines.get(case.workload)

        def median(key: str, of: list[dict[str, Any]] = case_runs) -> float:
            return round(float(statistics.median(run.get(key, 0) for run in of)), 3)

        rates = [run["deliveries_per_s"] for run in case_runs]
        rss = [run["rss_per_connection_kib"] for run in case_runs]
        row: dict[str, Any] = {
            "workload": case.workload,
            "system": case.label,
            "baseline": case.baseline,
            "rounds": len(case_runs),
            "deliveries_per_s": median("deliveries_per_s"),
            "min": min(rates),
            "max": max(rates),
            "p50_ms": median("p50_ms"),
            "p99_ms": median("p99_ms"),
            "max_ms": max(run["max_ms"] for run in case_runs),
            "lost": sum(run["lost"] for run in case_runs),
            "server_cpu_s_per_100k": median("server_cpu_s_per_100k"),
            "loadgen_cpu_share": median("loadgen_cpu_share"),
            "other_cpu_share": max(run.get("other_cpu_share", 0.0) for run in case_runs),
            "server_tracebacks": sum(run.get("server_tracebacks", 0) for run in case_runs),
            "connections": case_runs[0]["connections"],
            "connect_per_s": median("connect_per_s"),
            "rss_per_connection_kib": median("rss_per_connection_kib"),
            "rss_min": min(rss),
            "rss_max": max(rss),
            "ratio_to_bare": _ratio(
                median("deliveries_per_s"), median("deliveries_per_s", base) if base else None
            ),
            "cpu_ratio_to_bare": _ratio(
                median("server_cpu_s_per_100k"), median("server_cpu_s_per_100k", base) if base else None
            ),
            "rss_ratio_to_bare": _ratio(
                median("rss_per_connection_kib"), median("rss_per_connection_kib", base) if base else None
            ),
        }
        if "redis_commands_per_send" in case_runs[0]:
            row["redis_commands_per_send"] = median("redis_commands_per_send")
            row["redis_publish_per_send"] = median("redis_publish_per_send")
        if "redis_commands_per_send_by_shard" in case_runs[0]:  # a cluster: each shard's median
            by_shard = [run["redis_commands_per_send_by_shard"] for run in case_runs]
            row["redis_commands_per_send_by_shard"] = [
                statistics.median(values) for values in zip(*by_shard, strict=True)
            ]
        rows.append(row)
    return rows


def _table(header: Sequence[str], lines: Sequence[Sequence[object]]) -> str:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]
    out.extend("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)
    return "\n".join(out)


def render(rows: Sequence[dict[str, Any]], workloads: Mapping[str, WorkloadLike]) -> str:
    """A Markdown table per workload, with the columns that workload measures."""
    sections = []
    for name, workload in workloads.items():
        mine = [row for row in rows if row["workload"] == name]
        if not mine:
            continue
        if is_capacity_study(mine):  # a study over sizes: its own tables
            sections.append(render_capacity(mine))
            continue
        redis = "redis_commands_per_send" in mine[0]
        header = [
            "system",
            "deliveries/s (median)",
            "spread",
            "p50 ms",
            "p99 ms",
            "max ms",
            "lost",
            "server CPU s/100k",
            "vs bare (rate)",
            "vs bare (CPU)",
            "loadgen CPU",
            "other CPU",
            *(["Redis cmds/send", "PUBLISH/send", "cmds/send by shard"] if redis else []),
        ]
        lines = [
            [
                r["system"],
                f"{r['deliveries_per_s']:,.0f}",
                f"{r['min']:,} to {r['max']:,}",
                r["p50_ms"],
                r["p99_ms"],
                r["max_ms"],
                r["lost"],
                r["server_cpu_s_per_100k"],
                r["ratio_to_bare"],
                r["cpu_ratio_to_bare"],
                f"{r['loadgen_cpu_share']:.0%}",
                f"{r['other_cpu_share']:.0%}",
                *(
                    [
                        r.get("redis_commands_per_send"),
                        r.get("redis_publish_per_send"),
                        " / ".join(str(v) for v in r.get("redis_commands_per_send_by_shard", ["one Redis"])),
                    ]
                    if redis
                    else []
                ),
            ]
            for r in mine
        ]
        sections.append(f"### {workload.title}\n\n{_table(header, lines)}")
    return "\n\n".join(sections)


def _left(row: dict[str, Any]) -> str:
    """What the server held after the cleanup: connections / memberships / groups, and a verdict."""
    after, expected = row["cleanup_after"], row["cleanup_expected"]
    figures = " / ".join(f"{after[key]:,}" if after[key] is not None else "?" for key in expected)
    return f"{figures} ({'as expected' if row['cleanup_stable'] else 'expected ' + str(expected)})"


def _connects(row: dict[str, Any]) -> str:
    failed = row["connect_failed"]
    return f"{row['connect_per_s']:,}" + (f" ({failed:,} failed)" if failed else "")


def _idle(row: dict[str, Any]) -> str:
    """Idle CPU, and for fastapi-channels the heartbeat pings it sent in the window."""
    pings = row["idle_heartbeat_pings"]
    return f"{row['idle_cpu_percent']}" + (f" ({pings:,} heartbeat pings)" if pings is not None else "")


def is_capacity_study(rows: Sequence[dict[str, Any]]) -> bool:
    """Rows of the capacity study (issue 17), not the W4 rounds of a run made before it."""
    return "idle_cpu_percent" in rows[0]


def render_capacity(rows: Sequence[dict[str, Any]]) -> str:
    """W4: one Markdown table per size, and the cleanup settings of each system under it."""
    sections = []
    for size in sorted({row["connections"] for row in rows}):
        mine = [row for row in rows if row["connections"] == size]
        vanished = mine[0]["cleanup_vanished"]
        header = [
            "system",
            "connects/s",
            "RSS KiB/conn",
            "vs bare (RSS)",
            "idle CPU % of a core",
            "broadcast p50 ms",
            "broadcast p99 ms",
            "lost",
            "server CPU ms/broadcast",
            "loadgen CPU (broadcast)",
            f"cleanup s ({vanished:,} vanish)",
            "left: conns / memberships / groups",
            "other CPU (idle)",
            "run s",
        ]
        lines = [
            [
                r["system"],
                _connects(r),
                r["rss_per_connection_kib"],
                r["rss_ratio_to_bare"],
                _idle(r),
                r["broadcast_p50_ms"],
                r["broadcast_p99_ms"],
                r["broadcast_lost"],
                r["broadcast_server_cpu_ms"],
                f"{r['broadcast_loadgen_cpu_share']:.0%}",
                "not reached" if r["cleanup_s"] is None else r["cleanup_s"],
                _left(r),
                f"{r['idle_other_cpu_percent']}%",
                r["run_s"],
            ]
            for r in mine
        ]
        settings = "; ".join(f"{r['system']}: {r['cleanup_by']}" for r in mine)
        loadgens = mine[0]["loadgens"]
        processes = f"{loadgens} generator process{'es' if loadgens != 1 else ''}"
        title = f"### W4 capacity: {size:,} connections on one server ({processes})"
        sections.append(f"{title}\n\n{_table(header, lines)}\n\nCleanup settings: {settings}.")
    return "\n\n".join(sections)


def capacity_chart(rows: Sequence[dict[str, Any]], directory: Path) -> Path:
    """W4: RSS per connection, idle CPU and broadcast time against the number of connections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    panels = [
        ("rss_per_connection_kib", "server RSS per connection, KiB"),
        ("idle_cpu_percent", "idle server CPU, % of a core"),
        ("broadcast_p50_ms", "broadcast to all, p50 ms"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(14, 4.2))
    systems = list(dict.fromkeys(row["system"] for row in rows))
    for axis, (key, label) in zip(axes, panels, strict=True):
        for system in systems:
            mine = sorted(
                (row for row in rows if row["system"] == system), key=lambda row: row["connections"]
            )
            axis.plot(
                [row["connections"] for row in mine], [row[key] for row in mine], marker="o", label=system
            )
        axis.set_xlabel("connections to one server process")
        axis.set_title(label, fontsize=10)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("W4 capacity (lower is better)")
    figure.tight_layout()
    path = directory / "capacity_curve.png"  # capacity.png: the W4 bars of runs before the study
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def charts(
    rows: Sequence[dict[str, Any]], workloads: Mapping[str, WorkloadLike], directory: Path
) -> list[Path]:
    """One PNG per workload: medians as bars, the spread over rounds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, workload in workloads.items():
        mine = [row for row in rows if row["workload"] == name]
        if not mine:
            continue
        if is_capacity_study(mine):
            written.append(capacity_chart(mine, directory))
            continue
        key, low, high = "deliveries_per_s", "min", "max"
        values = [row[key] for row in mine]
        errors = [
            [v - row[low] for v, row in zip(values, mine, strict=True)],
            [row[high] - v for v, row in zip(values, mine, strict=True)],
        ]
        figure, axes = plt.subplots(figsize=(9, 0.5 * len(mine) + 1.5))
        colours = [
            "#4c72b0" if "channels/" in row["system"] and "django" not in row["system"] else "#999999"
            for row in mine
        ]
        axes.barh([row["system"] for row in mine], values, xerr=errors, color=colours, capsize=3)
        axes.invert_yaxis()
        axes.set_xlabel("deliveries/s (higher is better)")
        axes.set_title(f"{workload.title} (median of {mine[0]['rounds']} rounds, bars: spread)")
        if min(values) > 0 and max(values) / min(values) > 50:
            axes.set_xscale("log")  # one system 100x another: a linear axis hides the slow ones
            axes.set_xlabel(f"{axes.get_xlabel()}, log scale")
        for index, (value, row) in enumerate(zip(values, mine, strict=True)):
            axes.annotate(
                f"{value:,.0f}",
                (row[high], index),  # past the spread's bar, not on it
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        if axes.get_xscale() == "linear":
            axes.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        axes.set_xlim(right=axes.get_xlim()[1] * (3 if axes.get_xscale() == "log" else 1.12))
        figure.tight_layout()
        path = directory / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


_LINE = re.compile(r" \(([^)]*?):\d+\)$")


def _function(frame: str) -> str:
    """`send (…/site-packages/uvicorn/protocols/x.py:12)` -> `send (uvicorn/protocols/x.py)`."""
    match = _LINE.search(frame)
    if not match:
        return frame
    path = match.group(1)
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    path = path.split("/work/main/", 1)[-1]
    return f"{frame[: match.start()]} ({path})"


def top_of_profile(collapsed: str, count: int = 15) -> str:
    """The functions with the most samples on the stack (total) and on top of it (self)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        hits = int(number)
        frames = [_function(frame) for frame in stack.split(";")]
        samples += hits
        own[frames[-1]] += hits
        for function in set(frames):
            total[function] += hits
    if not samples:
        return "(no samples)"
    lines = [f"{samples} samples; self% total%  function"]
    for function, hits in own.most_common(count):
        lines.append(f"{hits / samples:6.1%} {total[function] / samples:6.1%}  {function}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from benchmarks.run import WORKLOADS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("results", type=Path, help="a file written by `benchmarks.run --json`")
    parser.add_argument("--charts", type=Path)
    args = parser.parse_args(argv)
    from benchmarks import latency

    saved = json.loads(args.results.read_text())
    print(render(saved["summary"], WORKLOADS))
    if any(row.get("workload") in latency.WORKLOADS for row in saved["summary"]):
        print(latency.render(saved["summary"]))
    if args.charts:
        for path in [
            *charts(saved["summary"], WORKLOADS, args.charts),
            *latency.charts(saved["summary"], args.charts),
        ]:
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
