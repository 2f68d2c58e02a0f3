"""The consumer behind the README's endpoint: parsing, validation, dispatch, heartbeat,
helpers, lifecycle and error frames. Through the test kit's Communicator, except where the
transport is what is under test (uvicorn's frame size limit)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from fastapi_channels import BaseConsumer, Message, WSConfig
from fastapi_channels.exceptions import CloseCode
from fastapi_channels.middleware import LoggingMiddleware, MiddlewareChain, ValidationMiddleware
from fastapi_channels.testing import serve
from tests.consumer.app import ChatConsumer, ChatData, Events, GroupData, SayData, Tag, TextData, create_app
from tests.consumer.support import (
    Harness,
    expect_error,
    frames_until_closed,
    replies_before_echo,
    request,
    roundtrip,
)
from tests.support.client import Client
from tests.support.eventually import eventually

LIMIT = 2048


def chain() -> MiddlewareChain:
    return ValidationMiddleware(LIMIT) >> LoggingMiddleware()


def assert_error_frame(frame: dict[str, Any], error_code: str, category: str) -> None:
    assert frame["type"] == "error", frame
    assert frame["error_code"] == error_code, frame
    assert frame["category"] == category, frame
    assert isinstance(frame["error_id"], str) and len(frame["error_id"]) == 32, frame
    assert isinstance(frame["message"], str) and frame["message"], frame
    assert {"severity", "timestamp", "retryable", "details"} <= frame.keys(), frame


# --- valid messages reach receive ------------------------------------------------------------------
async def test_valid_messages_reach_receive_and_typed_data_is_the_model(harness: Harness) -> None:
    server = await harness.start(chain())
    client, welcome = await harness.client(server, "alice")
    assert welcome["user_id"] == "alice"

    echo = await request(client, "echo", type="echo", data={"x": [1, 2, "three"]}, metadata={"k": "v"})
    assert echo["data"] == {"x": [1, 2, "three"]}
    assert echo["metadata"] == {"k": "v"}

    chat = await request(client, "chat_ok", type="chat", data={"room": "lobby", "text": "hi"})
    assert chat == {"type": "chat_ok", "room": "lobby", "text": "hi", "saved": 1}
    assert server.db.saved == [("alice", "lobby", "hi")]

    await client.send_to(bytes_data=b"\x00\x01\x02")
    assert await client.receive_json_from() == {"type": "binary_ok", "size": 3}


async def test_an_overridden_receive_gets_the_parsed_message(harness: Harness) -> None:
    class Recording(ChatConsumer):
        async def receive(self, message: Message) -> None:
            await self.send_json(
                {
                    "type": "received",
                    "message_type": message.type,
                    "data": message.data,
                    "sender_id": message.sender_id,
                    "group": message.group,
                    "metadata": message.metadata,
                    "priority": message.priority,
                    "ttl_seconds": message.ttl_seconds,
                    "raw_size": message.raw_size,
                }
            )

    server = await harness.start(chain(), consumer_class=Recording)
    client, _ = await harness.client(server, "alice")
    frame = {
        "type": "anything.goes:here-1",
        "data": {"n": 1},
        "group": "g1",
        "metadata": {"m": True},
        "priority": 3,
        "ttl_seconds": 1.5,
    }
    text = json.dumps(frame)
    await client.send_to(text_data=text)
    received = await client.receive_json_from()
    assert received == {
        "type": "received",
        "message_type": "anything.goes:here-1",
        "data": {"n": 1},
        "sender_id": "alice",
        "group": "g1",
        "metadata": {"m": True},
        "priority": 3,
        "ttl_seconds": 1.5,
        "raw_size": len(text),
    }
    await client.send_json_to({"type": "ping"})  # heartbeats never reach receive
    assert (await client.receive_json_from())["type"] == "pong"


async def test_subclass_kwargs_become_attributes(harness: Harness) -> None:
    server = await harness.start(None)
    client, welcome = await harness.client(server, "alice")
    reply = await request(client, "whoami", type="whoami")
    assert reply == {"type": "whoami", "user_id": "alice", "database": "test-db"}

    consumer = ChatConsumer(
        connection=server.manager.get_connection(welcome["channel_name"]),  # type: ignore[arg-type]
        manager=server.manager,
        database=server.db,
        anything="goes",
    )
    assert consumer.database is server.db
    assert consumer.anything == "goes"  # type: ignore[attr-defined]
    assert consumer.middleware_stack is None
    assert consumer.channel_name == welcome["channel_name"] and consumer.user_id == "alice"


# --- every validation failure: its error code, and the connection stays open ---------------------
BIG = json.dumps({"type": "echo", "data": "x" * LIMIT})

BAD_FRAMES = [
    pytest.param("not json {", "INVALID_JSON", "validation", None, id="invalid-json"),
    pytest.param("", "INVALID_JSON", "validation", None, id="empty-text"),
    pytest.param("[1, 2]", "INVALID_MESSAGE_FORMAT", "validation", None, id="array"),
    pytest.param('"echo"', "INVALID_MESSAGE_FORMAT", "validation", None, id="string"),
    pytest.param('{"data": 1}', "MISSING_MESSAGE_TYPE", "validation", None, id="no-type"),
    pytest.param('{"type": ""}', "MISSING_MESSAGE_TYPE", "validation", None, id="empty-type"),
    pytest.param('{"type": 7}', "MISSING_MESSAGE_TYPE", "validation", None, id="number-type"),
    pytest.param(
        '{"type": "echo", "metadata": [1]}', "INVALID_MESSAGE_FORMAT", "validation", None, id="metadata"
    ),
    pytest.param(
        '{"type": "echo", "priority": "high"}', "INVALID_MESSAGE_FORMAT", "validation", None, id="priority"
    ),
    pytest.param(
        '{"type": "echo", "ttl_seconds": -1}', "INVALID_MESSAGE_FORMAT", "validation", None, id="ttl"
    ),
    pytest.param(BIG, "MESSAGE_TOO_LARGE", "validation", None, id="too-large-text"),
    pytest.param(
        '{"type": "chat", "data": {"room": "lobby"}}',
        "INVALID_MESSAGE_DATA",
        "validation",
        "data.text",
        id="typed-missing-field",
    ),
    pytest.param(
        '{"type": "chat", "data": {"room": "lobby", "text": 5}}',
        "INVALID_MESSAGE_DATA",
        "validation",
        "data.text",
        id="typed-wrong-type",
    ),
    pytest.param(
        '{"type": "chat", "data": {"room": ["x"], "text": "hi"}}',
        "INVALID_MESSAGE_DATA",
        "validation",
        "data.room",
        id="typed-other-field",
    ),
    pytest.param('{"type": "no_such_type"}', "UNKNOWN_MESSAGE_TYPE", "message", None, id="unknown-type"),
    pytest.param('{"type": "9lives"}', "INVALID_MESSAGE_TYPE", "validation", None, id="bad-type-name"),
]


@pytest.mark.parametrize(("frame", "error_code", "category", "field"), BAD_FRAMES)
async def test_each_validation_failure_has_its_code_and_keeps_the_connection(
    harness: Harness, frame: str, error_code: str, category: str, field: str | None
) -> None:
    server = await harness.start(chain())
    client, _ = await harness.client(server)
    await roundtrip(client)

    await client.send_to(text_data=frame)
    error = await expect_error(client, error_code)
    assert_error_frame(error, error_code, category)
    assert error["retryable"] is False
    if field is not None:
        assert error["details"]["field"] == field, error
        assert field in error["message"]
    if error_code == "MESSAGE_TOO_LARGE":
        assert error["details"]["max_message_size"] == LIMIT
        assert error["details"]["size"] == len(frame)
    if error_code == "UNKNOWN_MESSAGE_TYPE":
        assert error["details"]["type"] == "no_such_type"

    await roundtrip(client)
    await roundtrip(client)
    assert server.events.on_disconnect == []
    assert len(server.manager.registry) == 1


async def test_oversize_binary_frame_is_refused_with_the_limit_and_the_connection_stays(
    harness: Harness,
) -> None:
    server = await harness.start(chain())
    client, _ = await harness.client(server)
    await client.send_to(bytes_data=b"\xff" * (LIMIT + 1))
    error = await expect_error(client, "MESSAGE_TOO_LARGE")
    assert error["details"] == {"size": LIMIT + 1, "max_message_size": LIMIT}
    await client.send_to(bytes_data=b"\xff" * LIMIT)  # exactly at the limit passes
    assert await client.receive_json_from() == {"type": "binary_ok", "size": LIMIT}
    await roundtrip(client)


async def test_frame_over_the_servers_ws_max_size_closes_1009_and_the_server_goes_on() -> None:
    """The transport is what is under test: a real uvicorn, started with --ws-max-size."""
    events = Events()
    app, manager = create_app(WSConfig(BACKEND_TYPE="memory", LOG_STATS=False), chain(), events=events)
    async with serve(app, ws_max_size=4 * LIMIT) as server:
        victim = await Client.open(server, "victim", greeting="welcome")
        other = await Client.open(server, "other", greeting="welcome")

        await victim.send_raw(json.dumps({"type": "echo", "data": "y" * (4 * LIMIT)}))
        assert (await victim.wait_closed())[0] == CloseCode.MESSAGE_TOO_BIG
        await eventually(lambda: len(manager.registry) == 1, what="the victim's cleanup")
        assert [name for name, _ in events.on_disconnect] == [victim.channel_name]

        assert (await other.call("echo", type="echo", data="still here"))["data"] == "still here"
        again = await Client.open(server, "victim", greeting="welcome")
        assert (await again.call("echo", type="echo", data="back"))["data"] == "back"


# --- heartbeat --------------------------------------------------------------------------------------
async def test_client_ping_gets_pong_without_passing_middleware(harness: Harness) -> None:
    log: list[tuple[str, str]] = []
    server = await harness.start(Tag("recorder", log))
    client, _ = await harness.client(server)

    await client.send_json_to({"type": "ping"})
    pong = await client.receive_json_from()
    assert pong["type"] == "pong", pong
    assert isinstance(pong["timestamp"], float)
    assert log == []

    await client.send_json_to({"type": "pong"})  # a client's pong is liveness only: no answer, no middleware
    await roundtrip(client)  # the echo is the next frame: nothing answered the pong
    assert log == [("recorder", "echo")]


# --- unexpected exceptions in receive --------------------------------------------------------------
async def test_exception_in_receive_is_a_system_error_frame_logged_with_its_id(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="fastapi_channels")
    server = await harness.start(chain())
    client, _ = await harness.client(server)

    await client.send_json_to({"type": "boom"})
    error = await expect_error(client, "INTERNAL_ERROR")
    assert_error_frame(error, "INTERNAL_ERROR", "system")
    assert "kaboom" not in json.dumps(error) and "Traceback" not in json.dumps(error)

    logged = [r for r in caplog.records if error["error_id"] in r.getMessage()]
    assert logged, [r.getMessage() for r in caplog.records]
    assert logged[0].exc_info is not None and "kaboom" in str(logged[0].exc_info[1])

    # The same connection is still served, and again after a second failure.
    await roundtrip(client)
    await client.send_json_to({"type": "boom"})
    second = await expect_error(client, "INTERNAL_ERROR")
    assert second["error_id"] != error["error_id"]
    await roundtrip(client)
    assert server.events.on_disconnect == []


# --- lifecycle ----------------------------------------------------------------------------------------
async def test_disconnect_twice_runs_on_disconnect_once(harness: Harness) -> None:
    server = await harness.start(chain())
    client, welcome = await harness.client(server)
    await roundtrip(client)

    await client.send_json_to({"type": "bye"})  # the handler calls disconnect(4100) and disconnect(4200)
    assert (await frames_until_closed(client))[1] == 4100
    # The client answers the close; the endpoint sees WebSocketDisconnect and calls
    # disconnect(1000): a third call. `disconnect()` returns once the endpoint has ended.
    await client.disconnect()
    assert sorted(code for _, code in server.events.disconnect_calls) == [1000, 4100, 4200]
    assert len(server.manager.registry) == 0
    assert server.events.on_disconnect == [(welcome["channel_name"], 4100)]


async def test_client_close_runs_on_disconnect_once_with_1000(harness: Harness) -> None:
    server = await harness.start(chain())
    client, welcome = await harness.client(server)
    await roundtrip(client)
    await client.disconnect()  # returns once the endpoint has ended
    assert len(server.manager.registry) == 0 and server.events.disconnect_calls
    assert server.events.on_disconnect == [(welcome["channel_name"], 1000)]


async def test_a_client_message_cannot_invoke_the_on_disconnect_hook(harness: Harness) -> None:
    """receive() dispatches to on_<type>: a frame of type "disconnect" must not run on_disconnect."""
    server = await harness.start(chain())
    client, _ = await harness.client(server)

    await client.send_json_to({"type": "disconnect", "data": 1000})
    replies = await replies_before_echo(client)
    assert server.events.on_disconnect == [], "a client frame ran on_disconnect on an open connection"
    assert [(r["type"], r.get("error_code")) for r in replies] == [("error", "UNKNOWN_MESSAGE_TYPE")]


async def test_error_from_the_connect_hook_reaches_the_client_and_frees_the_connection(
    harness: Harness,
) -> None:
    """README endpoint: a non-disconnecting BaseError out of consumer.connect() goes to handle_error."""

    class JoinsHome(ChatConsumer):
        async def connect(self) -> None:
            await self.join_group(f"home-{self.user_id}")  # refused above MAX_TOTAL_GROUPS
            await super().connect()

    server = await harness.start(chain(), consumer_class=JoinsHome, config={"MAX_TOTAL_GROUPS": 1})
    first, _ = await harness.client(server, "first")
    await roundtrip(first)

    second = await harness.open(server, "second")
    frames, code = await frames_until_closed(second)
    assert [(f["type"], f.get("error_code")) for f in frames] == [("error", "GROUP_LIMIT_EXCEEDED")]
    assert code not in (None, 1006), code  # a close frame, not an endpoint that just returned
    await second.disconnect()  # returns once the endpoint has ended
    # The server must not keep the refused connection registered (it counts against the limits).
    assert len(server.manager.registry) == 1


# --- helpers ----------------------------------------------------------------------------------------
async def test_group_and_send_helpers(harness: Harness) -> None:
    server = await harness.start(chain())
    alice, _ = await harness.client(server, "alice")
    bob, _ = await harness.client(server, "bob")

    joined = await request(alice, "joined", type="join", data={"group": "room1"})
    assert joined["groups"] == ["room1"]
    await request(bob, "joined", type="join", data={"group": "room1"})
    assert await server.manager.group_size("room1") == 2

    await alice.send_json_to({"type": "say", "data": {"group": "room1", "text": "to all"}})
    for client in (alice, bob):
        assert await client.receive_json_from() == {"type": "said", "from": "alice", "text": "to all"}

    await alice.send_json_to({"type": "say_others", "data": {"group": "room1", "text": "not me"}})
    assert await bob.receive_json_from() == {"type": "said", "from": "alice", "text": "not me"}
    await roundtrip(alice)  # the next frame alice gets is her echo, not her own message

    left = await request(bob, "left", type="leave", data={"group": "room1"})
    assert left["groups"] == []
    await alice.send_json_to({"type": "say", "data": {"group": "room1", "text": "alone"}})
    assert await alice.receive_json_from() == {"type": "said", "from": "alice", "text": "alone"}
    await roundtrip(bob)  # bob left: nothing for him

    await alice.send_json_to({"type": "text", "data": {"text": "plain <not json>"}})
    assert await alice.receive_from() == "plain <not json>"
    await alice.send_json_to({"type": "bytes", "data": {"text": "raw"}})
    assert await alice.receive_from() == b"raw"
    await roundtrip(alice)


def test_json_schemas_export_the_declared_models() -> None:
    schemas = ChatConsumer.json_schemas()
    assert list(schemas) == sorted(ChatConsumer.message_types)
    models = {"chat": ChatData, "join": GroupData, "say": SayData, "text": TextData}
    for kind, model in models.items():
        assert schemas[kind] == model.model_json_schema()
    assert sorted(schemas["chat"]["required"]) == ["room", "text"]
    assert schemas["chat"]["properties"]["text"]["maxLength"] == 200
    assert BaseConsumer.json_schemas() == {}
    json.dumps(schemas)  # exportable as is
