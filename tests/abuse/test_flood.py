"""A connection flood from many distinct users against MAX_TOTAL_CONNECTIONS on two servers."""

from __future__ import annotations

import asyncio

import httpx
from websockets.exceptions import ConnectionClosed

from tests.redis.conftest import ClusterFactory
from tests.support.client import Client
from tests.support.eventually import eventually

LIMIT = 12
ATTEMPTS = 80


async def connections_of(base_url: str) -> int:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base_url}/cluster", timeout=10)
        return int(response.json()["connections"])


async def stats(base_url: str) -> dict:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{base_url}/stats", timeout=10)).json()  # type: ignore[no-any-return]


async def test_a_flood_of_distinct_users_gets_exactly_the_cluster_wide_limit(cluster: ClusterFactory) -> None:
    s1, s2 = cluster(2, MAX_TOTAL_CONNECTIONS=LIMIT)
    refusals: list[tuple[int, str]] = []

    async def attempt(index: int) -> Client | None:
        server = (s1, s2)[index % 2]
        try:
            return await Client.open(server.ws_url, f"flooder{index}")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "refused without a close frame"
            refusals.append((closed.rcvd.code, closed.rcvd.reason))
            return None

    results = await asyncio.gather(*(attempt(i) for i in range(ATTEMPTS)))
    accepted = [client for client in results if client is not None]
    assert len(accepted) == LIMIT
    assert refusals == [(1013, "CONNECTION_LIMIT_EXCEEDED")] * (ATTEMPTS - LIMIT)
    assert await connections_of(s1.http_url) == await connections_of(s2.http_url) == LIMIT
    # The limit is cluster-wide: the servers' local counts add up to it (how they split it is
    # a race), and each refused what it could not place.
    local = [await stats(server.http_url) for server in (s1, s2)]
    assert sum(view["connections"] for view in local) == LIMIT
    assert sum(view["connections_refused"] for view in local) == ATTEMPTS - LIMIT

    # The accepted are unharmed: a message still flows between servers.
    await accepted[0].send(op="personal", to=accepted[1].channel_name, data="through the flood")
    assert (await accepted[1].next()) == {"type": "personal", "data": "through the flood"}

    # A freed slot is usable again, by anyone, and only one.
    await accepted[0].close()

    async def slot_freed() -> bool:
        return await connections_of(s2.http_url) == LIMIT - 1

    await eventually(slot_freed, what="the freed slot", interval=0.05)
    second = await asyncio.gather(*(attempt(ATTEMPTS + i) for i in range(4)))
    assert len([client for client in second if client is not None]) == 1
    for server in (s1, s2):
        assert server.alive
        assert "Exception in ASGI application" not in server.log()
