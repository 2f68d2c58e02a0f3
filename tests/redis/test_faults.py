"""Faults on a cluster: SIGTERM drains cleanly, Redis paused, churn leaves no keys behind."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from tests.redis.conftest import ClusterFactory
from tests.redis.test_resilience import stats, until_group_flows
from tests.support.client import Client
from tests.support.redis_server import RedisProcess

FAST = "fastapi_channels.fastpath:FastWebSocketProtocol"


async def keys_of(redis_server: RedisProcess, prefix: str) -> set[str]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        return {key async for key in client.scan_iter(match=f"{prefix}*", count=1000)}
    finally:
        await client.aclose()


async def test_sigterm_closes_every_client_with_1001_and_leaves_nothing_in_redis(
    cluster: ClusterFactory, redis_server: RedisProcess, redis_prefix: str
) -> None:
    leaving, staying = cluster(2, ws=FAST)
    doomed = [await Client.open(leaving.ws_url, f"d{i}") for i in range(5)]
    witness = await Client.open(staying.ws_url, "w")
    for client in [*doomed, witness]:
        await client.call("joined", op="join", group="room")
    leaving_id = f"srv0-{redis_prefix.rstrip(':')}"
    assert any(leaving_id in key for key in await keys_of(redis_server, redis_prefix))

    # uvicorn shuts down gracefully (lifespan included), then re-raises SIGTERM.
    assert leaving.terminate() in (0, -signal.SIGTERM)
    for client in doomed:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    left = await keys_of(redis_server, redis_prefix)
    assert not [key for key in left if leaving_id in key], left
    inspector = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert await inspector.smembers(f"{redis_prefix}group:room") == {witness.channel_name}
    finally:
        await inspector.aclose()
    await witness.send(op="group", group="room", data="still")
    assert (await witness.next())["data"] == "still"


async def test_redis_paused_for_three_seconds_then_traffic_flows(
    cluster: ClusterFactory, redis_server: RedisProcess
) -> None:
    s1, s2 = cluster(2, REDIS_REGISTRY_EXPIRY=6)
    a, b = await Client.open(s1.ws_url, "a"), await Client.open(s2.ws_url, "b")
    for client in (a, b):
        await client.call("joined", op="join", group="room")
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        paused_until = time.monotonic() + 3
        flowed_at = await until_group_flows(a, [a, b], deadline=time.monotonic() + 15)
        assert flowed_at - paused_until < 5
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
    for server in (s1, s2):
        assert server.alive
        assert (await stats(server.http_url))["connections"] == 1


async def test_two_thousand_connect_disconnect_cycles_leave_no_keys(
    cluster: ClusterFactory, redis_server: RedisProcess, redis_prefix: str
) -> None:
    s1, s2 = cluster(2)
    anchor = await Client.open(s1.ws_url, "anchor")
    await anchor.call("joined", op="join", group="g0")
    baseline = await keys_of(redis_server, redis_prefix)
    for round_ in range(100):
        clients = [await Client.open((s1, s2)[i % 2].ws_url, f"user{i % 7}") for i in range(20)]
        for index, client in enumerate(clients):
            await client.send(op="join", group=f"g{(index + round_) % 5}")
        for client in clients:
            assert (await client.next())["type"] == "joined"
        await asyncio.gather(*(client.close() for client in clients))
    for _ in range(100):
        views = [await stats(server.http_url) for server in (s1, s2)]
        if sum(view["connections"] for view in views) == 1:
            break
        await asyncio.sleep(0.1)
    assert [view["connections"] for view in views] == [1, 0]
    assert [view["connections_closed"] for view in views] == [1000, 1000]
    assert await keys_of(redis_server, redis_prefix) == baseline
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert await client.hlen(f"{redis_prefix}srv:srv0-{redis_prefix.rstrip(':')}:conns") == 1
        assert await client.zcard(f"{redis_prefix}groups") == 1
    finally:
        await client.aclose()
