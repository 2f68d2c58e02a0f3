"""Emitter and SyncEmitter: sends from processes that are not servers (workers, scripts).

Each test runs two uvicorn servers of the test app on the session's Redis and real WebSocket
clients; the emitters publish the same envelopes a server does, with no manager.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot
from websockets.exceptions import ConnectionClosed

from fastapi_channels import Emitter, SyncEmitter, WSConfig
from fastapi_channels.backends.redis import RedisBackend
from fastapi_channels.backends.redis_keys import RedisKeys
from fastapi_channels.backends.redis_publish import audience
from fastapi_channels.emitter import _Core, _Send
from fastapi_channels.exceptions import BackendError, ConnectionError, DeliveryError, ValidationError
from fastapi_channels.testing import free_port
from tests.emitter.conftest import TwoServers, eventually, redis_config
from tests.support.client import Client
from tests.support.redis_server import RedisProcess


async def _members(
    two: TwoServers, group: str, users: tuple[str, ...] = ("a", "b", "c"), **options: Any
) -> list[Client]:
    """One client per user, alternating between the two servers, each a member of `group`
    (`options` go to `Client.open`)."""
    clients = []
    for index, user in enumerate(users):
        client = await Client.open(two.handles[index % 2].ws_url, user, **options)
        await client.call("joined", op="join", group=group)
        clients.append(client)
    return clients


async def test_an_emitter_reaches_every_kind_of_target_on_two_servers(
    two_servers: TwoServers, redis_server: RedisProcess, redis_prefix: str
) -> None:
    a, b, c = await _members(two_servers, "room")
    a_again = await Client.open(two_servers.handles[1].ws_url, "a")  # user a on both servers
    async with Emitter(redis_config(redis_server, redis_prefix)) as emitter:
        await emitter.send_to_group("room", {"type": "group", "data": "from a worker"})
        for client in (a, b, c):
            assert await client.next() == {"type": "group", "data": "from a worker"}

        await emitter.send_group_except("room", {"type": "group", "data": "not to b"}, b.channel_name)
        for client in (a, c):
            assert await client.next() == {"type": "group", "data": "not to b"}

        assert await emitter.send_to_user("a", {"type": "user", "data": "for a"}) == 2
        for client in (a, a_again):
            assert await client.next() == {"type": "user", "data": "for a"}

        assert await emitter.send_personal(b.channel_name, {"type": "personal", "data": "only b"})
        assert await b.next() == {"type": "personal", "data": "only b"}  # b skipped "not to b"

        await emitter.broadcast({"type": "broadcast", "data": "all"})
        for client in (a, b, c, a_again):
            assert await client.next() == {"type": "broadcast", "data": "all"}

        assert emitter.counters.messages_published == 5
        assert emitter.counters.delivery_shortfalls == 0


async def test_the_sync_emitter_reaches_them_too_from_a_thread_without_an_event_loop(
    two_servers: TwoServers, redis_server: RedisProcess, redis_prefix: str
) -> None:
    a, b = await _members(two_servers, "room", ("a", "b"))
    a_again = await Client.open(two_servers.handles[1].ws_url, "a")
    config = redis_config(redis_server, redis_prefix)

    def work() -> tuple[int, bool, bool]:
        with SyncEmitter(config) as emitter:
            emitter.send_to_group("room", {"type": "group", "data": "sync"})
            emitter.send_group_except("room", {"type": "group", "data": "not to a"}, exclude=[a.channel_name])
            count = emitter.send_to_user("a", {"type": "user", "data": "for a"})
            personal = emitter.send_personal(b.channel_name, {"type": "personal", "data": "b"})
            gone = emitter.send_personal("server-gone!x", {"type": "personal", "data": "nobody"})
            emitter.broadcast("plain text goes out verbatim")
            return count, personal, gone

    count, personal, gone = await asyncio.to_thread(work)
    assert (count, personal, gone) == (2, True, False)
    assert await a.next() == {"type": "group", "data": "sync"}
    assert await b.next() == {"type": "group", "data": "sync"}
    assert await b.next() == {"type": "group", "data": "not to a"}
    for client in (a, a_again):
        assert await client.next() == {"type": "user", "data": "for a"}
    assert await b.next() == {"type": "personal", "data": "b"}
    for client in (a, b, a_again):
        assert await client.ws.recv() == "plain text goes out verbatim"


async def test_an_emitter_joins_leaves_and_disconnects_a_connection_on_any_server(
    two_servers: TwoServers, redis_server: RedisProcess, redis_prefix: str
) -> None:
    owner = two_servers.managers[1]
    member = await Client.open(two_servers.handles[1].ws_url, "m")
    connection = owner.get_connection(member.channel_name)
    assert connection is not None
    async with Emitter(redis_config(redis_server, redis_prefix)) as emitter:
        await emitter.join_group(member.channel_name, "news")
        await eventually(lambda: "news" in connection.groups, what="the owner's join")
        await emitter.send_to_group("news", {"type": "group", "data": "headline"})
        assert await member.next() == {"type": "group", "data": "headline"}

        await emitter.leave_group(member.channel_name, "news")
        await eventually(lambda: "news" not in connection.groups, what="the owner's leave")

        # A connection whose server is gone: nobody listens on its inbox.
        with pytest.raises(ConnectionError) as gone:
            await emitter.join_group("server-gone!abc", "news")
        assert gone.value.error_code == "CONNECTION_NOT_FOUND"
        with pytest.raises(ConnectionError) as unparsable:
            await emitter.join_group("not a channel name", "news")
        assert unparsable.value.error_code == "CONNECTION_NOT_FOUND"

        await emitter.disconnect(member.channel_name, 4321, "bye")
        with pytest.raises(ConnectionClosed) as closed:
            await member.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4321
        await emitter.disconnect("server-gone!abc")  # idempotent, like the manager's

    def sync_join() -> None:
        with SyncEmitter(redis_config(redis_server, redis_prefix)) as emitter:
            emitter.join_group(other.channel_name, "sync-room")

    other = await Client.open(two_servers.handles[0].ws_url, "o")
    await asyncio.to_thread(sync_join)
    second = two_servers.managers[0].get_connection(other.channel_name)
    assert second is not None
    await eventually(lambda: "sync-room" in second.groups, what="the owner's join from the sync emitter")


async def test_an_emitter_registers_nothing_and_subscribes_to_nothing(
    two_servers: TwoServers, redis_server: RedisProcess, redis_prefix: str
) -> None:
    await _members(two_servers, "room", ("a",))
    probe = aioredis.Redis.from_url(redis_server.url)
    try:

        async def keys() -> set[bytes]:
            return set(await probe.keys(redis_prefix + "*"))

        async def subscribers() -> int:
            return sum(1 for client in await probe.client_list() if int(client["sub"]) or int(client["psub"]))

        before_keys, before_subscribers = await keys(), await subscribers()
        servers_before = await probe.zrange(redis_prefix + "servers", 0, -1)
        config = redis_config(redis_server, redis_prefix)
        async with Emitter(config) as emitter:
            await emitter.send_to_group("room", {"type": "x"})
            await emitter.broadcast({"type": "x"})
            with SyncEmitter(config) as sync_emitter:
                sync_emitter.send_to_user("a", {"type": "x"})
                assert await keys() == before_keys
                assert await subscribers() == before_subscribers
                assert await probe.zrange(redis_prefix + "servers", 0, -1) == servers_before
    finally:
        await probe.aclose()


async def _commands(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name not in {"cmdstat_config|resetstat", "cmdstat_info"}
    }


async def test_an_emitter_send_costs_the_same_redis_commands_as_a_server_send(
    two_servers: TwoServers,
    redis_server: RedisProcess,
    redis_prefix: str,
    record_property: pytest.RecordProperty,
) -> None:
    """Measured from Redis's own counters, per kind of send, with the keepers kept quiet."""
    # The clients read nothing: an unbounded queue lets their close go through at the end
    # (websockets stops reading past 16 frames, and its close would wait for its timeout).
    clients = await _members(two_servers, "room", ("a", "b"), max_queue=None)
    manager = two_servers.managers[0]
    for server in two_servers.managers:
        assert isinstance(server.backend, RedisBackend)
        if server.backend._keeper is not None:  # liveness refreshes would blur the counts
            server.backend._keeper.cancel()
    config = redis_config(redis_server, redis_prefix)
    probe = aioredis.Redis.from_url(redis_server.url)
    sends = 10
    try:
        async with Emitter(config) as emitter:
            with SyncEmitter(config) as sync_emitter:
                # Warm every path once (the first EVALSHA of a client may load the script).
                await manager.send_to_group("room", "warm")
                await emitter.send_to_group("room", "warm")
                await asyncio.to_thread(sync_emitter.send_to_group, "room", "warm")
                costs: dict[str, dict[str, int]] = {}
                for who in ("server", "emitter", "sync emitter"):
                    await probe.config_resetstat()
                    for index in range(sends):
                        if who == "server":
                            await manager.send_to_group("room", {"i": index})
                            await manager.send_to_user("a", {"i": index})
                            await manager.broadcast({"i": index})
                        elif who == "emitter":
                            await emitter.send_to_group("room", {"i": index})
                            await emitter.send_to_user("a", {"i": index})
                            await emitter.broadcast({"i": index})
                        else:
                            await asyncio.to_thread(sync_emitter.send_to_group, "room", {"i": index})
                            await asyncio.to_thread(sync_emitter.send_to_user, "a", {"i": index})
                            await asyncio.to_thread(sync_emitter.broadcast, {"i": index})
                    costs[who] = await _commands(probe)
    finally:
        await probe.aclose()
    record_property("redis_commands_per_30_sends", costs)
    # One script call (EVALSHA) and one PUBLISH per send; the rest run inside the script.
    assert costs["server"]["evalsha"] == costs["server"]["publish"] == 3 * sends, costs
    assert costs["emitter"] == costs["server"]
    assert costs["sync emitter"] == costs["server"]
    assert all(client.channel_name for client in clients)


