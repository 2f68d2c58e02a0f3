"""The broker can fail: unreachable at start, restarted mid-run, pub/sub connection killed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.backends.redis import RedisBackend
from fastapi_channels.exceptions import BackendError
from fastapi_channels.testing import free_port
from tests.redis.conftest import ClusterFactory
from tests.support.client import Client
from tests.support.eventually import eventually
from tests.support.redis_server import RedisProcess


async def stats(base_url: str) -> dict:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{base_url}/stats", timeout=10)).json()


async def until_group_flows(sender: Client, receivers: list[Client], deadline: float) -> float:
    """Send numbered group messages until one reaches every receiver; returns when it did."""
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        await sender.send(op="group", group="room", data=f"probe-{attempt}")
        try:
            got = []
            for client in receivers:
                while True:
                    frame = await client.next(timeout=0.5)
                    if frame["type"] == "group" and frame["data"] == f"probe-{attempt}":
                        got.append(client)
                        break
            if len(got) == len(receivers):
                return time.monotonic()
        except TimeoutError:
            continue
    raise AssertionError("group traffic did not resume")


async def test_unreachable_redis_at_start_fails_clearly_after_the_configured_attempts() -> None:
    config = WSConfig(
        BACKEND_TYPE="redis",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        WS_RECONNECT_MAX_ATTEMPTS=3,
        WS_RECONNECT_DELAY=0.05,
        LOG_STATS=False,
    )
    manager = ConnectionManager(config)
    started = time.monotonic()
    with pytest.raises(BackendError) as failure:
        await manager.start_tasks()
    assert failure.value.error_code == "BACKEND_UNAVAILABLE"
    assert "after 3 attempts" in failure.value.message
    assert time.monotonic() - started >= 0.1  # it did wait between attempts (twice)
    assert not manager.get_stats()["started"]


async def test_redis_restart_mid_run_recovers_state_and_traffic(
    cluster: ClusterFactory, own_redis: RedisProcess, record_property: Callable[[str, object], None]
) -> None:
    s1, s2 = cluster(2, redis=own_redis, REDIS_REGISTRY_EXPIRY=3)
    clients = [await Client.open(s.ws_url, f"user{i}") for i, s in enumerate((s1, s2, s1, s2))]
    for client in clients:
        await client.call("joined", op="join", group="room")

    own_redis.kill()
    # A send during the outage is a typed, retryable backend error, not a crash.
    await clients[0].send(op="group", group="room", data="lost in the outage")
    error = await clients[0].next(timeout=15)
    assert error["type"] == "error" and error["error_code"] == "BACKEND_UNAVAILABLE" and error["retryable"]
    # A new client cannot be admitted (limits cannot be checked): a clean "try again later".
    with pytest.raises(ConnectionClosed) as refused:
        await Client.open(s2.ws_url, "latecomer")
    assert refused.value.rcvd is not None
    assert (refused.value.rcvd.code, refused.value.rcvd.reason) == (1013, "BACKEND_UNAVAILABLE")

    own_redis.start()
    back_at = time.monotonic()
    resumed_at = await until_group_flows(clients[1], clients, deadline=back_at + 10)
    assert resumed_at - back_at < 10
    record_property("traffic_resumed_after_s", round(resumed_at - back_at, 2))

    # Every message after recovery reaches every member.
    for sequence in range(50):
        await clients[sequence % 4].send(op="group", group="room", data=sequence)
    for client in clients:
        data = []
        while len(data) < 50:
            frame = await client.next()
            if frame["type"] == "group" and isinstance(frame["data"], int):
                data.append(frame["data"])
        assert sorted(data) == list(range(50))

    # State written again: both servers' connections and memberships are back in Redis.
    async with httpx.AsyncClient() as http:

        async def rewritten() -> bool:
            view = (await http.get(f"{s1.http_url}/cluster", params={"group": "room"})).json()
            return bool(view["connections"] == 4 and view["group_size"] == 4)

        await eventually(rewritten, timeout=10, what="the state written again", interval=0.1)
    for server in (s1, s2):
        assert server.alive
        assert (await stats(server.http_url))["backend_outages"] >= 1
        assert "Exception in ASGI application" not in server.log()


async def test_killed_pubsub_connection_is_noticed_and_repaired(
    cluster: ClusterFactory, redis_server: RedisProcess
) -> None:
    s1, s2 = cluster(2)
    a = await Client.open(s1.ws_url, "a")
    b = await Client.open(s2.ws_url, "b")
    for client in (a, b):
        await client.call("joined", op="join", group="room")
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        killed = await admin.client_kill_filter(_type="pubsub")
        assert killed >= 2
    finally:
        await admin.aclose()
    await until_group_flows(a, [a, b], deadline=time.monotonic() + 10)
    for server in (s1, s2):
        assert (await stats(server.http_url))["backend_outages"] >= 1


async def test_a_deaf_subscription_is_detected_by_the_probe_and_rebuilt(
    redis_server: RedisProcess, redis_prefix: str
) -> None:
    backend = RedisBackend(redis_server.url, prefix=redis_prefix, self_check_interval=0.2)
    received: list[bytes] = []
    events: list[str] = []
    backend.add_event_listener(lambda event, _error: events.append(event))
    await backend.start("deaf-test", lambda _topic, payload: received.append(payload))
    try:
        await backend.subscribe("group:x")
        # Make the subscription silently deaf: unsubscribe behind the backend's back.
        assert backend.reader is not None and backend.reader._pubsub is not None
        await backend.reader._pubsub.unsubscribe()
        await eventually(lambda: backend.deaf_repairs >= 1, what="the probe to notice", interval=0.05)
        await eventually(lambda: "recovered" in events, what="the recovery", interval=0.05)
        assert events[:2] == ["lost", "recovered"]
        for _ in range(100):
            await backend.publish("group:x", b"tback")
            await asyncio.sleep(0.05)
            if received:
                break
        assert received and received[0] == b"tback"
    finally:
        await backend.stop()
