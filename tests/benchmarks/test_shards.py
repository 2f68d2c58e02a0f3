"""The publish-only run over a cluster's shards works end to end at a tiny size.

No timing is asserted: the run is checked for where its publishes went. With one partition
every SPUBLISH is on one master; with three, every master takes a share.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import shards


def test_publishes_go_to_one_shard_with_one_partition_and_to_every_shard_with_three(tmp_path: Path) -> None:
    out = tmp_path / "shards.json"
    rows = shards.main(
        [
            *["--groups", "30", "--seconds", "1", "--publishers", "1", "--in-flight", "4"],
            *["--partitions", "1,3", "--json", str(out)],
        ]
    )
    assert json.loads(out.read_text()) == rows
    assert [row["partitions"] for row in rows] == [1, 3]
    for row in rows:
        assert row["sends"] > 0 and row["failed"] == 0
        published = [shard["spublish"] for shard in row["shards"]]
        assert len(published) == 3
        # Every send is one SPUBLISH (the warm-up and the server's probes add a few).
        assert sum(published) >= row["sends"], row
    one, three = ([shard["spublish"] for shard in row["shards"]] for row in rows)
    assert one[1:] == [0, 0], one
    assert min(three) > 0, three
