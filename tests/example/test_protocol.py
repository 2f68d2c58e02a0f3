"""The chat protocol over real WebSockets, one test per message type and its errors."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from example.protocol import CLIENT_MESSAGES, SERVER_FRAMES
from tests.example.conftest import ChatFactory, RunningChat
from tests.example.support import ChatClient
from tests.support.eventually import eventually


async def joined(chat: RunningChat, user: str, room: str = "general") -> ChatClient:
    client = await ChatClient.open(chat.ws_url, user)
    await client.send("join_room", room=room)
    for kind in ("room_joined", "room_info", "message_history", "room_users"):
        await client.expect(kind, room=room)
    return client


async def test_welcome_lists_rooms_and_ping_gets_pong(chat: RunningChat) -> None:
    alice = await ChatClient.open(chat.ws_url, "alice")
    welcome = alice.welcome
    assert welcome["user_id"] == "alice" and welcome["username"] == "alice"
    assert welcome["server_id"] == chat.app.state.manager.server_id
    assert {"general", "random"} <= {room["room"] for room in welcome["rooms"]}
    assert welcome["max_file_bytes"] == 4096
    await alice.send("ping")
    pong = await alice.expect("pong")
    assert pong["timestamp"] > 0


async def test_list_rooms_counts_members(chat: RunningChat) -> None:
    alice = await joined(chat, "alice")
    await alice.send("list_rooms")
    rooms = {room["room"]: room for room in (await alice.expect("rooms_list"))["rooms"]}
    assert rooms["general"]["member_count"] == 1
    assert rooms["random"]["member_count"] == 0


async def test_join_room_sends_info_history_users_and_tells_members(chat: RunningChat) -> None:
    alice = await joined(chat, "alice")
    await alice.send("chat_message", room="general", text="before bob")
    await alice.expect("chat_message", text="before bob")

    bob = await ChatClient.open(chat.ws_url, "bob")
    await bob.send("join_room", room="general")
    assert (await bob.expect("room_joined"))["room"] == "general"
    info = await bob.expect("room_info")
    assert info["room"] == "general" and info["member_count"] == 2 and info["description"] == "Everyone"
    history = await bob.expect("message_history")
    assert [m["text"] for m in history["messages"]] == ["before bob"]
    users = await bob.expect("room_users")
    assert [u["user_id"] for u in users["users"]] == ["alice", "bob"]

    joined_frame = await alice.expect("user_joined_room")
    assert joined_frame["user_id"] == "bob" and joined_frame["room"] == "general"


async def test_join_unknown_room_creates_it_and_bad_room_name_is_refused(chat: RunningChat) -> None:
    alice = await ChatClient.open(chat.ws_url, "alice")
    await alice.send("join_room", room="nowhere")  # as in the spec's example: created, then joined
    assert (await alice.expect("room_info", room="nowhere"))["created_by"] == "alice"
    await alice.expect("room_created", room="nowhere")
    assert await chat.app.state.db.get_room("nowhere") is not None
    await alice.send("join_room", room="no spaces!")
    error = await alice.expect_error("INVALID_MESSAGE_DATA")
    assert error["details"]["field"] == "data.room"
    await alice.send("join_room")
    error = await alice.expect_error("INVALID_MESSAGE_DATA")
    assert error["details"]["field"] == "data.room"
    # the connection stays usable after errors
    await alice.send("join_room", room="general")
    await alice.expect("room_joined", room="general")


async def test_chat_message_reaches_every_member_and_is_stored(chat: RunningChat) -> None:
    alice = await joined(chat, "alice")
    bob = await joined(chat, "bob")
    outsider = await ChatClient.open(chat.ws_url, "carol")

    await alice.send("chat_message", room="general", text="  hello <b>bob</b>  ")
    mine = await alice.expect("chat_message")
    theirs = await bob.expect("chat_message")
    assert mine == theirs
    assert theirs["text"] == "hello <b>bob</b>" and theirs["user_id"] == "alice" and theirs["id"] > 0
    assert not [f for f in await outsider.sync() if f["type"] == "chat_message"]

    stored = await chat.app.state.db.recent_messages("general", 10)
    assert [m["text"] for m in stored] == ["hello <b>bob</b>"]


async def test_chat_message_errors(chat: RunningChat) -> None:
    alice = await ChatClient.open(chat.ws_url, "alice")
    await alice.send("chat_message", room="general", text="not joined")
    error = await alice.expect_error("NOT_IN_ROOM")
    assert error["details"]["field"] == "data.room"
    await alice.send("chat_message", room="general")
    error = await alice.expect_error("INVALID_MESSAGE_DATA")
    assert error["details"]["field"] == "data.text"
    await alice.send("chat_message", room="general", text="   ")
    assert (await alice.expect_error("INVALID_MESSAGE_DATA"))["details"]["field"] == "data.text"
    await alice.send("chat_message", room="general", text="x" * 4001)
    assert (await alice.expect_error("INVALID_MESSAGE_DATA"))["details"]["field"] == "data.text"
    await alice.send("chat_message", room="general", text="hi", colour="red")
    assert (await alice.expect_error("INVALID_MESSAGE_DATA"))["details"]["field"] == "data.colour"


async def test_create_room_announces_it_and_joins_the_creator(chat: RunningChat) -> None:
    alice = await ChatClient.open(chat.ws_url, "alice")
    bystander = await ChatClient.open(chat.ws_url, "bob")
    await alice.send("create_room", room="python", description="All things Python")
    joined_frame = await alice.expect("room_joined", room="python")
    assert joined_frame["user_id"] == "alice"
    info = await alice.expect("room_info", room="python")
    assert info["created_by"] == "alice" and info["description"] == "All things Python"
    assert (await alice.expect("message_history", room="python"))["messages"] == []
    created = await bystander.expect("room_created", room="python")
    assert created["user_id"] == "alice" and created["description"] == "All things Python"
    await alice.expect("room_created", room="python")

    await bystander.send("create_room", room="python")
    error = await bystander.expect_error("ROOM_EXISTS")
    assert error["details"]["field"] == "data.room"
    await bystander.send("create_room", room="../etc")
    assert (await bystander.expect_error("INVALID_MESSAGE_DATA"))["details"]["field"] == "data.room"

    await bystander.send("list_rooms")
    assert "python" in {r["room"] for r in (await bystander.expect("rooms_list"))["rooms"]}


async def test_get_room_users(chat: RunningChat) -> None:
    alice = await joined(chat, "alice")
    await joined(chat, "bob")
    await alice.send("get_room_users", room="general")
    users = await alice.expect("room_users", room="general")
    assert users["users"] == [
        {"user_id": "alice", "username": "alice"},
        {"user_id": "bob", "username": "bob"},
    ]
    await alice.send("get_room_users", room="random")
    assert (await alice.expect("room_users", room="random"))["users"] == []
    await alice.send("get_room_users", room="ghost")
    await alice.expect_error("ROOM_NOT_FOUND")


async def test_get_message_history_limit_and_paging(chat: RunningChat) -> None:
    alice = await joined(chat, "alice")
    for index in range(5):
        await alice.send("chat_message", room="general", text=f"m{index}")
        await alice.expect("chat_message", text=f"m{index}")
    await alice.send("get_message_history", room="general", limit=3)
    page = (await alice.expect("message_history", room="general"))["messages"]
    assert [m["text"] for m in page] == ["m2", "m3", "m4"]
    await alice.send("get_message_history", room="general", limit=3, before_id=page[0]["id"])
    older = (await alice.expect("message_history", room="general"))["messages"]
    assert [m["text"] for m in older] == ["m0", "m1"]
    await alice.send("get_message_history", room="general", limit=0)
    assert (await alice.expect_error("INVALID_MESSAGE_DATA"))["details"]["field"] == "data.limit"
    await alice.send("get_message_history", room="general", limit="many")
    assert (await alice.expect_error("INVALID_MESSAGE_DATA"))["details"]["field"] == "data.limit"
    await alice.send("get_message_history", room="ghost")
    await alice.expect_error("ROOM_NOT_FOUND")


async def test_private_message_reaches_every_connection_of_the_user(chat: RunningChat) -> None:
    alice = await ChatClient.open(chat.ws_url, "alice")
    bob_phone = await ChatClient.open(chat.ws_url, "bob")
    bob_laptop = await ChatClient.open(chat.ws_url, "bob")
    carol = await ChatClient.open(chat.ws_url, "carol")

    await alice.send("private_message", to_user="bob", text="psst")
    sent = await alice.expect("private_message_sent")
    assert sent["to_user"] == "bob" and sent["delivered"] == 2 and sent["text"] == "psst"
    for bob in (bob_phone, bob_laptop):
        received = await bob.expect("private_message")
        assert received["user_id"] == "alice" and received["to_user"] == "bob" and received["text"] == "psst"
    assert not [f for f in await carol.sync() if f["type"] == "private_message"]

    await alice.send("private_message", to_user="nobody", text="hello?")
    error = await alice.expect_error("USER_OFFLINE")
    assert error["details"]["field"] == "data.to_user"
    await alice.send("private_message", to_user="bad name", text="x")
    assert (await alice.expect_error("INVALID_MESSAGE_DATA"))["details"]["field"] == "data.to_user"


async def test_typing_indicators_go_to_the_others_only(chat: RunningChat) -> None:
    alice = await joined(chat, "alice")
    bob = await joined(chat, "bob")
    await alice.send("typing_start", room="general")
    start = await bob.expect("user_typing_start")
    assert start["user_id"] == "alice" and start["room"] == "general"
    await alice.send("typing_stop", room="general")
    stop = await bob.expect("user_typing_stop")
    assert stop["user_id"] == "alice"
    assert not [f for f in await alice.sync() if f["type"].startswith("user_typing")]

    await alice.send("typing_start", room="random")
    await alice.expect_error("NOT_IN_ROOM")


async def test_file_message_shares_small_files_and_refuses_big_ones(chat: RunningChat) -> None:
    alice = await joined(chat, "alice")
    bob = await joined(chat, "bob")
    content = b"\x89PNG fake image bytes" * 10
    encoded = base64.b64encode(content).decode()
    await alice.send("file_message", room="general", name="pic.png", mime_type="image/png", data=encoded)
    received = await bob.expect("file_message")
    assert received["name"] == "pic.png" and received["mime_type"] == "image/png"
    assert received["size"] == len(content) and base64.b64decode(received["data"]) == content
    await alice.expect("file_message")

    history = await chat.app.state.db.recent_messages("general", 10)
    assert history[-1]["type"] == "file_message" and history[-1]["size"] == len(content)

    too_big = base64.b64encode(b"x" * 4097).decode()
    await alice.send(
        "file_message", room="general", name="big.bin", mime_type="application/octet-stream", data=too_big
    )
    error = await alice.expect_error("FILE_TOO_LARGE")
    assert error["details"]["max_file_bytes"] == 4096 and error["details"]["field"] == "data.data"

    await alice.send("file_message", room="general", name="x.txt", mime_type="text/plain", data="not base64!")
    assert (await alice.expect_error("INVALID_MESSAGE_DATA"))["details"]["field"] == "data.data"
    await alice.send("file_message", room="general", name="../x.txt", mime_type="text/plain", data="eA==")
    assert (await alice.expect_error("INVALID_MESSAGE_DATA"))["details"]["field"] == "data.name"
    await alice.send("file_message", room="general", name="x.txt", mime_type="text", data="eA==")
    assert (await alice.expect_error("INVALID_MESSAGE_DATA"))["details"]["field"] == "data.mime_type"
    assert not [f for f in await bob.sync() if f["type"] == "file_message"]


async def test_leave_room(chat: RunningChat) -> None:
    alice = await joined(chat, "alice")
    bob = await joined(chat, "bob")
    await bob.send("leave_room", room="general")
    left = await bob.expect("room_left")
    assert left["room"] == "general" and left["user_id"] == "bob"
    other = await alice.expect("user_left_room")
    assert other["user_id"] == "bob"
    await bob.send("chat_message", room="general", text="still here?")
    await bob.expect_error("NOT_IN_ROOM")
    await bob.send("leave_room", room="general")
    await bob.expect_error("NOT_IN_ROOM")
    await alice.send("get_room_users", room="general")
    assert [u["user_id"] for u in (await alice.expect("room_users"))["users"]] == ["alice"]


async def test_disconnect_tells_the_rooms_once_per_user(chat: RunningChat) -> None:
    alice = await joined(chat, "alice")
    bob_1 = await joined(chat, "bob")
    bob_2 = await joined(chat, "bob")
    await alice.expect("user_joined_room", user_id="bob")
    # bob's second connection is not a new user in the room
    assert not [f for f in await alice.sync() if f["type"] == "user_joined_room"]

    await bob_1.close()
    manager = chat.app.state.manager
    db = chat.app.state.db

    async def one_left() -> bool:
        return len(await manager.get_user_connections("bob")) == 1

    async def presence_updated() -> bool:  # bob_1's on_disconnect has removed its presence
        return len(await db.room_presence("general")) == 2

    await eventually(one_left, what="bob_1's connection to go")
    await eventually(presence_updated, what="bob_1's presence to go")
    await alice.send("get_room_users", room="general")
    assert [u["user_id"] for u in (await alice.expect("room_users"))["users"]] == ["alice", "bob"]
    # bob is still in the room through his other connection: no user_left
    assert not [f for f in await alice.sync() if f["type"] == "user_left"]

    await bob_2.close()
    left = await alice.expect("user_left")
    assert left["user_id"] == "bob" and left["room"] == "general"
    assert not [f for f in await alice.sync() if f["type"] == "user_left"]  # once, not per connection


async def test_rate_limit_refuses_the_excess_but_not_pings_typing_or_listing(
    chat_factory: ChatFactory,
) -> None:
    async with chat_factory(CHAT_RATE_LIMIT_MESSAGES=3, CHAT_RATE_LIMIT_WINDOW=60) as chat:
        alice = await joined(chat, "alice")  # join_room counts: 1
        for _ in range(5):
            await alice.send("typing_start", room="general")
            await alice.send("list_rooms")
            await alice.send("get_room_users", room="general")
            await alice.send("get_message_history", room="general", limit=1)
            await alice.send("ping")
        for text in ("one", "two"):
            await alice.send("chat_message", room="general", text=text)
            await alice.expect("chat_message", text=text)
        assert not [f for f in await alice.sync() if f["type"] == "error"]
        await alice.send("chat_message", room="general", text="three")
        error = await alice.expect_error("RATE_LIMIT_EXCEEDED")
        assert error["retryable"] is True and 0 < error["details"]["retry_after"] <= 60
        assert error["details"]["limit"] == 3
        # refused, not stored, and the connection goes on
        assert [m["text"] for m in await chat.app.state.db.recent_messages("general", 10)] == ["one", "two"]
        await alice.send("ping")
        await alice.expect("pong")


async def test_malformed_frames_get_error_frames(chat: RunningChat) -> None:
    alice = await ChatClient.open(chat.ws_url, "alice")
    await alice.send_raw("{not json")
    await alice.expect_error("INVALID_JSON")
    await alice.send_raw("[1, 2]")
    await alice.expect_error("INVALID_MESSAGE_FORMAT")
    await alice.send_raw(json.dumps({"data": {}}))
    await alice.expect_error("MISSING_MESSAGE_TYPE")
    await alice.send_raw(json.dumps({"type": "launch_missiles"}))
    await alice.expect_error("UNKNOWN_MESSAGE_TYPE")
    await alice.send_raw(json.dumps({"type": "join_room", "data": "general"}))
    await alice.expect_error("INVALID_MESSAGE_DATA")
    await alice.ws.send(b"\x00binary")  # the chat speaks JSON text frames only
    await alice.expect_error("UNKNOWN_MESSAGE_TYPE")
    await alice.send("ping")
    await alice.expect("pong")


async def test_invalid_user_id_is_refused_at_the_handshake(chat: RunningChat) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{chat.ws_url}/ws/bad%20name", open_timeout=10):
            pass
    assert refused.value.response.status_code == 403


def test_every_message_type_of_the_issue_is_modelled() -> None:
    assert set(CLIENT_MESSAGES) == {
        "chat_message", "join_room", "leave_room", "create_room", "list_rooms", "get_room_users",
        "get_message_history", "private_message", "typing_start", "typing_stop", "file_message", "ping",
    }  # fmt: skip
    assert {
        "welcome", "chat_message", "room_joined", "room_left", "user_joined_room", "user_left_room",
        "room_created", "rooms_list", "room_users", "room_info", "message_history", "private_message",
        "private_message_sent", "user_typing_start", "user_typing_stop", "file_message", "pong",
        "user_left", "error",
    } <= set(SERVER_FRAMES)  # fmt: skip


async def test_connection_limit_closes_with_1013(chat_factory: ChatFactory) -> None:
    async with chat_factory(ws={"MAX_CONNECTIONS_PER_CLIENT": 1}) as chat:
        await ChatClient.open(chat.ws_url, "alice")
        async with connect(f"{chat.ws_url}/ws/alice", open_timeout=10) as second:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(second.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013 and closed.value.rcvd.reason == "CONNECTION_LIMIT_EXCEEDED"


async def test_join_room_with_since_replays_the_missed_room_messages(chat: RunningChat) -> None:
    alice = await joined(chat, "alice")
    bob = await joined(chat, "bob")
    await bob.send("chat_message", room="general", text="seen")
    seen = await alice.expect("chat_message")
    assert seen["offset"] >= 1 and seen["epoch"]
    await alice.close()
    await bob.send("typing_start", room="general")  # ephemeral: neither numbered nor replayed
    for n in range(3):
        await bob.send("chat_message", room="general", text=f"missed {n}")
        sent = await bob.expect("chat_message")
        assert "offset" in sent and sent["epoch"] == seen["epoch"]

    again = await ChatClient.open(chat.ws_url, "alice")
    await again.send("join_room", room="general", since={"epoch": seen["epoch"], "offset": seen["offset"]})
    frames = await again.sync()
    replayed = [f for f in frames if f["type"] == "chat_message"]
    assert [f["text"] for f in replayed] == ["missed 0", "missed 1", "missed 2"]
    assert [f["offset"] for f in replayed] == [seen["offset"] + n for n in (1, 2, 3)]
    [room_joined] = [f for f in frames if f["type"] == "room_joined"]
    assert room_joined["recovered"] is True and room_joined["replayed"] == 3
    assert room_joined["epoch"] == seen["epoch"] and room_joined["offset"] == seen["offset"] + 3
    assert frames.index(replayed[-1]) < frames.index(room_joined)
    assert not [f for f in frames if f["type"] in ("message_history", "user_typing_start")]

    # another epoch: nothing replayed, the client reloads the room itself
    late = await ChatClient.open(chat.ws_url, "carol")
    await late.send("join_room", room="general", since={"epoch": "gone", "offset": 1})
    frames = await late.sync()
    [room_joined] = [f for f in frames if f["type"] == "room_joined"]
    assert room_joined["recovered"] is False and room_joined["replayed"] == 0
    assert not [f for f in frames if f["type"] == "chat_message"]


async def test_a_users_two_connections_acting_at_once_tell_the_room_once(chat: RunningChat) -> None:
    """docs/protocol.md: user_joined_room / user_left_room / user_left go out for the user's
    first or last connection, not per connection. Two connections of one user joining,
    leaving or closing at the same time each saw the other as absent and both sent the frame
    (6 of 6, 9 of 10 and 4 of 5 in review)."""
    manager = chat.app.state.manager
    watcher = await joined(chat, "watcher")
    for round_ in range(3):
        bob_1 = await ChatClient.open(chat.ws_url, "bob")
        bob_2 = await ChatClient.open(chat.ws_url, "bob")
        await asyncio.gather(bob_1.send("join_room", room="general"), bob_2.send("join_room", room="general"))
        for bob in (bob_1, bob_2):
            await bob.expect("room_users", room="general")
        frames = await watcher.sync()
        assert [f["type"] for f in frames if f["type"].startswith("user_")] == ["user_joined_room"], round_

        if round_ == 0:  # both leave the room at once
            await asyncio.gather(
                bob_1.send("leave_room", room="general"), bob_2.send("leave_room", room="general")
            )
            for bob in (bob_1, bob_2):
                await bob.expect("room_left", room="general")
            kind = "user_left_room"
        else:  # both close at once
            await asyncio.gather(bob_1.close(), bob_2.close())

            async def bob_gone() -> bool:
                return not await manager.get_user_connections("bob")

            await eventually(bob_gone, what="bob's connections to go")
            kind = "user_left"
        await watcher.expect(kind, user_id="bob")
        assert not [f for f in await watcher.sync() if f["type"] == kind], f"{kind} twice in round {round_}"
        for bob in (bob_1, bob_2):
            await bob.close()
