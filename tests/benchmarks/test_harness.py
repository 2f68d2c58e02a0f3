"""The benchmark harness runs end to end at a tiny size, so it cannot rot. No timing asserted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks import report, run

TINY = ["--clients", "6", "--messages", "5", "--large-clients", "8"]
TINY += ["--large-messages", "4", "--room-messages", "3", "--rounds", "1", "--no-wait-quiet"]
# W4 (capacity) is a study over sizes, two server runs per system: tests/benchmarks/test_capacity.py.
ROUNDS = [name for name in run.WORKLOADS if name != "capacity"]


def test_every_system_of_every_workload_delivers_everything_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    charts = tmp_path / "charts"
    every = ["--workload", ",".join(ROUNDS), "--loadgens", "2"]
    rows = run.main([*TINY, *every, "--json", str(out), "--charts", str(charts)])
    # Peers and granian (the optional `bench` extra) take part when their packages are importable.
    expected = {
        (case.workload, case.label)
        for workload in ROUNDS
        for case in run.CASES[workload]
        if not case.missing and case.ws != "websockets"
    }
    assert {(row["workload"], row["system"]) for row in rows} == expected
    for row in rows:
        assert row["lost"] == 0, row
        assert row["rounds"] == 1
        assert row["deliveries_per_s"] > 0
        assert row["ratio_to_bare"] is not None
    for row in rows:  # the Redis workloads read Redis's own counters: one PUBLISH per group send
        if row["workload"] in ("cross", "large") and row["system"].startswith(("channels", "bare")):
            assert row["redis_publish_per_send"] == 1.0, row
        if "-cluster" in row["system"]:  # three shards; the one with our slot carries the sends
            busiest, *others = row["redis_commands_per_send_by_shard"]
            assert len(others) == 2 and busiest >= 1, row
    assert sorted(path.name for path in charts.iterdir()) == sorted(f"{name}.png" for name in ROUNDS)
    saved = json.loads(out.read_text())
    assert saved["summary"] == rows
    assert report.render(saved["summary"], run.WORKLOADS).count("### ") == len(ROUNDS)


def test_the_profile_of_a_run_names_the_hot_functions(tmp_path: Path) -> None:
    rows = run.main(
        [*TINY, "--workload", "fanout", "--systems", "channels/memory [fastpath]", "--profile", str(tmp_path)]
    )
    assert [row["system"] for row in rows] == ["channels/memory [fastpath]"]
    assert [path.name for path in tmp_path.iterdir()] == ["fanout-channels-fastpath.txt"]


def test_top_of_profile_adds_self_and_total_samples_per_function() -> None:
    collapsed = "\n".join(
        [
            "main (/x/app.py:1);send (/venv/lib/python3.11/site-packages/uvicorn/ws.py:5) 3",
            "main (/x/app.py:1);send (/venv/lib/python3.11/site-packages/uvicorn/ws.py:9) 1",
            "main (/x/app.py:2) 4",
        ]
    )
    top = report.top_of_profile(collapsed).splitlines()
    assert top[0].startswith("8 samples")
    assert " 50.0%  50.0%  send (uvicorn/ws.py)" in top
    assert " 50.0% 100.0%  main (/x/app.py)" in top


def test_a_peer_whose_package_is_missing_is_skipped_unless_peers_are_required() -> None:
    ghost = dataclasses.replace(
        run.CASES["fanout"][0],
        system="ghost",
        app="benchmarks.peers.ghost:app",
        requires=("no_such_module_x",),
    )
    assert ghost.peer and ghost.missing == ["no_such_module_x"]
    original = run.CASES["fanout"]
    run.CASES["fanout"] = [ghost]
    try:
        with pytest.raises(SystemExit, match="no_such_module_x"):
            run.main([*TINY, "--workload", "fanout", "--require-peers"])
        assert run.main([*TINY, "--workload", "fanout"]) == []
    finally:
        run.CASES["fanout"] = original


def test_the_history_memory_figure_is_measured() -> None:
    """benchmarks.history_memory runs end to end at a tiny size (no figure is asserted)."""
    import asyncio

    from benchmarks.history_memory import measure
    from benchmarks.run import redis_server

    with redis_server() as url:
        _, frame, stored = asyncio.run(measure(url, 50, "x" * 10))
    assert stored == 51 and frame > 10  # every send was stored and numbered
