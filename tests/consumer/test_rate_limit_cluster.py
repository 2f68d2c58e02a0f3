"""The README's rate limit across two server processes sharing Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import Redis

from tests.consumer.conftest import WsClient
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
    consumer_servers: Any, redis_server: RedisProcess, redis_prefix: str
) -> None:
    one, two = consumer_servers(
        2,
        BACKEND_TYPE="redis",
        REDIS_URL=redis_server.url,
        REDIS_CHANNEL_PREFIX=redis_prefix,
        CONSUMER_RATE_LIMIT=LIMIT,
        CONSUMER_RATE_WINDOW=WINDOW,
    )
    user = f"rl-{uuid.uuid4().hex[:8]}"
    a = await WsClient.open(one.ws_url, user)
    b = await WsClient.open(two.ws_url, user)
    assert a.channel_name.split("!")[0] != b.channel_name.split("!")[0]  # really two servers

    await a.roundtrip()
    await a.roundtrip()
    await b.roundtrip()  # the 3rd message of the window, on the other server

    await b.send(type="echo", data="4th")
    retry_b = assert_rate_limited(await b.recv())
    await a.send(type="echo", data="5th")
    retry_a = assert_rate_limited(await a.recv())

    # The window is one Redis key for the user, holding the three allowed messages.
    redis = Redis.from_url(redis_server.url)
    try:
        assert await redis.zcard(f"{redis_prefix}ratelimit:user:{user}") == LIMIT
    finally:
        await redis.aclose()

    # Excluded types and heartbeats are not limited, on either server.
    for client in (a, b):
        await client.request("typing_ok", type="typing_start")
        assert (await client.request("pong", type="ping"))["type"] == "pong"

    # Another user is not affected.
    other = await WsClient.open(two.ws_url, f"other-{uuid.uuid4().hex[:8]}")
    await other.roundtrip()

    # Allowed again once the window has passed, on both servers; the connections stayed open.
    await asyncio.sleep(max(retry_a, retry_b) + 0.3)
    await a.roundtrip()
    await b.roundtrip()
    for server in (one, two):
        log = server.log()
        assert "Traceback" not in log and "falls back" not in log, log
