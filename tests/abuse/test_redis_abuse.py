"""Whoever can publish on the broker, or name a group, must not reach code execution or foreign keys."""

from __future__ import annotations

import asyncio
import pickle
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastapi_channels import ConnectionManager
from fastapi_channels.exceptions import ValidationError
from fastapi_channels.testing import ServerHandle
from tests.support.client import Client
from tests.support.redis_server import RedisProcess
from tests.support.serving import Running, StartServer

EXECUTED: list[str] = []


def mark_executed(marker: str) -> str:
    """What the crafted pickles call when loaded: records the call and touches a file."""
    EXECUTED.append(marker)
    Path(marker).touch()
    return marker


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (mark_executed, (self.marker,))


@pytest.fixture
async def redis_app(
    start_server: StartServer, redis_server: RedisProcess, redis_prefix: str
) -> AsyncIterator[Running]:
    async with start_server(
        BACKEND_TYPE="redis", REDIS_URL=redis_server.url, REDIS_CHANNEL_PREFIX=redis_prefix
    ) as running:
        yield running


@pytest.fixture
async def admin(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_a_crafted_pickle_published_on_a_group_channel_is_never_loaded(
    redis_app: tuple[ServerHandle, ConnectionManager],
    admin: aioredis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    handle, manager = redis_app
    member = await Client.open(handle.ws_url, "member")
    await member.call("joined", op="join", group="room")
    marker = tmp_path / "pwned"
    payloads = [pickle.dumps(Exploit(marker), protocol=p) for p in (0, 2, pickle.HIGHEST_PROTOCOL)]
    assert payloads[0][:1] == b"c"  # protocol 0 starts with GLOBAL: the control envelope's kind byte
    before = manager.get_stats()["backend_messages_invalid"]
    for payload in payloads:
        receivers = await admin.publish(f"{redis_prefix}group:room", payload)
        assert receivers == 1  # the server's subscription did receive it

    await member.send(op="group", group="room", data="after the exploit")
    assert await member.next() == {"type": "group", "data": "after the exploit"}  # nothing came before it
    assert manager.get_stats()["backend_messages_invalid"] - before == len(payloads)
    assert not marker.exists() and not EXECUTED
    # The default configuration refuses pickle even where the app would ask for it.
    assert manager.serializer.name == "orjson"


# Names are any text of 1-200 characters without control characters (routing.validate_name).
# Refused: what could break a line, a log or a key layout, and what is empty or too long.
REFUSED_NAMES = ["", "new\nline", "tab\there", "nul\x00", "esc\x1b[2J", "line\u2028sep", " padded", "x" * 201]
# Accepted: separators, glob characters, lookalikes of keys, spaces, other scripts. Inside Redis
# each is escaped, so none reaches a key or channel outside the prefix or another name's keys.
ACCEPTED_NAMES = [
    "a:b",
    "room*",
    "a|b",
    "two words",
    "prefix:group:other",
    "ü",
    "Café",
    "100%",
    "[a-z]?",
    "x" * 200,
]
# What a key or channel may hold after the test's prefix: the layout's kinds and separators
# (':' between parts, '|' and '!' inside set members are not keys) and escaped names.
KEY_LAYOUT = re.compile(rb"(group|gsrv|users|user|srv|alive|inbox|probe):[A-Za-z0-9_.@+\-%:]+|[a-z]+")


async def all_keys(admin: aioredis.Redis) -> set[bytes]:
    return {key async for key in admin.scan_iter(count=1000)}


async def channels(admin: aioredis.Redis) -> set[bytes]:
    return set(await admin.pubsub_channels())


def escaped(name: str) -> bytes:
    return quote(name, safe="@+").encode()


@pytest.mark.parametrize("name", REFUSED_NAMES)
async def test_a_name_that_could_escape_the_prefix_is_refused_and_writes_no_key(
    redis_app: tuple[ServerHandle, ConnectionManager], admin: aioredis.Redis, redis_prefix: str, name: str
) -> None:
    handle, manager = redis_app
    client = await Client.open(handle.ws_url, "owner")
    await client.call("joined", op="join", group="fine")
    keys_before, channels_before = await all_keys(admin), await channels(admin)

    calls = {
        "join_group": lambda: manager.join_group(client.channel_name, name),
        "leave_group": lambda: manager.leave_group(client.channel_name, name),
        "send_to_group": lambda: manager.send_to_group(name, {"type": "x"}),
        "send_group_except": lambda: manager.send_group_except(name, {"type": "x"}, client.channel_name),
        "send_to_user": lambda: manager.send_to_user(name, {"type": "x"}),
        "group_size": lambda: manager.group_size(name),
        "group_members": lambda: manager.group_members(name),
        "count_user_connections": lambda: manager.count_user_connections(name),
    }
    for method, call in calls.items():
        with pytest.raises(ValidationError) as refused:
            await call()
        assert refused.value.error_code == "INVALID_NAME", method
    # Through the socket too: the command's error frame, the connection kept.
    reply = await client.call("error", op="join", group=name)
    assert reply["error_code"] == "INVALID_NAME"

    if name:
        with pytest.raises(InvalidStatus) as handshake:
            await connect(f"{handle.ws_url}/ws/{quote(name, safe='')}", open_timeout=10)
        assert handshake.value.response.status_code == 403

    await asyncio.sleep(0.05)
    # Nothing new, anywhere in Redis (an escape would land outside our prefix). Keys and
    # channels may go meanwhile: another test's killed server leaves its liveness key to expire.
    assert await all_keys(admin) <= keys_before
    assert await channels(admin) <= channels_before
    assert len(manager.registry) == 1


@pytest.mark.parametrize("name", ACCEPTED_NAMES)
async def test_a_name_with_separators_spaces_or_other_scripts_is_accepted_inside_the_prefix(
    redis_app: tuple[ServerHandle, ConnectionManager], admin: aioredis.Redis, redis_prefix: str, name: str
) -> None:
    handle, manager = redis_app
    keys_before, channels_before = await all_keys(admin), await channels(admin)
    # As a user id (at the handshake), a group name, and a custom connection id.
    user = await Client.open(handle.ws_url, quote(name, safe=""))
    member = await Client.open(f"{handle.ws_url}", f"member?cid={quote(name, safe='')}")
    assert member.channel_name == f"{manager.server_id}!{name}"
    await member.call("joined", op="join", group=name)
    await user.call("joined", op="join", group=name)

    assert await manager.group_size(name) == 2
    assert await manager.group_members(name) == {user.channel_name, member.channel_name}
    assert await manager.count_user_connections(name) == 1
    assert [c.channel_name for c in await manager.get_user_connections(name)] == [user.channel_name]
    await manager.send_to_group(name, {"type": "group", "data": "to the group"})
    assert await member.next() == {"type": "group", "data": "to the group"}
    assert await user.next() == {"type": "group", "data": "to the group"}
    await manager.send_group_except(
        name, {"type": "group", "data": "not you"}, exclude_connection_id=user.channel_name
    )
    assert await member.next() == {"type": "group", "data": "not you"}
    assert await manager.send_to_user(name, {"type": "user", "data": "to the user"}) == 1
    assert await user.next() == {"type": "user", "data": "to the user"}

    new_keys = await all_keys(admin) - keys_before
    new_channels = await channels(admin) - channels_before
    prefix = redis_prefix.encode()
    assert new_keys and new_channels
    outside = [k for k in new_keys | new_channels if not k.startswith(prefix)]
    assert not outside, outside
    for key in new_keys | new_channels:
        assert KEY_LAYOUT.fullmatch(key[len(prefix) :]), key
    # The name is in the layout only escaped: at the group's keys and topics, and the user's.
    assert {
        prefix + b"group:" + escaped(name),
        prefix + b"gsrv:" + escaped(name),
        prefix + b"users:" + escaped(name),
    } <= new_keys
    assert {prefix + b"group:" + escaped(name), prefix + b"user:" + escaped(name)} <= new_channels

    await member.call("left", op="leave", group=name)
    await user.call("left", op="leave", group=name)
    assert await manager.group_size(name) == 0


async def test_a_name_and_its_escaped_spelling_are_different_groups_and_users(
    redis_app: tuple[ServerHandle, ConnectionManager], admin: aioredis.Redis, redis_prefix: str
) -> None:
    handle, manager = redis_app
    plain = await Client.open(handle.ws_url, quote("Carol Smith", safe=""))
    spelled = await Client.open(handle.ws_url, quote("Carol%20Smith", safe=""))
    await plain.call("joined", op="join", group="My Room")
    await spelled.call("joined", op="join", group="My%20Room")

    assert await manager.group_members("My Room") == {plain.channel_name}
    assert await manager.group_members("My%20Room") == {spelled.channel_name}
    await manager.send_to_group("My%20Room", {"type": "group", "data": "escaped"})
    await manager.send_to_group("My Room", {"type": "group", "data": "plain"})
    assert await plain.next() == {"type": "group", "data": "plain"}
    assert await spelled.next() == {"type": "group", "data": "escaped"}
    assert await manager.send_to_user("Carol Smith", {"type": "user", "data": 1}) == 1
    assert await plain.next() == {"type": "user", "data": 1}
    prefix = redis_prefix.encode()
    assert await admin.smembers(prefix + b"group:My%20Room") == {plain.channel_name.encode()}
    assert await admin.smembers(prefix + b"group:My%2520Room") == {spelled.channel_name.encode()}


async def test_count_user_connections_refuses_an_invalid_user_name(
    redis_app: tuple[ServerHandle, ConnectionManager],
) -> None:
    _, manager = redis_app
    with pytest.raises(ValidationError):
        await manager.count_user_connections("line\nbreak")
    assert await manager.count_user_connections("a:b*") == 0  # any other text is a name
