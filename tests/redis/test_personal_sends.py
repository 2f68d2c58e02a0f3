"""`send_personal` says False for a connection that is gone, wherever it was.

On its own server a closed connection is simply not in the registry. On another server the
send goes through the owner's inbox, and used to say True as long as the owner's server was
listening, so a caller could not tell a delivered frame from one sent to a connection that
had closed. Now the backend checks that the connection is still registered: if not, nothing
is published (one Redis call, no PUBLISH) and the answer is False, from a server or from an
emitter.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from fastapi_channels import Emitter, WSConfig
from fastapi_channels.testing import Communicator, LocalCluster
from tests.support.eventually import eventually
from tests.support.member_app import member_app
from tests.support.redis_server import RedisProcess


async def _publishes(redis_url: str) -> int:
    """PUBLISH calls Redis ran so far (a script's count as well)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        stats: dict[str, Any] = await client.info("commandstats")
        return int(stats.get("cmdstat_publish", {}).get("calls", 0))
    finally:
        await client.aclose()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_personal_send_to_a_connection_closed_on_another_server_says_false(
    backend: str, redis_server: RedisProcess
) -> None:
    redis_url = redis_server.url if backend == "redis" else None
    async with LocalCluster(2, redis_url=redis_url, app_factory=member_app) as cluster:
        sender, owner = cluster.managers
        member = Communicator(cluster.apps[1], "/ws/member")
        connected, _ = await member.connect()
        assert connected
        name = (await member.receive_json_from(5))["channel_name"]

        assert await sender.send_personal(name, {"type": "personal", "data": "open"}) is True
        assert await member.receive_json_from(5) == {"type": "personal", "data": "open"}

        await member.disconnect()
        await eventually(lambda: owner.get_connection(name) is None and owner.get_stats()["connections"] == 0)
        before = await _publishes(redis_server.url) if redis_url else 0
        for _ in range(3):
            assert await sender.send_personal(name, {"type": "personal", "data": "closed"}) is False
        if redis_url:
            assert await _publishes(redis_server.url) == before  # nobody to publish to
        assert sender.get_stats()["delivery_shortfalls"] == 0

        # A name on a live server that never was a connection: the same answer.
        assert await sender.send_personal(f"{owner.server_id}!never-was", {"type": "x"}) is False


async def test_an_emitter_says_false_for_a_connection_that_closed(redis_server: RedisProcess) -> None:
    async with LocalCluster(1, redis_url=redis_server.url, app_factory=member_app) as cluster:
        config = WSConfig(
            BACKEND_TYPE="redis", REDIS_URL=redis_server.url, REDIS_CHANNEL_PREFIX=cluster.prefix
        )
        (owner,) = cluster.managers
        member = Communicator(cluster.apps[0], "/ws/member")
        connected, _ = await member.connect()
        assert connected
        name = (await member.receive_json_from(5))["channel_name"]
        async with Emitter(config) as emitter:
            assert await emitter.send_personal(name, {"type": "personal", "data": "open"}) is True
            assert await member.receive_json_from(5) == {"type": "personal", "data": "open"}
            await member.disconnect()
            await eventually(
                lambda: owner.get_connection(name) is None and owner.get_stats()["connections"] == 0
            )
            assert await emitter.send_personal(name, {"type": "personal", "data": "closed"}) is False
            assert emitter.counters.delivery_shortfalls == 0
