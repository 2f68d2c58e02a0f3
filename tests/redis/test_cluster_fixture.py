"""The Redis Cluster the REDIS_MODE=cluster tests will run on (tests/support/redis_cluster.py):
three masters serving every slot, reachable through redis-py's asyncio cluster client, and a
master SIGKILLed with a replica is replaced by that replica, its keys still served."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from tests.support.eventually import eventually
from tests.support.redis_cluster import SLOTS, ClusterDeployment, Node

# Fails fast with the nodes' logs if the fixture cannot start or fail over, rather than at
# the suite's 60 s.
pytestmark = pytest.mark.timeout(30)


def key_served_by(cluster: ClusterDeployment, master: Node, prefix: str) -> str:
    """A key whose slot `master` serves."""
    slots = cluster.slots_of(master)
    return next(f"{prefix}{n}" for n in range(100_000) if key_slot(f"{prefix}{n}".encode()) in slots)


def replica_has(replica: Node, key: str, value: bytes) -> bool:
    """Whether `replica` holds `key` = `value` already (replication is asynchronous)."""
    with replica.client() as client:
        client.execute_command("READONLY")  # else it answers MOVED to its master
        return bool(client.get(key) == value.decode())


def test_three_masters_serve_every_slot_once(redis_cluster: ClusterDeployment) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    slots = [redis_cluster.slots_of(master) for master in masters]
    assert sum(len(owned) for owned in slots) == SLOTS
    assert frozenset().union(*slots) == frozenset(range(SLOTS))
    for master in masters:
        assert len(redis_cluster.replicas_of(master)) == 1
    for node in redis_cluster.nodes:
        info = node.cluster_info()
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_ok"] == str(SLOTS)
        assert info["cluster_known_nodes"] == "6"


async def test_async_cluster_client_writes_and_reads_on_every_master(
    redis_cluster: ClusterDeployment,
) -> None:
    async with RedisCluster.from_url(redis_cluster.url) as client:
        for master in redis_cluster.masters():
            key = key_served_by(redis_cluster, master, "fixture:")
            assert await client.set(key, master.address)
            assert await client.get(key) == master.address.encode()
            assert client.get_node_from_key(key).port == master.port  # type: ignore[union-attr]


async def test_replica_takes_over_a_killed_master_and_serves_its_keys(
    own_cluster: ClusterDeployment, record_property: Callable[[str, object], None]
) -> None:
    old_master = own_cluster.masters()[0]
    old_slots = own_cluster.slots_of(old_master)
    (replica,) = own_cluster.replicas_of(old_master)
    key = key_served_by(own_cluster, old_master, "failover:")
    async with RedisCluster.from_url(own_cluster.url) as client:
        assert await client.set(key, b"kept")
        await eventually(lambda: replica_has(replica, key, b"kept"), what="the key replicated")

        killed_at = time.monotonic()
        own_cluster.kill(old_master)
        promoted = await own_cluster.await_failover(old_master)
        took = time.monotonic() - killed_at

        record_property("failover_seconds", round(took, 2))
        assert promoted is replica
        assert own_cluster.slots_of(promoted) == old_slots
        assert old_master not in own_cluster.masters()
        assert promoted in own_cluster.masters()
        assert await client.get(key) == b"kept"  # the client finds the new master itself
    async with RedisCluster.from_url(own_cluster.url) as fresh:
        assert await fresh.get(key) == b"kept"
        assert fresh.get_node_from_key(key).port == promoted.port  # type: ignore[union-attr]

    own_cluster.restart(old_master)  # back as the new master's replica
    assert own_cluster.replicas_of(promoted) == [old_master]
