"""The benchmark harness runs end to end at a tiny size, so it cannot rot. No timing asserted."""

from __future__ import annotations

from benchmarks import run


def test_every_system_of_both_workloads_delivers_everything_at_a_tiny_size() -> None:
    rows = run.main(["--workload", "fanout,cross", "--clients", "6", "--messages", "5", "--rounds", "1"])
    systems = {(row["workload"], row["system"]) for row in rows}
    expected = {(case.workload, case.label) for name in ("fanout", "cross") for case in run.CASES[name]}
    expected = {(workload, label) for workload, label in expected if "legacy" not in label}
    assert systems == expected
    for row in rows:
        assert row["lost"] == 0, row
        assert row["deliveries_per_s"] > 0
        assert row["rounds"] == 1
    assert all(row["ratio_to_bare"] is not None for row in rows)