async def test_a_delivery_shortfall_is_counted_and_raised_when_strict(
    two_servers: TwoServers, redis_server: RedisProcess, redis_prefix: str
) -> None:
    await _members(two_servers, "room", ("a",))
    probe = redis.Redis.from_url(redis_server.url)
    # A live server that counts members of the group but listens to nothing: owed, not reached.
    probe.zadd(redis_prefix + "servers", {"ghost": (time.time() + 60) * 1000})  # alive for a minute
    probe.hset(redis_prefix + "gsrv:room", "ghost", 1)
    probe.close()
    async with Emitter(redis_config(redis_server, redis_prefix)) as lenient:
        await lenient.send_to_group("room", {"type": "x"})
        assert lenient.counters.delivery_shortfalls == 1
    async with Emitter(redis_config(redis_server, redis_prefix, WS_STRICT_DELIVERY=True)) as strict:
        with pytest.raises(DeliveryError) as raised:
            await strict.send_to_group("room", {"type": "x"})
        assert raised.value.details == {"topic": "group:room", "reached": 1, "expected": 2}
        assert strict.counters.delivery_shortfalls == 1
    with SyncEmitter(redis_config(redis_server, redis_prefix, WS_STRICT_DELIVERY=True)) as sync_strict:
        with pytest.raises(DeliveryError):
            sync_strict.send_to_group("room", {"type": "x"})
        assert sync_strict.counters.delivery_shortfalls == 1


