"""The README's rate limit across two servers sharing Redis (a LocalCluster on the session's
redis-server; the servers' transport is not what is under test)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from fastapi_channels import ConnectionManager
from fastapi_channels.testing import Communicator, LocalCluster
from tests.consumer.app import create_app, readme_middleware
from tests.consumer.support import request, roundtrip
from tests.support.redis_server import RedisProcess

WINDOW = 2.0
LIMIT = 3


def assert_rate_limited(error: dict[str, Any]) -> float:
    assert error["type"] == "error" and error["error_code"] == "RATE_LIMIT_EXCEEDED", error
    assert error["category"] == "rate_limit"
    assert error["retryable"] is True
    retry_after = error["details"]["retry_after"]
    assert isinstance(retry_after, int | float) and 0 < retry_after <= WINDOW, error
    assert error["details"]["limit"] == LIMIT and error["details"]["window_seconds"] == WINDOW
    return float(retry_after)


async def test_rate_limit_is_shared_by_two_servers_on_redis(
    redis_server: RedisProcess, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapi_channels")
    redis = Redis.from_url(redis_server.url, encoding="utf-8", decode_responses=True)

    def readme_app(manager: ConnectionManager) -> FastAPI:
        middleware = readme_middleware(manager.config, redis, limit=LIMIT, window=WINDOW)
        return create_app(manager.config, middleware, manager=manager)[0]

    user = f"rl-{uuid.uuid4().hex[:8]}"
    two_servers = LocalCluster(2, redis_url=redis_server.url, prefix=redis_prefix, app_factory=readme_app)
    try:
        async with (
            two_servers as cluster,
            Communicator(cluster.apps[0], f"/ws/{user}") as a,
            Communicator(cluster.apps[1], f"/ws/{user}") as b,
            Communicator(cluster.apps[1], f"/ws/other-{user}") as other,
        ):
            welcomes = [await client.receive_json_from() for client in (a, b, other)]
            servers = [welcome["channel_name"].split("!")[0] for welcome in welcomes[:2]]
            assert servers == [manager.server_id for manager in cluster.managers]  # really two servers

            await roundtrip(a)
            await roundtrip(a)
            await roundtrip(b)  # the 3rd message of the window, on the other server

            await b.send_json_to({"type": "echo", "data": "4th"})
            retry_b = assert_rate_limited(await b.receive_json_from())
            await a.send_json_to({"type": "echo", "data": "5th"})
            retry_a = assert_rate_limited(await a.receive_json_from())

            # The window is one Redis key for the user, holding the three allowed messages.
            assert await redis.zcard(f"{redis_prefix}ratelimit:user:{user}") == LIMIT

            # Excluded types and heartbeats are not limited, on either server.
            for client in (a, b):
                await request(client, "typing_ok", type="typing_start")
                await request(client, "pong", type="ping")

            await roundtrip(other)  # another user is not affected

            # Allowed again once the window has passed, on both servers; the connections stayed open.
            await asyncio.sleep(max(retry_a, retry_b) + 0.3)
            await roundtrip(a)
            await roundtrip(b)
    finally:
        await redis.aclose()
    assert not [r for r in caplog.records if "falls back" in r.getMessage() or r.exc_info]
