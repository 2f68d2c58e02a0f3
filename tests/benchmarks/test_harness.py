"""The benchmark harness runs end to end at a tiny size, so it cannot rot. No timing asserted."""

from __future__ import annotations

from benchmarks import run


def test_every_system_of_both_workloads_delivers_everything_at_a_tiny_size() -> None:
    rows = run.main(["--workload", "fanout,cross", "--clients", "6", "--messages", "5", "--rounds", "1"])
    systems = {(row["workload"], row["system"]) for row in rows}
    # Peers (the optional `bench` extra) take part when their packages are importable.
    expected = {
        (case.workload, case.label)
        for name in ("fanout", "cross")
        for case in run.CASES[name]
        if not case.missing
    }
    expected = {(workload, label) for workload, label in expected if "legacy" not in label}
    assert systems == expected
    for row in rows:
        assert row["lost"] == 0, row
        assert row["deliveries_per_s"] > 0
        assert row["rounds"] == 1
    assert all(row["ratio_to_bare"] is not None for row in rows)


def test_a_peer_whose_package_is_missing_is_skipped_unless_peers_are_required() -> None:
    import dataclasses

    import pytest

    ghost = dataclasses.replace(run.CASES["fanout"][0], system="ghost", requires=("no_such_module_x",))
    assert ghost.peer and ghost.missing == ["no_such_module_x"]
    original = run.CASES["fanout"]
    run.CASES["fanout"] = [ghost]
    try:
        with pytest.raises(SystemExit, match="no_such_module_x"):
            run.main(
                [
                    "--workload",
                    "fanout",
                    "--clients",
                    "2",
                    "--messages",
                    "1",
                    "--rounds",
                    "1",
                    "--require-peers",
                ]
            )
        assert run.main(["--workload", "fanout", "--clients", "2", "--messages", "1", "--rounds", "1"]) == []
    finally:
        run.CASES["fanout"] = original
