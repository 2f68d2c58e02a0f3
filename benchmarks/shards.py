"""Publish capacity over a Redis Cluster's shards: a publish-only run with many groups.

    python -m benchmarks.shards --json docs/benchmarks/shards.json
    python -m benchmarks.shards --groups 50 --seconds 1 --publishers 1   # a tiny run

A three-master cluster (no replicas) and one fastapi-channels server on it (so the layout is
recorded and every partition has a live server), then --publishers processes, each an
asyncio Emitter with --in-flight sends under way, sending to --groups groups round robin for
--seconds. The groups have no members: what is measured is the publish path itself, one
script call ending in SPUBLISH on the group's partition's master. It runs once for each
--partitions value (default 1 and 3: everything in one slot, as before the layout was
spread, against one partition per master) and reports, per shard: EVALSHA/s and SPUBLISH/s
(INFO commandstats before and after) and the redis-server's CPU (a share of a core).

On a small machine the publishers, not Redis, are the limit; what the run shows is where the
work goes: with one partition, one shard does all of it; with three, each does a third.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import run

ROOT = Path(__file__).resolve().parent.parent
PUBLISHER = [sys.executable, "-m", "benchmarks.shards", "--publisher"]
UVICORN = [sys.executable, "-m", "uvicorn", "--log-level", "warning", "--no-access-log"]


@contextlib.contextmanager
def cluster() -> Iterator[Any]:
    """Three masters, no replicas, pinned to one core (the publishers get the other)."""
    from tests.support.redis_cluster import ClusterDeployment

    deployment = ClusterDeployment(masters=3)
    deployment.start()
    try:
        if run.cores() >= 2 and hasattr(os, "sched_setaffinity"):
            for node in deployment.nodes:
                assert node.process is not None
                os.sched_setaffinity(node.process.pid, {0})
        yield deployment
    finally:
        deployment.stop()


def settings(deployment: Any, prefix: str, partitions: int) -> dict[str, str]:
    return {
        "BACKEND_TYPE": "redis",
        "REDIS_MODE": "cluster",
        "REDIS_URL": deployment.url,
        "REDIS_CHANNEL_PREFIX": prefix,
        "REDIS_CLUSTER_PARTITIONS": str(partitions),
        "LOG_STATS": "false",
    }


@contextlib.contextmanager
def server(env: dict[str, str], log: Path) -> Iterator[None]:
    """One fastapi-channels server on the cluster (benchmarks.systems:channels)."""
    port = run.free_port()
    with log.open("ab") as output:
        process = subprocess.Popen(
            [*UVICORN, "benchmarks.systems:channels", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            preexec_fn=run.pinned(0),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        run.wait_port(port, process)
        yield
    finally:
        run.stop_process(process)


async def publish(groups: int, seconds: float, in_flight: int) -> dict[str, Any]:
    """The publisher process's loop: `in_flight` tasks send to the groups round robin."""
    from fastapi_channels import Emitter

    sent = failed = 0
    async with Emitter() as emitter:
        await emitter.send_to_group("g0", {"type": "warm-up"})  # loads the script, checks the layout
        deadline = time.monotonic() + seconds
        started = time.monotonic()

        async def sender(offset: int) -> None:
            nonlocal sent, failed
            index = offset
            while time.monotonic() < deadline:
                try:
                    await emitter.send_to_group(f"g{index % groups}", {"type": "x", "data": index})
                    sent += 1
                except Exception:
                    failed += 1
                index += in_flight

        await asyncio.gather(*(sender(offset) for offset in range(in_flight)))
        elapsed = time.monotonic() - started
    return {"sent": sent, "failed": failed, "elapsed_s": elapsed}


def commandstats(deployment: Any) -> dict[str, dict[str, int]]:
    counts = {}
    for master in deployment.masters():
        with master.client() as client:
            stats = client.info("commandstats")
        counts[master.address] = {
            name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()
        }
    return counts


def measure(deployment: Any, partitions: int, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"s{uuid.uuid4().hex[:6]}:"
    env = settings(deployment, prefix, partitions)
    masters = deployment.masters()
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp, server(env, Path(tmp) / "server.log"):
        before = commandstats(deployment)
        cpu_before = {m.address: run.cpu_seconds([m.process.pid]) for m in masters}
        sizes = [
            "--groups",
            str(args.groups),
            "--seconds",
            str(args.seconds),
            "--in-flight",
            str(args.in_flight),
        ]
        publishers = [
            subprocess.Popen(
                [*PUBLISHER, *sizes],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                preexec_fn=run.pinned(1),
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.publishers)
        ]
        replies = []
        for process in publishers:
            out, _ = process.communicate(timeout=args.seconds + 60)
            if process.returncode != 0:
                raise RuntimeError(f"a publisher exited with {process.returncode}")
            replies.append(json.loads(out.strip().splitlines()[-1]))
        after = commandstats(deployment)
        cpu_after = {m.address: run.cpu_seconds([m.process.pid]) for m in masters}
    elapsed = max(reply["elapsed_s"] for reply in replies)
    sent = sum(reply["sent"] for reply in replies)
    shards = []
    for master in masters:
        address = master.address

        def delta(command: str, address: str = address) -> int:
            return after[address].get(command, 0) - before[address].get(command, 0)

        shards.append(
            {
                "master": address,
                "evalsha_per_s": round(delta("evalsha") / elapsed),
                "spublish_per_s": round(delta("spublish") / elapsed),
                "spublish": delta("spublish"),
                "redis_cpu_share": round((cpu_after[address] - cpu_before[address]) / elapsed, 3),
            }
        )
    shards.sort(key=lambda shard: shard["spublish"], reverse=True)
    return {
        "partitions": partitions,
        "groups": args.groups,
        "publishers": args.publishers,
        "sends": sent,
        "failed": sum(reply["failed"] for reply in replies),
        "sends_per_s": round(sent / elapsed),
        "shards": shards,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| partitions | sends/s | SPUBLISH/s by shard | EVALSHA/s by shard | Redis CPU by shard |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        shards = row["shards"]

        def each(field: str, shape: str, shards: list[dict[str, Any]] = shards) -> str:
            return " / ".join(format(shard[field], shape) for shard in shards)

        lines.append(
            f"| {row['partitions']} | {row['sends_per_s']:,} | {each('spublish_per_s', ',')} "
            f"| {each('evalsha_per_s', ',')} | {each('redis_cpu_share', '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--in-flight", type=int, default=32, help="sends under way per publisher")
    parser.add_argument("--partitions", default="1,3", help="REDIS_CLUSTER_PARTITIONS values to run")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publisher:
        print(json.dumps(asyncio.run(publish(args.groups, args.seconds, args.in_flight))))
        return []
    rows = []
    with cluster() as deployment:
        for partitions in (int(value) for value in args.partitions.split(",")):
            rows.append(measure(deployment, partitions, args))
            print(table(rows[-1:]), file=sys.stderr)
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