def test_the_emitters_refuse_the_memory_backend() -> None:
    for emitter_class in (Emitter, SyncEmitter):
        with pytest.raises(ValueError, match="BACKEND_TYPE=redis"):
            emitter_class(WSConfig(BACKEND_TYPE="memory"))


async def test_an_unreachable_redis_is_a_retryable_backend_error(redis_prefix: str) -> None:
    config = WSConfig(
        BACKEND_TYPE="redis",
        REDIS_URL=f"redis://:secret@127.0.0.1:{free_port()}/0",
        REDIS_CHANNEL_PREFIX=redis_prefix,
    )
    async with Emitter(config) as emitter:
        with pytest.raises(BackendError) as raised:
            await emitter.send_to_group("room", {"type": "x"})
        assert raised.value.error_code == "BACKEND_UNAVAILABLE" and raised.value.retryable
        assert "secret" not in str(raised.value)
        assert emitter.counters.publish_failures == 1
    with SyncEmitter(config) as sync_emitter, pytest.raises(BackendError):
        sync_emitter.broadcast({"type": "x"})
    assert sync_emitter.counters.publish_failures == 1


def test_invalid_names_are_refused_before_they_reach_redis(
    redis_server: RedisProcess, redis_prefix: str
) -> None:
    with SyncEmitter(redis_config(redis_server, redis_prefix)) as emitter:
        for call in (
            lambda: emitter.send_to_group("", {}),
            lambda: emitter.send_to_user("bad\nname", {}),
        ):
            with pytest.raises(ValidationError):
                call()
        assert emitter.counters.messages_published == 0


@pytest.mark.parametrize(("mode", "partitions"), [("standalone", 1), ("cluster", 3), ("cluster", 5)])
def test_the_publish_call_is_the_backends(redis_prefix: str, mode: str, partitions: int) -> None:
    """The emitters and RedisBackend build the same `publish` call for every kind of topic: the
    same keys, in the same partition of a cluster's layout, and the same channel."""
    config = WSConfig(
        BACKEND_TYPE="redis",
        REDIS_MODE=mode,
        REDIS_CHANNEL_PREFIX=redis_prefix,
        REDIS_CLUSTER_PARTITIONS=partitions,
    )
    backend = RedisBackend.from_config(config)
    core = _Core(config)
    topics = ["group:room", "group:Café|x", "user:alice", "inbox:server-1", "broadcast"]
    topics += [f"group:g{i}" for i in range(40)]
    slots = set()
    for topic in topics:
        keys, args = backend.publish_call(topic, b"payload", exact=False)
        _, emitter_keys, emitter_args = core.call(_Send(topic, b"payload", "fanout"))
        assert emitter_keys == keys
        assert emitter_args[:3] == args[:3]  # channel, payload, audience kind
        if mode == "cluster":  # every key and the channel in the partition's slot
            assert {key_slot(name.encode()) for name in [*keys, args[0]]} == {key_slot(keys[0].encode())}
        slots.add(key_slot(keys[0].encode()))
        home = RedisKeys(backend.layout.prefixes[backend.layout.of_topic(topic)], "")
        assert audience(home, topic)[0] in keys
    assert len(slots) == (partitions if mode == "cluster" else 1)


