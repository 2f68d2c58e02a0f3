"""A group with members outlives REDIS_GROUP_EXPIRY, however short it is set.

A group's state in Redis (which servers have members, so what a send to it is owed) lives
REDIS_GROUP_EXPIRY seconds unless refreshed. The refresh ran at keeper ticks of 2 s, so an
expiry of 1-2 s could end between two refreshes: the group vanished from Redis with members
in it, and strict sends that missed their server passed for complete (found by a black-box
review, 2026-12-02: 10 of 10 such sends acknowledged and lost). Now the expiry is at least 3,
ticks come every third of it at most, and the refresh is due every quarter of it.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from fastapi import FastAPI

from fastapi_channels import ConnectionManager
from fastapi_channels.backends.redis import RedisBackend
from fastapi_channels.testing import Communicator, LocalCluster
from tests.support.eventually import eventually
from tests.support.member_app import member_app
from tests.support.redis_server import RedisProcess


def room_member(manager: ConnectionManager) -> FastAPI:
    return member_app(manager, join="room")


async def test_a_group_with_members_outlives_the_shortest_group_expiry(redis_server: RedisProcess) -> None:
    async with LocalCluster(
        1, redis_url=redis_server.url, app_factory=room_member, REDIS_GROUP_EXPIRY=3
    ) as cluster:
        (manager,) = cluster.managers
        backend = manager.backend
        assert isinstance(backend, RedisBackend) and backend.tick == 1.0
        async with Communicator(cluster.apps[0], "/ws/member") as member:
            assert (await member.receive_json_from(5))["type"] == "hello"  # joined "room"
            for _ in range(7):  # 7 s: the expiry (3 s) passes twice over
                await asyncio.sleep(1)
                assert await manager.group_size("room") == 1


async def test_a_group_that_expired_with_members_is_written_back(redis_server: RedisProcess) -> None:
    """A keeper tick late past the expiry (a stalled loop, a slow Redis) used to lose the group
    for good: the refresh only extended keys that still existed. Made here by deleting the
    group's keys, as the expiry would."""
    async with LocalCluster(
        1, redis_url=redis_server.url, app_factory=room_member, REDIS_GROUP_EXPIRY=3
    ) as cluster:
        (manager,) = cluster.managers
        async with Communicator(cluster.apps[0], "/ws/member") as member:
            assert (await member.receive_json_from(5))["type"] == "hello"  # joined "room"
            client = aioredis.Redis.from_url(redis_server.url)
            try:
                assert await client.delete(f"{cluster.prefix}group:room", f"{cluster.prefix}gsrv:room") == 2
            finally:
                await client.aclose()
            assert await manager.group_size("room") == 0
            await eventually(lambda: _size_is(manager, 1), what="the membership written back")


async def _size_is(manager: ConnectionManager, size: int) -> bool:
    return await manager.group_size("room") == size


async def test_every_server_writes_its_members_of_an_expired_group_back(redis_server: RedisProcess) -> None:
    """With members on two servers, the first server's write-back recreated the group's keys,
    and the second then found them present and never wrote its own member back (review of
    9fcddeb): a server checks that its own count is there, not only the key."""
    async with LocalCluster(
        2, redis_url=redis_server.url, app_factory=room_member, REDIS_GROUP_EXPIRY=3
    ) as cluster:
        first, _ = cluster.managers
        async with (
            Communicator(cluster.apps[0], "/ws/one") as one,
            Communicator(cluster.apps[1], "/ws/two") as two,
        ):
            for member in (one, two):
                assert (await member.receive_json_from(5))["type"] == "hello"  # joined "room"
            assert await first.group_size("room") == 2
            client = aioredis.Redis.from_url(redis_server.url)
            try:
                assert await client.delete(f"{cluster.prefix}group:room", f"{cluster.prefix}gsrv:room") == 2
            finally:
                await client.aclose()
            await eventually(lambda: _size_is(first, 2), what="both memberships written back")
