"""REDIS_MODE=cluster: where our keys and channels live on a Redis Cluster, emitters on it, and
a failover of the shard that holds them.

The servers of the test app run in the test's own event loop (so a test can look at their
managers), on the session's cluster or, for a failover, on a cluster of the test's own
(tests/support/redis_cluster.py: three masters with a replica each).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from fastapi_channels import ConnectionManager, Emitter, SyncEmitter, WSConfig
from fastapi_channels.backends.redis import RedisBackend
from fastapi_channels.backends.redis_connect import RedisTarget
from fastapi_channels.backends.redis_layout import DEFAULT_PARTITIONS, Layout
from fastapi_channels.backends.redis_reader import ReaderState
from fastapi_channels.exceptions import BackendError, DeliveryError
from fastapi_channels.testing import ServerHandle, serve
from tests.app import create_app
from tests.support.client import Client
from tests.support.emitting import emitters_reach_a_member
from tests.support.eventually import eventually
from tests.support.failover import NumberedSender, Receiver
from tests.support.redis_cluster import ClusterDeployment, Node
from tests.support.redis_server import RedisProcess
from tests.support.serving import start_test_app

Servers = list[tuple[ServerHandle, ConnectionManager]]


def cluster_settings(deployment: ClusterDeployment, prefix: str) -> dict[str, Any]:
    return {
        "BACKEND_TYPE": "redis",
        "REDIS_MODE": "cluster",
        "REDIS_URL": deployment.url,
        "REDIS_CHANNEL_PREFIX": prefix,
    }


@contextlib.asynccontextmanager
async def servers(
    deployment: ClusterDeployment, prefix: str, count: int = 2, **settings: Any
) -> AsyncIterator[Servers]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                start_test_app(
                    **cluster_settings(deployment, prefix),
                    SERVER_INSTANCE_ID=f"cl{index}-{prefix.rstrip(':')}",
                    **settings,
                )
            )
            for index in range(count)
        ]


def partition_prefix(prefix: str, group: str | None = None) -> str:
    """The key prefix (a hash tag) of a group's partition, or of the home without a group."""
    layout = Layout.cluster(prefix, DEFAULT_PARTITIONS)
    return layout.prefixes[0 if group is None else layout.of_group(group)]


def partition_slot(prefix: str, group: str | None = None) -> int:
    return key_slot(partition_prefix(prefix, group).encode())


def master_of(deployment: ClusterDeployment, slot: int) -> Node:
    return next(master for master in deployment.masters() if slot in deployment.slots_of(master))


def home_master(deployment: ClusterDeployment, prefix: str) -> Node:
    """The master serving the home partition: connections, users, inboxes, broadcast."""
    return master_of(deployment, partition_slot(prefix))


def room_master(deployment: ClusterDeployment, prefix: str) -> Node:
    """The master serving the partition of "room" (not the home's: the tests rely on that)."""
    assert Layout.cluster(prefix, DEFAULT_PARTITIONS).of_group("room") != 0
    return master_of(deployment, partition_slot(prefix, "room"))


async def watched_room_members(
    s0: ServerHandle, s1: ServerHandle, cleanup: AsyncExitStack
) -> tuple[list[Client], list[Receiver]]:
    """Four members of "room", two on each server, each read by a Receiver until `cleanup`."""
    clients = [await Client.open(s.ws_url, f"user{i}") for i, s in enumerate((s0, s1, s0, s1))]
    for client in clients:
        await client.call("joined", op="join", group="room")
    receivers = [Receiver(client) for client in clients]
    for receiver in receivers:
        cleanup.push_async_callback(receiver.stop)
    return clients, receivers


