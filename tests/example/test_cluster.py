"""Two demo servers on one Redis form one chat (BACKEND_TYPE=redis, one shared SQLite file)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.example.support import ChatClient, ExampleServer, example_env
from tests.support.redis_server import RedisProcess


@pytest.fixture
def two_servers(
    redis_server: RedisProcess, redis_prefix: str, tmp_path: Path
) -> Iterator[list[ExampleServer]]:
    servers: list[ExampleServer] = []
    try:
        for index in range(2):
            server = ExampleServer(
                example_env(
                    tmp_path / "chat.db",
                    BACKEND_TYPE="redis",
                    REDIS_URL=redis_server.url,
                    REDIS_CHANNEL_PREFIX=redis_prefix,
                    SERVER_INSTANCE_ID=f"chat{index}-{redis_prefix.rstrip(':')}",
                    CHAT_RATE_LIMIT_MESSAGES="6",
                    CHAT_RATE_LIMIT_WINDOW="60",
                ),
                log_path=tmp_path / f"server{index}.log",
            )
            servers.append(server)
            server.start()
        yield servers
    finally:
        for server in servers:
            server.kill()


async def join(client: ChatClient, room: str = "general") -> dict[str, object]:
    await client.send("join_room", room=room)
    return await client.expect("room_users", room=room)


async def test_users_on_two_servers_talk_in_one_room(two_servers: list[ExampleServer]) -> None:
    one, two = two_servers
    alice = await ChatClient.open(one.ws_url, "alice")
    bob = await ChatClient.open(two.ws_url, "bob")
    assert alice.welcome["server_id"] != bob.welcome["server_id"]

    await join(alice)
    users = await join(bob)
    assert users["users"] == [
        {"user_id": "alice", "username": "alice"},
        {"user_id": "bob", "username": "bob"},
    ]
    assert (await alice.expect("user_joined_room"))["user_id"] == "bob"

    await alice.send("chat_message", room="general", text="hello from server one")
    assert (await bob.expect("chat_message"))["text"] == "hello from server one"
    await bob.send("chat_message", room="general", text="hello from server two")
    assert (await alice.expect("chat_message", text="hello from server two"))["user_id"] == "bob"

    await bob.send("typing_start", room="general")
    assert (await alice.expect("user_typing_start"))["user_id"] == "bob"

    await alice.send("private_message", to_user="bob", text="psst")
    assert (await alice.expect("private_message_sent"))["delivered"] == 1
    assert (await bob.expect("private_message"))["text"] == "psst"

    await alice.send(
        "file_message",
        room="general",
        name="a.txt",
        mime_type="text/plain",
        data=base64.b64encode(b"across servers").decode(),
    )
    assert base64.b64decode((await bob.expect("file_message"))["data"]) == b"across servers"

    # a room created on one server is announced on the other (database hook -> broadcast)
    await bob.send("create_room", room="ops")
    assert (await alice.expect("room_created", room="ops"))["user_id"] == "bob"

    async with httpx.AsyncClient(timeout=10) as http:
        await http.post(f"{one.http_url}/api/announce", json={"message": "hi all"})
        status = (await http.get(f"{two.http_url}/api/status")).json()
    assert (await bob.expect("announcement"))["message"] == "hi all"
    assert status["backend_type"] == "redis" and status["connections"] == 2

    # history is shared: a newcomer on server two sees what was said on server one
    carol = await ChatClient.open(two.ws_url, "carol")
    await carol.send("join_room", room="general")
    history = (await carol.expect("message_history"))["messages"]
    assert [m["text"] for m in history][:2] == ["hello from server one", "hello from server two"]

    await bob.close()
    left = await alice.expect("user_left")
    assert left["user_id"] == "bob"


async def test_rate_limit_is_shared_by_the_servers(two_servers: list[ExampleServer]) -> None:
    one, two = two_servers
    on_one = await ChatClient.open(one.ws_url, "dave")
    on_two = await ChatClient.open(two.ws_url, "dave")
    await join(on_one)  # 1
    await join(on_two)  # 2
    for index in range(4):  # 3..6, alternating servers
        sender = on_one if index % 2 == 0 else on_two
        await sender.send("chat_message", room="general", text=f"m{index}")
        await sender.expect("chat_message", text=f"m{index}")
    await on_two.send("chat_message", room="general", text="one too many")
    error = await on_two.expect_error("RATE_LIMIT_EXCEEDED")
    assert error["details"]["limit"] == 6
