"""Faults on a cluster: SIGTERM drains cleanly, Redis paused, churn leaves nothing behind."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from tests.redis.conftest import ClusterFactory
from tests.redis.test_resilience import stats, until_group_flows
from tests.support.client import Client
from tests.support.redis_server import RedisProcess
from tests.support.server_process import ServerProcess

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


CHURN_ROUNDS = 100  # x 20 clients: 2,000 connect/join/close cycles, half on each server
# As many cycles first: RSS climbs for about 2,000 cycles (allocator warm-up; Python's heap
# stays flat) and is flat after, so growth measured from there is growth per connection.
WARM_UP_ROUNDS = 100
# Each server's RSS may grow by at most this much over the measured 2,000 cycles; measured:
# 0.3 to 1.4 MiB, and no trend over 10,000 cycles. A leak of 3 KiB per connection would exceed it.
CHURN_RSS_BOUND_MIB = 3
# Python's allocated blocks (sys.getallocatedblocks) may differ by at most this much: caches
# and free lists move them by up to ~350 with no trend over 10,000 cycles. A leak of one
# object per connection would add 1,000 per server.
CHURN_BLOCKS_BOUND = 800


async def churn(servers: tuple[ServerProcess, ServerProcess], rounds: int) -> None:
    """`rounds` x 20 clients alternating between the servers: connect, join one of 5 groups, close."""
    for round_ in range(rounds):
        clients = [await Client.open(servers[i % 2].ws_url, f"user{i % 7}") for i in range(20)]
        for index, client in enumerate(clients):
            await client.send(op="join", group=f"g{(index + round_) % 5}")
        for client in clients:
            assert (await client.next())["type"] == "joined"
        await asyncio.gather(*(client.close() for client in clients))


def sizes(view: dict[str, int]) -> dict[str, int]:
    """A /debug view without Python's allocated blocks: what must come back exactly."""
    return {key: value for key, value in view.items() if key != "allocated_blocks"}


async def settled(
    servers: tuple[ServerProcess, ServerProcess], baseline: list[dict[str, int]] | None = None
) -> list[dict[str, int]]:
    """Each server's /debug view once only the anchor is left (and its sizes are `baseline`'s)."""
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            views = [(await http.get(f"{server.http_url}/debug", timeout=10)).json() for server in servers]
            if [view["registry.connections"] for view in views] == [1, 0] and (
                baseline is None or list(map(sizes, views)) == list(map(sizes, baseline))
            ):
                break
            await asyncio.sleep(0.1)
    return views


async def test_two_thousand_connect_disconnect_cycles_leave_nothing_behind(
    cluster: ClusterFactory,
    redis_server: RedisProcess,
    redis_prefix: str,
    record_property: Callable[[str, object], None],
) -> None:
    """No growth in registries, tasks, Redis keys, Python's heap or RSS (beyond a small bound)."""
    s1, s2 = cluster(2)
    servers = (s1, s2)
    anchor = await Client.open(s1.ws_url, "anchor")
    await anchor.call("joined", op="join", group="g0")
    await churn(servers, WARM_UP_ROUNDS)
    baseline = await settled(servers)
    baseline_keys = await keys_of(redis_server, redis_prefix)
    baseline_rss = [server.rss_mib() for server in servers]

    await churn(servers, CHURN_ROUNDS)
    views = await settled(servers, baseline)
    rss_growth = [server.rss_mib() - before for server, before in zip(servers, baseline_rss, strict=True)]
    blocks_growth = [
        after["allocated_blocks"] - before["allocated_blocks"]
        for before, after in zip(baseline, views, strict=True)
    ]
    for index, server_view in enumerate(views):
        record_property(f"server{index}_tasks", server_view["tasks"])
        record_property(f"server{index}_rss_growth_mib", round(rss_growth[index], 2))
        record_property(f"server{index}_allocated_blocks_growth", blocks_growth[index])

    closed = [(await stats(server.http_url))["connections_closed"] for server in servers]
    assert closed == [(WARM_UP_ROUNDS + CHURN_ROUNDS) * 10] * 2
    # Every index, every backend container and the number of asyncio tasks are back to what
    # they were before the 2,000 cycles: nothing is kept per connection that has gone.
    assert list(map(sizes, views)) == list(map(sizes, baseline))
    assert max(map(abs, blocks_growth)) < CHURN_BLOCKS_BOUND, blocks_growth
    assert max(rss_growth) < CHURN_RSS_BOUND_MIB, rss_growth
    assert await keys_of(redis_server, redis_prefix) == baseline_keys
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert await client.hlen(f"{redis_prefix}srv:srv0-{redis_prefix.rstrip(':')}:conns") == 1
        assert await client.zcard(f"{redis_prefix}groups") == 1
    finally:
        await client.aclose()
