"""The steady-rate latency workload runs end to end at a tiny size, so it cannot rot.

No timing is asserted: the end-to-end run sets a target no machine misses (60 s), and the
early stop is driven by a target every delivery misses (1 µs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import latency, report, run
from benchmarks.steady import Step, tag, this_step

SYSTEMS = "channels/memory [fastpath],bare [sansio]"


def test_the_ladder_measures_every_rate_of_every_system_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    rows = run.main(
        [
            *["--workload", "latency", "--clients", "20", "--systems", SYSTEMS, "--no-wait-quiet"],
            *["--latency-rates", "100,200", "--latency-seconds", "1", "--latency-target-ms", "60000"],
            *["--json", str(out), "--charts", str(tmp_path / "charts")],
        ]
    )
    assert {row["system"] for row in rows} == {"channels/memory [fastpath]", "bare [sansio]"}
    for row in rows:
        assert row["workload"] == "latency" and row["members"] == 20 and row["server_tracebacks"] == 0
        assert [step["rate"] for step in row["steps"]] == [100, 200]
        for step, messages in zip(row["steps"], (5, 10), strict=True):  # rate / members x 1 s
            assert step["messages"] == step["sent"] == messages
            assert step["deliveries"] == step["expected"] == 20 * messages and step["lost"] == 0
            assert step["stopped_after_s"] is None and step["ok"]
            assert 0 < step["p50_ms"] <= step["p99_ms"] <= step["p999_ms"] <= step["max_ms"]
        assert row["sustained_rate"] == 200 and row["failed_rate"] is None
    assert (tmp_path / "charts" / "latency.png").exists()
    assert json.loads(out.read_text())["summary"] == rows
    text = latency.render(rows)
    assert text.count("### ") == 1 and "| bare [sansio] | 200/s |" in text


def test_a_step_sure_to_miss_its_target_stops_is_tried_twice_and_its_stragglers_skip_the_next(
    tmp_path: Path,
) -> None:
    case = next(case for case in latency.cases("latency") if case.label == "channels/memory [fastpath]")
    args = argparse.Namespace(
        clients=20, size=100, idle=3.0, loadgens=1, float_loadgens=False, latency_target_ms=0.001
    )
    args.wait_quiet = False
    with latency.Ladder(case, args, None, tmp_path, seconds=5.0) as ladder:
        # 20 messages/s for 5 s; every delivery takes more than 1 µs: stopped, tried again, stopped
        stopped = latency.climb(ladder, 400, args, first=False)
        assert stopped["stopped_after_s"] is not None
        assert stopped["first_attempt"]["stopped_after_s"] is not None
        assert stopped["lost"] is None and not stopped["ok"] and stopped["sent"] < 100
        assert ladder.steps == [stopped]
        ladder.target_ms = 60_000
        clean = ladder.step(200, seconds=1.0)
        assert clean["deliveries"] == clean["expected"] == 200 and clean["lost"] == 0 and clean["ok"]
    row = ladder.row()
    assert row["sustained_rate"] is None and row["failed_rate"] == 400
    assert row["failed_because"].startswith("stopped after")


def test_the_stop_bound_is_exactly_where_the_p99_reaches_the_target() -> None:
    for total in range(1, 400):
        bound = latency.late_bound(total)
        for late in (bound - 1, bound):
            samples = sorted([0.001] * (total - late) + [1.0] * late)
            reaches = report.percentiles(samples)["p99_ms"] >= 1000
            assert reaches == (late >= bound), (total, late)


def test_the_sustained_rate_is_the_last_before_the_first_failure() -> None:
    steps = [{"rate": 1000, "ok": True}, {"rate": 2000, "ok": True}, {"rate": 5000, "ok": False}]
    assert latency.sustained_rate(steps) == 2000
    assert latency.sustained_rate(steps[:2]) == 2000
    assert latency.sustained_rate(steps[2:]) is None
    assert latency.sustained_rate([]) is None


def test_rates_read_with_k_and_m_and_must_increase() -> None:
    assert latency.parse_rates("1k,2.5k,10000,1m") == [1000, 2500, 10000, 1_000_000]
    for bad in ("2k,1k", "1k,1k", "0,1k", "fast"):
        with pytest.raises(argparse.ArgumentTypeError):
            latency.parse_rates(bad)


def test_a_step_counts_what_is_due_and_only_its_own_deliveries() -> None:
    step = Step("3", rate=10.0, messages=5, t0=100.0, target=0.05, latency_file="unused")
    assert [step.due_by(moment) for moment in (99.9, 100.0, 100.15, 100.4, 200.0)] == [0, 1, 2, 5, 5]
    seen: list[bytes] = []
    count = this_step(tag("3"), seen.append)
    for payload in (b"0000000000100.000000~s3~xx", b"0000000000100.000000~s2~xx", b"2", b"~s33~"):
        count(payload)
    assert seen == [b"0000000000100.000000~s3~xx", b"2"]  # this step's, and a ping
