"""REDIS_MODE=sentinel: the same API and guarantees as one Redis, through a master failover.

Each test runs its own Sentinel deployment (tests/support/redis_sentinel.py: a master, one
replica and three sentinels, real redis-server processes, passwords on all of them) and
servers of the test app in the test's own event loop, so a test can look at their managers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from fastapi_channels import ConnectionManager, SyncEmitter, WSConfig
from fastapi_channels.exceptions import BackendError
from fastapi_channels.testing import ServerHandle, free_port
from tests.support.client import Client
from tests.support.emitting import emitters_reach_a_member
from tests.support.eventually import eventually
from tests.support.failover import NumberedSender, Receiver
from tests.support.redis_sentinel import MASTER_NAME, PASSWORD, SENTINEL_PASSWORD, SentinelDeployment
from tests.support.serving import start_test_app

Servers = list[tuple[ServerHandle, ConnectionManager]]


@pytest.fixture
def deployment() -> Iterator[SentinelDeployment]:
    sentinels = SentinelDeployment()
    sentinels.start()
    yield sentinels
    sentinels.stop()


@contextlib.asynccontextmanager
async def servers(
    deployment: SentinelDeployment, prefix: str, count: int = 2, **settings: Any
) -> AsyncIterator[Servers]:
    """`count` servers of the test app in sentinel mode, sharing `prefix`."""
    async with AsyncExitStack() as stack:
        running = [
            await stack.enter_async_context(
                start_test_app(
                    **{
                        **deployment.settings(),
                        "REDIS_CHANNEL_PREFIX": prefix,
                        "SERVER_INSTANCE_ID": f"sent{index}-{prefix.rstrip(':')}",
                        **settings,
                    }
                )
            )
            for index in range(count)
        ]
        yield running


async def test_group_user_and_broadcast_sends_cross_servers_in_sentinel_mode(
    deployment: SentinelDeployment, redis_prefix: str
) -> None:
    async with servers(
        deployment, redis_prefix, REDIS_URL=f"redis://:{PASSWORD}@ignored.invalid:1/3"
    ) as running:
        (s0, _), (s1, m1) = running
        alice = await Client.open(s0.ws_url, "alice")
        bob = await Client.open(s1.ws_url, "bob")
        bob_again = await Client.open(s0.ws_url, "bob")
        members = [alice, bob, bob_again]
        for client in members:
            await client.call("joined", op="join", group="room")

        await alice.send(op="group", group="room", data="to the room")
        for client in members:
            assert (await client.expect("group"))["data"] == "to the room"
        await alice.send(op="user", user="bob", data="to bob", ack=1)
        assert (await alice.expect("sent"))["count"] == 2
        for client in (bob, bob_again):
            assert (await client.expect("user"))["data"] == "to bob"
        await bob.send(op="broadcast", data="to everyone")
        for client in members:
            assert (await client.expect("broadcast"))["data"] == "to everyone"
        assert await alice.echo_marker() == {"type": "echo", "data": "marker"}  # nothing more for alice

        # Counted in the master's db 3 (REDIS_URL's db and password apply), through either server.
        assert await m1.group_size("room") == 3 and await m1.count_user_connections("bob") == 2
        with deployment.master.client(db=3) as admin:
            assert admin.exists(f"{redis_prefix}group:room") == 1
        with deployment.master.client(db=0) as admin:
            assert not admin.keys(f"{redis_prefix}*")


async def test_an_emitter_in_sentinel_mode_reaches_members_on_a_server(
    deployment: SentinelDeployment, redis_prefix: str
) -> None:
    async with servers(deployment, redis_prefix, count=1) as [(server, _)]:
        config = WSConfig(**deployment.settings(), REDIS_CHANNEL_PREFIX=redis_prefix, LOG_STATS=False)
        await emitters_reach_a_member(server, config)


async def make_the_replica_miss_writes(
    deployment: SentinelDeployment, prefix: str, server_id: str, slot: str
) -> None:
    """Change the replica's copy as a replica that missed the master's last writes has it: no
    slot for the connection `slot` of `server_id` (an add it never got), a member of "quiet" on
    that server that left (a removal it never got), and the history group "hist" without its
    last two messages (offsets 2 and 3)."""
    p, gone = prefix, f"{server_id}!left-already"
    with deployment.replica.client() as replica:
        await eventually(lambda: replica.hexists(f"{p}srv:{server_id}:conns", slot), what="the slot copied")
        await eventually(lambda: replica.hget(f"{p}hpos:hist", "offset") == b"3", what="offset 3 copied")
        replica.hdel(f"{p}srv:{server_id}:conns", slot)
        replica.hincrby(f"{p}users:user1", server_id, -1)
        replica.sadd(f"{p}group:quiet", gone)
        replica.hincrby(f"{p}gsrv:quiet", server_id, 1)
        replica.sadd(f"{p}srv:{server_id}:members", f"quiet|{gone}")
        replica.zadd(f"{p}groups", {"quiet": time.time() * 1000 + 60_000})
        [(_, first)] = replica.xrange(f"{p}hist:hist", "1-1", "1-1")
        replica.delete(f"{p}hist:hist")  # rebuilt: a stream that never had 2 and 3 ends at 1-1
        replica.xadd(f"{p}hist:hist", first, id="1-1")
        replica.hset(f"{p}hpos:hist", "offset", 1)


async def test_a_master_failover_loses_no_acknowledged_send_and_traffic_resumes(
    deployment: SentinelDeployment, redis_prefix: str, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL the master while one server sends to a group every 10 ms with strict delivery:
    sends during the switch raise a retryable BackendError within their deadline, the sentinels
    promote the replica, both servers' readers follow it, the members stay connected, and every
    send that returned normally reached every member. The replica had missed some of the old
    master's writes, and the servers put the state right."""
    settings = {"WS_STRICT_DELIVERY": True, "REDIS_REGISTRY_EXPIRY": 10, "WS_HISTORY_GROUPS": "hist"}
    async with servers(deployment, redis_prefix, **settings) as running, AsyncExitStack() as cleanup:
        (s0, m0), (s1, m1) = running
        clients = [await Client.open(s.ws_url, f"user{i}") for i, s in enumerate((s0, s1, s0, s1))]
        for client in clients:
            await client.call("joined", op="join", group="room")
        for client in clients[:2]:
            await client.call("joined", op="join", group="hist")
        for number in (1, 2, 3):
            await m0.send_to_group("hist", {"type": "hist", "n": number})
        old_epochs = {(await client.expect("hist", n=3))["epoch"] for client in clients[:2]}
        receivers = [Receiver(client) for client in clients]
        for receiver in receivers:
            cleanup.push_async_callback(receiver.stop)
        # A long-lived worker's emitter, with a connection to the old master in its pool.
        emitter = SyncEmitter(WSConfig(**deployment.settings(), REDIS_CHANNEL_PREFIX=redis_prefix))
        cleanup.callback(emitter.close)
        await asyncio.to_thread(emitter.send_to_group, "room", {"type": "group", "data": 0})
        await make_the_replica_miss_writes(deployment, redis_prefix, m1.server_id, clients[1].channel_name)

        sender = NumberedSender(m0, "room")
        for _ in range(20):
            await sender.send_one()
            await asyncio.sleep(0.01)
        deployment.master.kill()
        killed_at = time.monotonic()
        # A client arriving now cannot be admitted (limits cannot be checked): "try again later".
        assert await Client.open_refused(s1.ws_url, "latecomer") == (1013, "BACKEND_UNAVAILABLE")
        promoted_at = 0.0
        while time.monotonic() < killed_at + 25:
            await sender.send_one()
            if not promoted_at and await asyncio.to_thread(deployment.promoted):
                promoted_at = time.monotonic()
            if len(sender.acknowledged_after(killed_at)) >= 30:
                break
            await asyncio.sleep(0.01)
        after_kill = sender.acknowledged_after(killed_at)
        assert promoted_at and len(after_kill) >= 30, (promoted_at, len(after_kill), sender.errors)

        # Every acknowledged send reached every member; the members never left.
        for receiver in receivers:
            await eventually(
                lambda r=receiver: all(number in r.arrived for number, _ in sender.acked),  # type: ignore[misc]
                what=f"every acknowledged send at {receiver.client.user}",
            )
        delivered_at = max(receiver.arrived[after_kill[0][0]] for receiver in receivers)
        assert sender.slowest < 11, sender.slowest
        assert sender.raised_only_retryable_outage_errors(), sender.errors

        # The promotion was taken for a loss of state: every server wrote its own back exactly.
        assert await m0.count_connections() == 4
        assert await m0.count_user_connections("user1") == 1
        assert await m0.group_size("quiet") == 0 and await m0.group_members("quiet") == set()
        assert await m0.group_size("room") == 4
        await m0.send_to_group("quiet", {"type": "nobody"})  # strict: no false shortfall is left
        for manager in (m0, m1):
            backend: Any = manager.backend
            assert backend.state.epoch_changes >= 1 and backend.outages >= 1

        # The history that lost its last messages starts again: the next message is not numbered
        # 2 again (both servers delivered a 2 already and would drop it), but 1 of a new epoch.
        await m0.send_to_group("hist", {"type": "hist", "n": "after"})
        for receiver in receivers[:2]:
            await eventually(
                lambda r=receiver: r.other("hist", n="after") is not None,  # type: ignore[misc]
                what="the history message after the failover",
            )
            after = receiver.other("hist", n="after")
            assert after is not None and after["offset"] == 1 and after["epoch"] not in old_epochs, after

        # The emitter follows the new master too: its stale pooled connection is replaced.
        await asyncio.to_thread(emitter.send_to_group, "room", {"type": "group", "data": -1})
        for receiver in receivers:
            await eventually(lambda r=receiver: -1 in r.arrived, what="the emitter's send")  # type: ignore[misc]
        await cleanup.aclose()  # the receivers stop reading: the markers are the next frames
        for client in clients:
            assert await client.echo_marker() == {"type": "echo", "data": "marker"}

        record_property(
            "sentinel_failover",
            {
                "promoted_after_s": round(promoted_at - killed_at, 2),
                "first_delivered_after_s": round(delivered_at - killed_at, 2),
                "sends_raised": dict(sender.errors),
                "acknowledged": len(sender.acked),
                "slowest_send_s": round(sender.slowest, 3),
                "pruned": m1.backend.state.pruned,  # type: ignore[attr-defined]
            },
        )


async def test_sentinels_unreachable_at_start_fail_clearly_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = WSConfig(
        BACKEND_TYPE="redis",
        REDIS_MODE="sentinel",
        REDIS_URL=f"redis://:{PASSWORD}@ignored.invalid:1/0",
        REDIS_SENTINELS=f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}",
        REDIS_SENTINEL_MASTER=MASTER_NAME,
        REDIS_SENTINEL_PASSWORD=SENTINEL_PASSWORD,
        WS_RECONNECT_MAX_ATTEMPTS=2,
        WS_RECONNECT_DELAY=0.05,
        LOG_STATS=False,
    )
    manager = ConnectionManager(config)
    with pytest.raises(BackendError) as failure:
        await manager.start_tasks()
    assert failure.value.error_code == "BACKEND_UNAVAILABLE"
    assert MASTER_NAME in failure.value.message and "after 2 attempts" in failure.value.message
    shown = [failure.value.message, *(record.getMessage() for record in caplog.records)]
    assert not [text for text in shown if PASSWORD in text or SENTINEL_PASSWORD in text]