async def test_a_closed_emitter_refuses_to_send_and_closing_twice_is_harmless(
    redis_server: RedisProcess, redis_prefix: str
) -> None:
    emitter = Emitter(redis_config(redis_server, redis_prefix))
    await emitter.broadcast({"type": "x"})
    await emitter.aclose()
    await emitter.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await emitter.broadcast({"type": "x"})
    sync_emitter = SyncEmitter(redis_config(redis_server, redis_prefix))
    sync_emitter.broadcast({"type": "x"})
    sync_emitter.close()
    sync_emitter.close()
    with pytest.raises(RuntimeError, match="closed"):
        sync_emitter.broadcast({"type": "x"})


async def test_an_emitter_send_to_a_history_group_is_stored_and_numbered_like_a_servers(
    two_servers: TwoServers, redis_server: RedisProcess, redis_prefix: str
) -> None:
    for manager in two_servers.managers:
        manager.enable_history("room.*")
    a, b = await _members(two_servers, "room.1", ("a", "b"))
    config = redis_config(redis_server, redis_prefix, WS_HISTORY_GROUPS="room.*")
    async with Emitter(config) as emitter:
        await emitter.send_to_group("room.1", {"type": "news", "n": 1})
        await emitter.send_to_group("room.1", {"type": "typing"}, history=False)  # ephemeral
        await emitter.send_group_except("room.1", {"type": "news", "n": 2}, exclude=[b.channel_name])
    with SyncEmitter(redis_config(redis_server, redis_prefix)) as sync_emitter:
        sync_emitter.enable_history("room.*")  # as a server's enable_history
        await asyncio.to_thread(sync_emitter.send_to_group, "room.1", {"type": "news", "n": 3})

    received_a = [await a.next() for _ in range(4)]
    received_b = [await b.next() for _ in range(3)]
    epoch = received_a[0]["epoch"]
    assert received_a == [
        {"offset": 1, "epoch": epoch, "type": "news", "n": 1},
        {"type": "typing"},
        {"offset": 2, "epoch": epoch, "type": "news", "n": 2},
        {"offset": 3, "epoch": epoch, "type": "news", "n": 3},
    ]
    assert received_b == [received_a[0], received_a[1], received_a[3]]
    page = await two_servers.managers[1].history("room.1")
    assert [message["n"] for message in page.messages] == [1, 2, 3] and page.offset == 3


async def test_the_emitters_build_the_backends_script_calls() -> None:
    """The same KEYS and ARGV as RedisBackend for `publish` and `publish_history` (the fresh
    random ids aside), so the two cannot drift apart."""
    from fastapi_channels.backends.redis_publish import epoch_args, publish_call, publish_history_call

    backend = RedisBackend(prefix="p:")
    calls: list[tuple[str, list[str], list[object]]] = []

    def script(name: str) -> object:
        async def call(*, keys: list[str], args: list[object]) -> list[object]:
            calls.append((name, keys, args))
            return [1, 1, 1, b"e"] if name == "publish" else [1, 1, 1, b"e", 7, b"h"]

        return call

    backend.state.script = script  # type: ignore[method-assign]
    keys = RedisKeys("p:", "")
    for topic in ("group:g", "user:u", "inbox:srv", "broadcast"):
        known = backend.state.epoch
        await backend.publish(topic, b"payload")
        _, backend_keys, backend_args = calls.pop()
        mine_keys, mine_args = publish_call(keys, topic, b"payload", epoch_args(known, 2000), exact=False)
        assert backend_keys == mine_keys
        assert _without_fresh_ids(backend_args, [5]) == _without_fresh_ids(mine_args, [5])
    known = backend.state.epoch
    await backend.publish_history("group:g", "g", b"o", b"i", '{"a":1}', 10, 60)
    _, backend_keys, backend_args = calls.pop()
    mine_keys, mine_args = publish_history_call(
        keys, "g", b"o", b"i", '{"a":1}', epoch_args(known, 2000), size=10, ttl=60
    )
    assert backend_keys == mine_keys
    assert _without_fresh_ids(backend_args, [7, 11]) == _without_fresh_ids(mine_args, [7, 11])


def _without_fresh_ids(args: list[object], positions: list[int]) -> list[object]:
    return [value for index, value in enumerate(args) if index not in positions]
