"""Two or more server processes on one Redis behave like one server: on a standalone Redis
and on a Redis Cluster (REDIS_MODE=cluster), the same tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.redis.conftest import ClusterFactory
from tests.support.client import Client
from tests.support.eventually import eventually


@pytest.fixture(params=["standalone", "cluster"])
def topology(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def cluster_view(base_url: str, group: str = "g", user: str = "u") -> dict:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base_url}/cluster", params={"group": group, "user": user}, timeout=10)
        response.raise_for_status()
        return response.json()


async def group_size_is(base_url: str, group: str, size: int) -> bool:
    return bool((await cluster_view(base_url, group=group))["group_size"] == size)


async def test_group_user_broadcast_and_personal_sends_cross_servers(cluster: ClusterFactory) -> None:
    s1, s2 = cluster(2)
    alice = await Client.open(s1.ws_url, "alice")
    bob = await Client.open(s2.ws_url, "bob")
    bob_again = await Client.open(s1.ws_url, "bob")
    carol = await Client.open(s2.ws_url, "carol")  # never joins the room
    for client in (alice, bob, bob_again):
        await client.call("joined", op="join", group="room")

    await alice.send(op="group", group="room", data="hello room")
    for client in (alice, bob, bob_again):
        assert (await client.next()) == {"type": "group", "data": "hello room"}

    reply = await alice.call("user_sent", op="user", user="bob", data="for bob")
    assert reply["count"] == 2
    for client in (bob, bob_again):
        assert (await client.next()) == {"type": "user", "data": "for bob"}

    await carol.send(op="personal", to=alice.channel_name, data="direct")
    assert (await alice.next()) == {"type": "personal", "data": "direct"}

    await bob.send(op="broadcast", data="everyone")
    for client in (alice, bob, bob_again, carol):
        assert (await client.next()) == {"type": "broadcast", "data": "everyone"}
    # carol saw the broadcast but none of the room's traffic: the broadcast was her next frame.

    await bob.send(op="group_except", group="room", data="not to bob")
    for client in (alice, bob_again):
        assert (await client.next()) == {"type": "group", "data": "not to bob"}
    await alice.send(op="personal", to=bob.channel_name, data="marker")
    assert (await bob.next()) == {"type": "personal", "data": "marker"}


async def test_join_leave_and_disconnect_of_a_connection_owned_by_another_server(
    cluster: ClusterFactory,
) -> None:
    s1, s2 = cluster(2)
    admin = await Client.open(s1.ws_url, "admin")
    member = await Client.open(s2.ws_url, "member")

    await admin.call("joined", op="join", channel=member.channel_name, group="news")
    await eventually(lambda: group_size_is(s1.http_url, "news", 1), what="the join", interval=0.05)
    await admin.send(op="group", group="news", data="headline")
    assert (await member.next()) == {"type": "group", "data": "headline"}

    await admin.call("left", op="leave", channel=member.channel_name, group="news")
    await eventually(lambda: group_size_is(s1.http_url, "news", 0), what="the leave", interval=0.05)
    await admin.send(op="group", group="news", data="nobody hears this")
    await admin.send(op="personal", to=member.channel_name, data="marker")
    assert (await member.next()) == {"type": "personal", "data": "marker"}

    await admin.send(op="disconnect", channel=member.channel_name, code=4321)
    with pytest.raises(ConnectionClosed) as closed:
        await member.next()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4321


async def test_cluster_wide_user_limit_holds_under_50_concurrent_connects(cluster: ClusterFactory) -> None:
    s1, s2 = cluster(2, MAX_CONNECTIONS_PER_CLIENT=5)

    async def attempt(index: int) -> Client | None:
        base = s1.ws_url if index % 2 else s2.ws_url
        try:
            return await Client.open(base, "greedy")
        except (ConnectionClosed, AssertionError):
            return None

    results = await asyncio.gather(*(attempt(i) for i in range(50)))
    accepted = [client for client in results if client is not None]
    assert len(accepted) == 5
    view = await cluster_view(s1.http_url, user="greedy")
    assert view["user_connections"] == 5

    await accepted[0].close()

    async def slot_freed() -> bool:
        return bool((await cluster_view(s2.http_url, user="greedy"))["user_connections"] == 4)

    await eventually(slot_freed, what="the freed slot", interval=0.05)
    replacement = await Client.open(s2.ws_url, "greedy")
    assert replacement.channel_name


async def test_refused_client_sees_close_1013_with_the_error_code(cluster: ClusterFactory) -> None:
    (server,) = cluster(1, MAX_CONNECTIONS_PER_CLIENT=1)
    await Client.open(server.ws_url, "solo")
    with pytest.raises(ConnectionClosed) as refused:
        await Client.open(server.ws_url, "solo")
    assert refused.value.rcvd is not None
    assert refused.value.rcvd.code == 1013
    assert refused.value.rcvd.reason == "CONNECTION_LIMIT_EXCEEDED"


async def test_cluster_counts_see_every_server(cluster: ClusterFactory) -> None:
    s1, s2 = cluster(2)
    a = await Client.open(s1.ws_url, "u")
    b = await Client.open(s2.ws_url, "u")
    c = await Client.open(s2.ws_url, "v")
    for client in (a, b, c):
        await client.call("joined", op="join", group="g")
    view = await cluster_view(s1.http_url)
    assert view["connections"] == 3
    assert view["group_size"] == 3
    assert view["group_members"] == sorted([a.channel_name, b.channel_name, c.channel_name])
    assert view["user_connections"] == 2
    assert view["groups"] == 1


async def test_killed_server_state_is_reclaimed_within_the_expiry(
    cluster: ClusterFactory, record_property: Callable[[str, object], None]
) -> None:
    expiry = 2
    doomed, survivor = cluster(2, REDIS_REGISTRY_EXPIRY=expiry, MAX_CONNECTIONS_PER_CLIENT=2)
    victims = [await Client.open(doomed.ws_url, "dave") for _ in range(2)]
    for client in victims:
        await client.call("joined", op="join", group="g")
    witness = await Client.open(survivor.ws_url, "erin")
    await witness.call("joined", op="join", group="g")
    with pytest.raises(ConnectionClosed):
        await Client.open(survivor.ws_url, "dave")

    async def reclaimed() -> bool:
        view = await cluster_view(survivor.http_url, user="dave")
        return bool(view["user_connections"] == 0 and view["group_size"] == 1 and view["connections"] == 1)

    doomed.kill()
    killed_at = time.monotonic()
    await eventually(reclaimed, timeout=expiry + 5, what="the killed server's state", interval=0.1)
    record_property("reclaimed_after_s", round(time.monotonic() - killed_at, 2))
    back = [await Client.open(survivor.ws_url, "dave") for _ in range(2)]
    assert len(back) == 2
    await witness.send(op="group", group="g", data="still here")
    assert (await witness.next()) == {"type": "group", "data": "still here"}