async def test_each_partition_keeps_its_keys_in_its_own_slot_on_its_own_master(
    redis_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """The scripts touch keys they build themselves; on a cluster each must be in the slot of
    the script's declared keys, or Redis refuses it. After a busy minute of state (users,
    groups over every partition, history, a server gone), every key of a partition is in that
    partition's slot, and the three partitions are on the three masters."""
    settings = {"WS_HISTORY_GROUPS": "hist", "REDIS_REGISTRY_EXPIRY": 3}  # a keeper tick a second
    layout = Layout.cluster(redis_prefix, DEFAULT_PARTITIONS)
    groups = ["room", "small", "hist", "chat", "general"]
    assert {layout.of_group(group) for group in groups} == {0, 1, 2}
    async with servers(redis_cluster, redis_prefix, **settings) as [(s0, m0), (s1, _)]:
        clients = [await Client.open(s.ws_url, f"u{i % 3}") for i, s in enumerate((s0, s1, s0, s1))]
        for client in clients:
            for group in groups:
                await client.call("joined", op="join", group=group)
        await clients[0].send(op="group", group="hist", data="kept")
        for client in clients:
            assert (await client.expect("group"))["data"] == "kept"
        await clients[1].send(op="group", group="general", data="spread")
        for client in clients:
            assert (await client.expect("group"))["data"] == "spread"
        assert await m0.count_connections() == 4 and await m0.count_groups() == len(groups)
        for group in groups:
            assert await m0.group_size(group) == 4
        # The deafness self-check goes through every partition's shard: SPUBLISH, back on
        # SSUBSCRIBE, one reader each.
        backend: Any = m0.backend
        for partition in backend.partitions:
            await eventually(lambda p=partition: p.pubsub_lag is not None, what="a probe through the shard")  # type: ignore[misc]
        assert backend.deaf_repairs == 0
        owners = [master_of(redis_cluster, partition_slot(redis_prefix, g)) for g in (None, "small", "room")]
        assert len({owner.port for owner in owners}) == 3, "one partition per master"
        for index, prefix in enumerate(layout.prefixes):
            slot = key_slot(prefix.encode())
            for master in redis_cluster.masters():
                with master.client() as admin:
                    keys = admin.keys(prefix + "*")  # braces are no glob characters
                if slot in redis_cluster.slots_of(master):
                    assert len(keys) >= 5 and {key_slot(key.encode()) for key in keys} == {slot}, keys
                    if index == 0:
                        assert any(key.endswith("conns") for key in keys), keys
                    else:  # groups only: no connection, no user
                        assert not any("conns" in key or "users:" in key for key in keys), keys
                else:
                    assert keys == []


async def test_a_server_subscribes_only_on_the_shards_of_its_groups(
    redis_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """The home partition's reader is opened at start (inbox, broadcast); another partition's
    at the first join into one of its groups: no connection to a shard where a server has no
    members. Until then that partition does not hold readiness back."""
    layout = Layout.cluster(redis_prefix, DEFAULT_PARTITIONS)
    assert (layout.of_group("small"), layout.of_group("room")) == (1, 2)
    async with servers(redis_cluster, redis_prefix, count=1) as [(server, manager)]:
        backend: Any = manager.backend
        ann = await Client.open(server.ws_url, "ann")
        await ann.call("joined", op="join", group="small")
        assert [p.reader is not None for p in backend.partitions] == [True, True, False]
        assert manager.health().ready
        room_owner = master_of(redis_cluster, partition_slot(redis_prefix, "room"))
        room_channels = partition_prefix(redis_prefix, "room").encode()

        def sharded_subscribers() -> int:
            with room_owner.client() as admin:
                return sum(int(client.get("ssub", 0)) for client in admin.client_list())

        # Nothing of ours listens on the room's shard (the other tests' servers have gone).
        with room_owner.client() as admin:
            assert not [c for c in admin.pubsub_shardchannels() if c.startswith(room_channels)]
        await ann.call("joined", op="join", group="room")
        assert backend.partitions[2].reader is not None
        assert sharded_subscribers() >= 2  # the room's channel and the partition's probe
        await manager.send_to_group("room", {"type": "group", "data": "here"})
        assert (await ann.expect("group"))["data"] == "here"


async def test_a_backend_stopped_while_a_partitions_reader_opens_keeps_no_reader(
    redis_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """A join opens the reader of the room's partition; the backend stops before Redis
    confirmed it: the join fails, and no reader outlives the backend."""
    target = RedisTarget(redis_cluster.url, mode="cluster")
    backend = RedisBackend(redis_cluster.url, prefix=redis_prefix, target=target)
    await backend.start("lazy-stop", lambda topic, payload: None)
    subscribing = asyncio.create_task(backend.subscribe("group:room"))
    await asyncio.sleep(0)  # the opening has begun: it needs several round trips
    assert not subscribing.done()
    await backend.stop()
    with pytest.raises(BackendError):
        await subscribing
    assert [partition.reader for partition in backend.partitions] == [None, None, None]
    owner = master_of(redis_cluster, partition_slot(redis_prefix, "room"))
    probe = partition_prefix(redis_prefix, "room").encode()
    with owner.client() as admin:
        assert not [c for c in admin.pubsub_shardchannels() if c.startswith(probe)]


async def test_a_group_left_while_its_partitions_reader_opens_is_not_subscribed(
    redis_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """A join launches the reader of the room's partition and a leave comes before Redis
    confirmed it: the leave reaches that reader, so once it is up the room is not subscribed
    (a server listening to a group it has no members of could stand in for one that missed
    a send)."""
    target = RedisTarget(redis_cluster.url, mode="cluster")
    backend = RedisBackend(redis_cluster.url, prefix=redis_prefix, target=target)
    await backend.start("lazy-leave", lambda topic, payload: None)
    try:
        subscribing = asyncio.create_task(backend.subscribe("group:room"))
        await asyncio.sleep(0)  # the opening has begun: it needs several round trips
        assert not subscribing.done()
        await backend.unsubscribe("group:room")
        await subscribing  # returns: no longer wanted
        reader = backend.partitions[2].reader
        assert reader is not None and "group:room" not in reader.wanted
        await eventually(lambda: reader.state is ReaderState.READY, what="the reader up")
        channel = backend.partitions[2].keys.channel("group:room")
        with master_of(redis_cluster, partition_slot(redis_prefix, "room")).client() as admin:
            assert admin.pubsub_shardchannels(channel) == []
            assert admin.pubsub_shardchannels(backend.partitions[2].keys.probe) != []
    finally:
        await backend.stop()


async def test_a_partition_whose_master_hangs_does_not_hold_back_the_others(
    redis_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """Writes paused on the master of partition 1 for 3 s: this server's liveness in partition
    2 is renewed all along (its deadline never lapses), so the healthy partitions never take
    it for dead while one shard hangs."""
    target = RedisTarget(redis_cluster.url, mode="cluster")
    backend = RedisBackend(
        redis_cluster.url, prefix=redis_prefix, target=target, registry_expiry=2, self_check_interval=0.2
    )
    await backend.start("hang", lambda topic, payload: None)
    hung = master_of(redis_cluster, key_slot(backend.layout.prefixes[1].encode()))
    healthy = master_of(redis_cluster, key_slot(backend.layout.prefixes[2].encode()))
    assert hung is not healthy
    servers_key = backend.partitions[2].keys.servers
    try:
        with hung.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        lapses = []
        with healthy.client() as watcher:
            until = time.monotonic() + 2.8
            while time.monotonic() < until:
                deadline = watcher.zscore(servers_key, "hang")
                if deadline is None or deadline <= time.time() * 1000:
                    lapses.append(deadline)
                await asyncio.sleep(0.1)
        assert lapses == [], "this server's liveness in partition 2 lapsed while partition 1 hung"
    finally:
        with hung.client() as admin:
            admin.execute_command("CLIENT", "UNPAUSE")
        await backend.stop()


async def test_readers_of_two_partitions_lost_together_are_one_outage(
    redis_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """The pub/sub connections of two partitions killed at once: the listener hears "lost"
    once, when the first goes, and "recovered" once, when the last is back."""
    target = RedisTarget(redis_cluster.url, mode="cluster")
    backend = RedisBackend(redis_cluster.url, prefix=redis_prefix, target=target)
    events: list[str] = []
    backend.add_event_listener(lambda event, error: events.append(event))
    await backend.start("two-lost", lambda topic, payload: None)
    try:
        await backend.subscribe("group:small")  # partition 1
        await backend.subscribe("group:room")  # partition 2
        readers = [backend.partitions[1].reader, backend.partitions[2].reader]
        assert all(reader is not None for reader in readers)
        for group in ("small", "room"):
            owner = master_of(redis_cluster, partition_slot(redis_prefix, group))
            with owner.client() as admin:
                assert admin.client_kill_filter(_type="pubsub") >= 1
        await eventually(
            lambda: events == ["lost", "recovered"] and backend.not_ready() is None, what="both back"
        )
        await asyncio.sleep(0.2)  # nothing more comes
        assert events == ["lost", "recovered"] and backend.outages == 1
        assert backend.listening("group:small") and backend.listening("group:room")
    finally:
        await backend.stop()


async def test_emitters_on_a_cluster_reach_members_on_a_server(
    redis_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    async with servers(redis_cluster, redis_prefix, count=1) as [(server, _)]:
        config = WSConfig(**cluster_settings(redis_cluster, redis_prefix), LOG_STATS=False)
        await emitters_reach_a_member(server, config)


@pytest.mark.parametrize("shard", ["group", "home"])
async def test_a_shard_failover_loses_no_acknowledged_send_and_traffic_resumes(
    shard: str,
    own_cluster: ClusterDeployment,
    redis_prefix: str,
    record_property: Callable[[str, object], None],
) -> None:
    """SIGKILL the master of the group's partition (or of the home) while one server sends to
    the group every 10 ms with strict delivery: sends during the switch raise a retryable
    BackendError, the replica is promoted, both servers' readers subscribe on it, the members
    stay connected, every send that returned normally reached every member, and the state
    counts are exact after. Only the killed shard's partition is taken for lost."""
    settings = {"WS_STRICT_DELIVERY": True, "REDIS_REGISTRY_EXPIRY": 10}
    async with servers(own_cluster, redis_prefix, **settings) as running, AsyncExitStack() as cleanup:
        (s0, m0), (s1, m1) = running
        clients, receivers = await watched_room_members(s0, s1, cleanup)
        emitter = SyncEmitter(WSConfig(**cluster_settings(own_cluster, redis_prefix)))
        cleanup.callback(emitter.close)
        await asyncio.to_thread(emitter.send_to_group, "room", {"type": "group", "data": 0})

        sender = NumberedSender(m0, "room")
        for _ in range(20):
            await sender.send_one()
            await asyncio.sleep(0.01)
        group = "room" if shard == "group" else None
        slot = partition_slot(redis_prefix, group)
        index = 0 if group is None else Layout.cluster(redis_prefix, DEFAULT_PARTITIONS).of_group(group)
        killed = master_of(own_cluster, slot)
        own_cluster.kill(killed)
        killed_at = time.monotonic()
        failover = asyncio.create_task(own_cluster.await_failover(killed))
        while time.monotonic() < killed_at + 30:
            await sender.send_one()
            if len(sender.acknowledged_after(killed_at)) >= 30 and failover.done():
                break
            await asyncio.sleep(0.01)
        promoted = await failover
        promoted_after = time.monotonic() - killed_at
        after_kill = sender.acknowledged_after(killed_at)
        assert len(after_kill) >= 30, (len(after_kill), sender.errors)
        assert master_of(own_cluster, slot) is promoted

        for receiver in receivers:
            await eventually(
                lambda r=receiver: all(number in r.arrived for number, _ in sender.acked),  # type: ignore[misc]
                what=f"every acknowledged send at {receiver.client.user}",
            )
        delivered_at = max(receiver.arrived[after_kill[0][0]] for receiver in receivers)
        # Even when the group's own shard is not the one killed, some sends may raise: with
        # Redis's default cluster-require-full-coverage, every node refuses commands while a
        # slot has no master (CLUSTERDOWN). They raise retryable errors, never pass unsent.
        assert sender.raised_only_retryable_outage_errors(), sender.errors

        # The promoted replica was taken for a loss of that partition's state (another Redis
        # process under it): every server wrote its own back there, and the counts are exact.
        for manager in (m0, m1):
            backend: Any = manager.backend
            state = backend.partitions[index].state
            await eventually(lambda s=state: s.epoch_changes >= 1, what="the loss noticed")  # type: ignore[misc]
            await eventually(lambda s=state: s.rewrites >= 1 and not s.rewrite_needed, what="the write-back")  # type: ignore[misc]
            assert backend.outages >= 1
            others = [p for i, p in enumerate(backend.partitions) if i != index]
            assert all(p.state.epoch_changes == 0 for p in others)
        assert await m0.count_connections() == 4 and await m1.group_size("room") == 4
        assert await m1.count_user_connections("user1") == 1

        # The worker's emitter still holds a connection to the dead master: its first send
        # finds it refused (a retryable error, nothing sent) and refreshes the slot map.
        try:
            await asyncio.to_thread(emitter.send_to_group, "room", {"type": "group", "data": -1})
        except BackendError as error:
            assert error.retryable, error
            await asyncio.to_thread(emitter.send_to_group, "room", {"type": "group", "data": -1})
        for receiver in receivers:
            await eventually(lambda r=receiver: -1 in r.arrived, what="the emitter's send")  # type: ignore[misc]
        await cleanup.aclose()
        for client in clients:
            assert await client.echo_marker() == {"type": "echo", "data": "marker"}

        record_property(
            f"cluster_failover_{shard}",
            {
                "promoted_after_s": round(promoted_after, 2),
                "first_delivered_after_s": round(delivered_at - killed_at, 2),
                "sends_raised": dict(sender.errors),
                "acknowledged": len(sender.acked),
            },
        )


async def test_an_emitters_first_send_to_a_partition_is_judged_against_the_servers_epoch_there(
    redis_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """An emitter learns every partition's epoch with the layout, at its first send. If the
    shard of a partition it never sent to loses its data, its first send there is a loss to
    the script (unverified: a DeliveryError when strict), not a fresh state trusted at once
    whose empty counts would make any send look delivered."""
    target = RedisTarget(redis_cluster.url, mode="cluster")
    config = WSConfig(**cluster_settings(redis_cluster, redis_prefix), LOG_STATS=False)
    backend = RedisBackend(redis_cluster.url, prefix=redis_prefix, target=target, self_check_interval=3600)
    app, _ = create_app(config, backend=backend)
    emitter = Emitter(WSConfig(**cluster_settings(redis_cluster, redis_prefix), WS_STRICT_DELIVERY=True))
    async with serve(app) as server:
        member = await Client.open(server.ws_url, "ann")
        await member.call("joined", op="join", group="room")  # partition 2
        try:
            await emitter.send_to_group("general", {"type": "x"})  # partition 0: nobody there
            assert emitter._core.epochs == [partition.state.epoch for partition in backend.partitions]
            # Partition 2's shard loses its data (the servers' keepers have not noticed yet).
            room_prefix = partition_prefix(redis_prefix, "room")
            with master_of(redis_cluster, partition_slot(redis_prefix, "room")).client() as admin:
                keys = admin.keys(room_prefix + "*")
                assert keys and admin.delete(*keys) == len(keys)
            with pytest.raises(DeliveryError):
                await emitter.send_to_group("room", {"type": "group", "data": "after the loss"})
        finally:
            await emitter.aclose()


async def test_a_group_send_is_one_script_call_on_its_partitions_master_whatever_the_group_size(
    redis_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """The invariant of tests/redis/test_invariants.py on a cluster: one EVALSHA per send (its
    SPUBLISH inside), the same commands for 4 members as for 40, all on the master of the
    group's partition and none on the other masters."""
    target = RedisTarget(redis_cluster.url, mode="cluster")
    config = WSConfig(**cluster_settings(redis_cluster, redis_prefix), LOG_STATS=False)
    apps = [
        create_app(
            config,
            backend=RedisBackend(
                redis_cluster.url, prefix=redis_prefix, self_check_interval=3600, target=target
            ),
        )
        for _ in range(2)
    ]
    groups = {"small": 4, "big": 40}
    owners = {group: master_of(redis_cluster, partition_slot(redis_prefix, group)) for group in groups}
    assert owners["small"] is not owners["big"]  # two partitions, on two masters
    probes = {m.port: aioredis.Redis(host="127.0.0.1", port=m.port) for m in redis_cluster.masters()}
    async with serve(apps[0][0]) as s1, serve(apps[1][0]) as s2:
        members: dict[str, list[Client]] = {group: [] for group in groups}
        for group, size in groups.items():
            for index in range(size):
                client = await Client.open((s1 if index % 2 else s2).ws_url, f"{group}{index}")
                await client.call("joined", op="join", group=group)
                members[group].append(client)
        for group in groups:
            await apps[0][1].send_to_group(group, {"type": "warm-up"})  # loads the script
            for client in members[group]:
                assert (await client.next())["type"] == "warm-up"
        cost: dict[str, dict[int, dict[str, int]]] = {}
        for group in groups:
            for probe in probes.values():
                await probe.config_resetstat()
            for sequence in range(20):
                await apps[0][1].send_to_group(group, {"type": "group", "data": sequence})
            cost[group] = {}
            for port, probe in probes.items():
                stats = await probe.info("commandstats")
                cost[group][port] = {
                    name.removeprefix("cmdstat_"): int(value["calls"])
                    for name, value in stats.items()
                    # Left out: the probe's own, and the replicas' REPLCONF ACK (once a second).
                    if name not in {"cmdstat_config|resetstat", "cmdstat_info", "cmdstat_replconf"}
                }
            for client in members[group]:
                assert [(await client.next())["data"] for _ in range(20)] == list(range(20))
        # Commands inside the script count too (its reads of the epoch and the audience).
        small, big = (cost[g][owners[g].port] for g in ("small", "big"))
        assert small == big, cost
        assert big["evalsha"] == big["spublish"] == 20, cost
        for group in groups:
            others = [c for port, c in cost[group].items() if port != owners[group].port]
            assert not any(c.get("evalsha") or c.get("spublish") for c in others), cost
    for probe in probes.values():
        await probe.aclose()


async def test_every_server_and_emitter_must_split_the_state_into_as_many_partitions(
    redis_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """A process with another REDIS_CLUSTER_PARTITIONS would look for a group in another slot
    than the others and reach nobody without a shortfall. While a server runs, one with
    another count is refused, naming the value, even after the home lost the recorded count
    (the running servers write it again); an emitter too. One that got in anyway is reported
    by the running servers (not ready). Once every server has stopped, the count may change,
    and an emitter that met the old count finds out at its next send to a group."""
    target = RedisTarget(redis_cluster.url, mode="cluster")
    admin = aioredis.RedisCluster.from_url(redis_cluster.url)

    def backend(partitions: int, tick: float) -> RedisBackend:
        return RedisBackend(
            redis_cluster.url,
            prefix=redis_prefix,
            target=target,
            partitions=partitions,
            registry_expiry=2,
            self_check_interval=tick,
        )

    running = backend(3, 0.2)
    await running.start("layout-a", lambda topic, payload: None)
    layout_key = running.keys.layout
    config = WSConfig(**cluster_settings(redis_cluster, redis_prefix), REDIS_CLUSTER_PARTITIONS=3)
    emitter = Emitter(config)
    try:
        await emitter.send_to_group("room", {"type": "x"})  # meets the count 3
        for lost in (False, True):
            if lost:  # as after a failover that lost the home's last writes
                await admin.delete(layout_key)
                deadline = time.monotonic() + 10
                while await admin.get(layout_key) is None:  # the next keeper tick writes it again
                    assert time.monotonic() < deadline, "the recorded count was not written again"
                    await asyncio.sleep(0.05)
                assert await admin.get(layout_key) == b"3"
            with pytest.raises(BackendError) as refused:
                await backend(2, 3600).start("layout-b", lambda topic, payload: None)
            error = refused.value
            assert error.error_code == "BACKEND_MISCONFIGURED" and not error.retryable
            assert "REDIS_CLUSTER_PARTITIONS=3" in error.message, error.message
        other_config = WSConfig(**cluster_settings(redis_cluster, redis_prefix), REDIS_CLUSTER_PARTITIONS=2)
        with SyncEmitter(other_config) as other, pytest.raises(BackendError) as emitter_refused:
            other.send_to_group("room", {"type": "x"})
        assert emitter_refused.value.error_code == "BACKEND_MISCONFIGURED"
        assert "REDIS_CLUSTER_PARTITIONS=3" in emitter_refused.value.message

        # One that got in while the count was gone: the running server says so.
        quiet = backend(3, 3600)
        await quiet.start("layout-c", lambda topic, payload: None)
        await running.stop()
        await admin.delete(layout_key)
        intruder = backend(2, 3600)
        await intruder.start("layout-d", lambda topic, payload: None)
        await quiet.keep_layout()
        assert quiet.not_ready() == "backend_misconfigured"
        assert quiet.misconfigured is not None and "REDIS_CLUSTER_PARTITIONS=2" in quiet.misconfigured
        await quiet.stop()

        # The intruder is alone now: its count stands, and the emitter that met 3 is refused
        # at its next send to a group rather than passing one for delivered to nobody.
        with pytest.raises(BackendError) as stale:
            await emitter.send_to_group("room", {"type": "x"})
        assert stale.value.error_code == "BACKEND_MISCONFIGURED"
        await intruder.stop()
        # Once every server has stopped, the count expires (REDIS_REGISTRY_EXPIRY): it may change.
        deadline = time.monotonic() + 10
        while await admin.get(layout_key) is not None:
            assert time.monotonic() < deadline, "the recorded count outlived the servers"
            await asyncio.sleep(0.1)
    finally:
        await emitter.aclose()
        await running.stop()
        await admin.aclose()


@pytest.mark.parametrize("mode", ["cluster", "standalone"])
async def test_a_redis_that_does_not_fit_redis_mode_is_refused_at_once(
    mode: str,
    redis_server: RedisProcess,
    redis_cluster: ClusterDeployment,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """REDIS_MODE=cluster on one Redis, or standalone on a cluster node: a setting to fix, said
    at the first attempt (not after WS_RECONNECT_MAX_ATTEMPTS of a pretended outage)."""
    url = redis_server.url if mode == "cluster" else redis_cluster.url
    backend = RedisBackend(
        url, prefix=redis_prefix, reconnect_attempts=5, reconnect_delay=5, target=RedisTarget(url, mode=mode)
    )
    with pytest.raises(BackendError) as refused:
        await backend.start("misfit", lambda topic, payload: None)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # no second attempt
    error = refused.value
    assert error.error_code == "BACKEND_MISCONFIGURED" and not error.retryable
    wanted = "set REDIS_MODE=standalone" if mode == "cluster" else "set REDIS_MODE=cluster"
    assert wanted in error.message, error.message


async def test_resharding_our_slot_surfaces_no_redirection_and_loses_no_acknowledged_send(
    own_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """Move the slot of our keys to another master, a few keys at a time, while a server sends
    to a group: MOVED and ASK are followed inside redis-py and a script that meets a half-moved
    slot (TRYAGAIN) waits for the move (no send raises for any of them), the readers follow the
    slot when Redis ends their subscriptions, every send that returned reached every member,
    and the state ends up whole on the new master."""
    settings = {"WS_STRICT_DELIVERY": True}
    async with servers(own_cluster, redis_prefix, **settings) as running, AsyncExitStack() as cleanup:
        (s0, m0), (s1, m1) = running
        clients, receivers = await watched_room_members(s0, s1, cleanup)
        sender = NumberedSender(m0, "room")
        slot = partition_slot(redis_prefix, "room")
        source = room_master(own_cluster, redis_prefix)
        target = next(master for master in own_cluster.masters() if master is not source)
        # The keys move a few at a time, 20 ms apart, while the server sends every 10 ms.
        migration = asyncio.create_task(
            asyncio.to_thread(own_cluster.migrate_slot, slot, target, lambda: time.sleep(0.02))
        )
        while not migration.done():
            await sender.send_one()
            await asyncio.sleep(0.01)
        await migration
        moved_at = time.monotonic()
        while len(sender.acknowledged_after(moved_at)) < 30 and time.monotonic() < moved_at + 15:
            await sender.send_one()
            await asyncio.sleep(0.01)

        # What may show is what a failover shows, never a redirection: the heartbeat finds
        # another Redis process under the state and takes it as lost (a promotion looks the
        # same), so for the resync window sends are unverified shortfalls, and the readers'
        # move may cost a shortfall of its own.
        assert set(sender.errors) <= {"DELIVERY_SHORTFALL"}, sender.errors
        assert len(sender.acknowledged_after(moved_at)) >= 30, sender.errors
        for receiver in receivers:
            await eventually(
                lambda r=receiver: all(number in r.arrived for number, _ in sender.acked),  # type: ignore[misc]
                what=f"every acknowledged send at {receiver.client.user}",
            )
        assert room_master(own_cluster, redis_prefix) is target
        with source.client() as old:
            assert old.keys(partition_prefix(redis_prefix, "room") + "*") == []
        assert await m1.count_connections() == 4 and await m0.group_size("room") == 4
        await cleanup.aclose()
        for client in clients:
            assert await client.echo_marker() == {"type": "echo", "data": "marker"}


async def test_a_send_during_a_resharding_is_never_judged_on_a_half_moved_state(
    own_cluster: ClusterDeployment, redis_prefix: str
) -> None:
    """Mid-move, the keys a group send declares (the epoch, the group's audience, the servers
    zset) are on the new master and the rest are not: the send runs there (ASK), where the
    subscribers are not yet. It must not pass for delivered because the liveness it reads is
    missing there: it raises a shortfall, or it reached everyone."""
    async with servers(own_cluster, redis_prefix, WS_STRICT_DELIVERY=True) as running:
        (s0, m0), (s1, _) = running
        clients = [await Client.open(s.ws_url, f"user{i}") for i, s in enumerate((s0, s1))]
        for client in clients:
            await client.call("joined", op="join", group="room")
        backend: Any = m0.backend
        keys = backend.partitions[backend.layout.of_group("room")].keys
        slot = partition_slot(redis_prefix, "room")
        source = room_master(own_cluster, redis_prefix)
        target = next(master for master in own_cluster.masters() if master is not source)
        own_cluster.start_migration(slot, target)
        declared = [keys.epoch, keys.group_servers("room"), keys.servers]
        await asyncio.to_thread(own_cluster.move_keys, source, target, declared)
        try:
            await m0.send_to_group("room", {"type": "group", "data": "mid-move"})
        except BackendError as error:
            assert error.error_code == "DELIVERY_SHORTFALL" and error.retryable, error
        else:
            for client in clients:
                assert (await client.expect("group"))["data"] == "mid-move"
        with source.client() as old:
            rest = old.keys(partition_prefix(redis_prefix, "room") + "*")
        await asyncio.to_thread(own_cluster.move_keys, source, target, rest)
        await asyncio.to_thread(own_cluster.finish_migration, slot, target)
