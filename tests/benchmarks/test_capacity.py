"""The capacity study (W4) runs end to end at tiny sizes, so it cannot rot.

Behaviour only, never timing: every join registered, every broadcast reached every
connection, the vanished clients were unregistered to the exact count and nothing else
was, and each figure is present and sane. About 20 s: two sizes x two systems x two
server runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from benchmarks import capacity, report, run

SYSTEMS = ("bare [sansio]", "channels/memory [fastpath]")
TINY = ["--workload", "capacity", "--capacity-sizes", "40,80", "--capacity-settle", "0"]
TINY += ["--capacity-idle", "1"]
TINY += ["--capacity-vanish", "20", "--capacity-broadcasts", "3", "--capacity-spacing", "0.1"]
TINY += ["--capacity-hb-interval", "0.3", "--capacity-hb-timeout", "1", "--capacity-per-loadgen", "50"]
TINY += ["--systems", ",".join(SYSTEMS), "--no-wait-quiet"]


def test_the_capacity_study_measures_every_phase_at_tiny_sizes(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    rows = run.main([*TINY, "--json", str(out), "--charts", str(tmp_path / "charts")])
    assert [(row["connections"], row["system"]) for row in rows] == [
        (size, system) for size in (40, 80) for system in SYSTEMS
    ]
    settings = argparse.Namespace(capacity_groups=1000, capacity_big_percent=3)
    for row in rows:
        size = row["connections"]
        everyone = capacity.held([capacity.Share(0, size)], settings)
        assert everyone == {"connections": size, "memberships": size + 3, "groups": size + 1}
        # 80 members over generators of at most 50: two processes, in lock step.
        assert row["loadgens"] == (1 if size == 40 else 2)
        assert row["registered"] == row["expected"] == everyone
        assert row["connected"] == size and row["connect_failed"] == 0 and row["connect_error"] is None
        assert row["memberships_joined"] == everyone["memberships"]
        assert row["connect_per_s"] > 0 and row["connect_s"] > 0
        assert row["rss_connected_mib"] > row["rss_before_mib"] > 0
        assert row["rss_per_connection_kib"] > 0
        assert len(row["kernel_kib_per_connection"]) in (0, 2)  # [] where /proc/slabinfo is hidden
        assert row["idle_window_s"] >= 1 and 0 <= row["idle_cpu_percent"] <= 100
        # Every broadcast reached every connection, nothing else arrived.
        assert row["broadcasts"] == 3 and len(row["broadcast_ms"]) == 3
        assert row["broadcast_lost"] == 0 and row["unexpected_frames"] == 0
        assert all(ms > 0 for ms in row["broadcast_ms"])
        assert 0 < row["broadcast_p50_ms"] <= row["broadcast_p99_ms"] == max(row["broadcast_ms"])
        assert row["broadcast_server_cpu_ms"] >= 0 and row["broadcast_loadgen_cpu_share"] >= 0
        # 20 clients stopped: the server holds exactly what the other members hold, and still does.
        left = capacity.held([capacity.Share(20, size - 20)], settings)
        assert row["cleanup_vanished"] == 20
        assert row["cleanup_before"] == everyone
        assert row["cleanup_s"] is not None and row["cleanup_s"] > 0
        assert row["cleanup_trace"][0] == [0.0, size] and row["cleanup_trace"][-1][1] == size - 20
        assert row["cleanup_connect_failed"] == 0
        assert row["cleanup_expected"] == row["cleanup_after"] == left and row["cleanup_stable"]
        assert row["server_tracebacks"] == row["cleanup_tracebacks"] == 0
        if row["system"].startswith("channels"):
            assert row["cleanup_server_closed"] == 20  # the library's heartbeat closed them all
            assert row["idle_heartbeat_pings"] >= 0  # counted by fastapi-channels only
            assert row["cleanup_by"] == "WS_HEARTBEAT_INTERVAL=0.3 WS_HEARTBEAT_TIMEOUT=1"
        else:
            assert row["rss_ratio_to_bare"] == 1.0
            assert row["idle_heartbeat_pings"] is None
            assert row["cleanup_by"] == "uvicorn --ws-ping-interval 0.3 --ws-ping-timeout 0.7"
    saved = json.loads(out.read_text())
    assert saved["summary"] == rows
    tables = report.render(saved["summary"], run.WORKLOADS)
    assert tables.count("### W4 capacity: ") == 2 and "(as expected)" in tables
    assert [path.name for path in (tmp_path / "charts").iterdir()] == ["capacity_curve.png"]


def test_members_are_split_evenly_over_as_few_generators_as_the_file_limit_allows() -> None:
    share = capacity.Share
    assert capacity.split(19000, 9500) == [share(0, 9500), share(9500, 9500)]
    assert capacity.split(14000, 9500, first=5000) == [share(5000, 7000), share(12000, 7000)]
    assert capacity.split(10001, 9500) == [share(0, 5001), share(5001, 5000)]
    assert capacity.split(0, 9500) == []


def test_the_asgi_path_and_python_socketio_serve_the_capacity_protocol() -> None:
    """The study's other two systems at one tiny size: joins, the broadcast, the cleanup."""
    peer = [] if importlib.util.find_spec("socketio") is None else ["python-socketio/memory [sansio]"]
    systems = ["channels/memory [sansio]", *peer]
    tiny = ["--workload", "capacity", "--capacity-sizes", "10", "--capacity-settle", "0"]
    tiny += ["--capacity-idle", "0.2"]
    tiny += ["--capacity-broadcasts", "1", "--capacity-vanish", "4", "--capacity-hb-interval", "0.3"]
    tiny += ["--capacity-hb-timeout", "1", "--systems", ",".join(systems), "--no-wait-quiet"]
    rows = run.main(tiny)
    assert [row["system"] for row in rows] == systems
    settings = argparse.Namespace(capacity_groups=1000, capacity_big_percent=3)
    for row in rows:
        assert row["registered"] == capacity.held([capacity.Share(0, 10)], settings), row
        assert row["broadcast_lost"] == row["unexpected_frames"] == 0 and row["broadcasts"] == 1
        left = capacity.held([capacity.Share(4, 6)], settings)
        assert row["cleanup_after"] == left and row["cleanup_stable"] and row["cleanup_s"] is not None
        assert row["server_tracebacks"] == row["cleanup_tracebacks"] == 0
    if peer:
        assert rows[1]["cleanup_by"] == "Engine.IO ping_interval=0.3 ping_timeout=0.7"
