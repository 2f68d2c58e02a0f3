"""Costs that must not grow with a group's size, read from Redis's own command counters."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from fastapi_channels import WSConfig
from fastapi_channels.backends.redis import RedisBackend
from fastapi_channels.testing import serve
from tests.app import create_app
from tests.support.client import Client
from tests.support.redis_server import RedisProcess


def _config(redis_server: RedisProcess, prefix: str) -> WSConfig:
    return WSConfig(
        BACKEND_TYPE="redis", REDIS_URL=redis_server.url, REDIS_CHANNEL_PREFIX=prefix, LOG_STATS=False
    )


def _backend(redis_server: RedisProcess, prefix: str) -> RedisBackend:
    # A keeper period far beyond the test keeps liveness refreshes out of the command counts.
    return RedisBackend(redis_server.url, prefix=prefix, self_check_interval=3600)


async def _commands(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def test_a_group_send_costs_the_same_redis_commands_whatever_the_group_size(
    redis_server: RedisProcess, redis_prefix: str
) -> None:
    app1, manager1 = create_app(
        _config(redis_server, redis_prefix), backend=_backend(redis_server, redis_prefix)
    )
    app2, _ = create_app(_config(redis_server, redis_prefix), backend=_backend(redis_server, redis_prefix))
    probe = aioredis.Redis.from_url(redis_server.url)
    async with serve(app1) as s1, serve(app2) as s2:
        members: dict[str, list[Client]] = {"small": [], "big": []}
        for group, size in (("small", 4), ("big", 60)):
            for index in range(size):
                base = s1.ws_url if index % 2 else s2.ws_url
                client = await Client.open(base, f"{group}{index}")
                await client.call("joined", op="join", group=group)
                members[group].append(client)

        cost: dict[str, int] = {}
        publishes: dict[str, int] = {}
        for group in ("small", "big"):
            await probe.config_resetstat()
            for sequence in range(20):
                await manager1.send_to_group(group, {"type": "group", "data": sequence})
            counts = await _commands(probe)
            cost[group] = sum(
                calls for name, calls in counts.items() if name not in {"config|resetstat", "info"}
            )
            publishes[group] = counts.get("publish", 0)
            for client in members[group]:
                received = [(await client.next())["data"] for _ in range(20)]
                assert received == list(range(20))

        assert publishes == {"small": 20, "big": 20}
        assert cost["big"] <= cost["small"], cost

        # Subscriptions grow with groups and users, not with connections: 32 connections of
        # the big group on one server are one subscription to its topic.
        assert "group:big" in manager1.subscribed_topics
        assert len([t for t in manager1.subscribed_topics if t.startswith("group:")]) == 2
        for clients in members.values():
            await asyncio.gather(*(client.close() for client in clients))
    await probe.aclose()


async def test_counting_and_admitting_cost_the_same_redis_work_whatever_the_size(
    redis_server: RedisProcess, redis_prefix: str
) -> None:
    """group_size, count_user_connections, a user send, a group send and a connect for a user
    run the same Redis commands for 3 members as for 3,000 (counts are kept per server)."""
    from fastapi_channels.routing import group_topic, new_channel_name, user_topic

    nodes = [_backend(redis_server, redis_prefix) for _ in range(2)]
    for index, node in enumerate(nodes):
        await node.start(f"srv{index}", lambda _topic, _payload: None)
    probe = aioredis.Redis.from_url(redis_server.url)
    big = 1 << 30
    try:
        for label, size in (("small", 3), ("large", 3000)):
            for start in range(0, size, 200):
                batch = range(start, min(size, start + 200))
                channels = [(nodes[i % 2], new_channel_name(f"srv{i % 2}")) for i in batch]
                await asyncio.gather(
                    *(
                        n.add_connection(c, f"user-{label}", max_per_user=big, max_total=big)
                        for n, c in channels
                    )
                )
                await asyncio.gather(*(n.group_add(f"group-{label}", c, max_groups=big) for n, c in channels))

        cost: dict[str, dict[str, int]] = {}
        for label in ("small", "large"):
            await probe.config_resetstat()
            node = nodes[0]
            assert await node.group_size(f"group-{label}") == (3 if label == "small" else 3000)
            await node.count_user_connections(f"user-{label}")
            await node.publish_to_user(user_topic(f"user-{label}"), f"user-{label}", b"tx")
            await node.publish(group_topic(f"group-{label}"), b"tx")
            await node.add_connection(
                new_channel_name("srv0"), f"user-{label}", max_per_user=big, max_total=big
            )
            counts = await _commands(probe)
            cost[label] = {
                name: calls
                for name, calls in counts.items()
                if name not in {"config|resetstat", "info", "evalsha", "eval", "script|load"}
            }
        assert cost["large"] == cost["small"], cost
        assert cost["small"]["publish"] == 2
        # Nothing on these paths reads a member set (a Lua loop over it would be O(members)).
        assert not {"smembers", "sscan", "scard", "sismember"} & set(cost["large"]), cost
    finally:
        for node in nodes:
            await node.stop()
        await probe.aclose()
