"""The fan-out cost benchmark runs at tiny sizes, so it cannot rot. No timing is asserted:
what it checks is that every connection got every frame in exactly one write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import fanout_cost
from fastapi_channels.connection import WriteCoalescer


@pytest.mark.parametrize("path", ["fast", "asgi"])
def test_every_size_writes_every_connection_once_per_round(tmp_path: Path, path: str) -> None:
    out = tmp_path / "cost.json"
    rows = fanout_cost.main(["--sizes", "3,50", "--rounds", "2", "--path", path, "--json", str(out)])
    assert [row["connections"] for row in rows] == [3, 50]
    for row in rows:
        assert row["rounds"] == 2 and row["path"] == path
        assert row["loop_iterations"] == -(-row["connections"] // WriteCoalescer.slice_size)
        assert row["total_us_per_connection"] > 0
        assert row["fan_out_ms"] > 0
    assert json.loads(out.read_text())["rows"] == rows


@pytest.mark.parametrize("path", ["fast", "asgi"])
def test_a_frame_not_written_fails_the_run(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    from fastapi_channels.connection import Connection

    real_enqueue = Connection.enqueue

    def lose_one(self: Connection, frame: str | bytes, wire: bytes | None = None) -> bool:
        if self.channel_name == "bench!c1":
            return False  # a connection that never gets the frame
        return real_enqueue(self, frame, wire)

    monkeypatch.setattr(Connection, "enqueue", lose_one)
    with pytest.raises(AssertionError, match="5 connections x 1 rounds: 4 frames"):
        fanout_cost.main(["--sizes", "5", "--rounds", "1", "--path", path])
