"""A consumer written for the original system, as its example app writes one, runs unchanged.

The consumer below follows the spec's example (`example/consumers.py` of the original): its
import paths, its `__init__(connection, manager, middleware_stack=None, database=None)`, a
`receive` that dispatches on `message.type`, `send_group_except(..., exclude_connection_id=...)`
to skip the sender, `await manager.get_user_connections(user_id)`, a `send_error(text)` of its
own, room and user names as people type them, and a custom `Middleware` subclass in the chain.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi_channels.consumer.base import BaseConsumer
from fastapi_channels.middleware import LoggingMiddleware, Middleware, ValidationMiddleware
from fastapi_channels.typed import Message
from tests.consumer.support import Harness, request

if TYPE_CHECKING:
    from fastapi_channels import Connection, ConnectionManager


class Censor(Middleware):
    """Custom middleware via the Middleware base class: override `process`."""

    def __init__(self, word: str, next_middleware: Middleware | None = None) -> None:
        super().__init__(next_middleware)
        self.word = word

    async def process(self, message: Message, connection: Connection, consumer: Any) -> Message | None:
        if message.type == "chat_message" and isinstance(message.data, dict):
            text = str(message.data.get("text", ""))
            message.data = {**message.data, "text": text.replace(self.word, "*" * len(self.word))}
        return message


class SpecChatConsumer(BaseConsumer):
    def __init__(
        self,
        connection: Connection,
        manager: ConnectionManager,
        middleware_stack: Middleware | None = None,
        database: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(connection, manager=manager, middleware_stack=middleware_stack)
        self.typing_users: dict[str, list[str]] = {}
        self.database = database

    async def connect(self) -> None:
        await self.send_json(
            {
                "type": "welcome",
                "channel_name": self.connection.channel_name,
                "user_id": self.connection.user_id,
                "timestamp": self.timestamp,
            }
        )

    async def on_disconnect(self, code: int) -> None:
        for group in self.connection.groups.copy():
            await self.leave_group(group)

    async def receive(self, message: Message) -> None:
        msg_type = message.type
        if msg_type == "join_room":
            await self.handle_join_room(message)
        elif msg_type == "chat_message":
            await self.handle_chat_message(message)
        elif msg_type == "typing_start":
            await self.handle_typing_start(message)
        elif msg_type == "typing_stop":
            await self.handle_typing_stop(message)
        elif msg_type == "my_connections":
            await self.handle_my_connections(message)
        else:
            await self.send_error(f"Unknown message type: {msg_type}")

    async def handle_join_room(self, message: Message) -> None:
        room = message.data.get("room", "").strip()
        if not room:
            await self.send_error("Room name is required")
            return
        await self.join_group(room)
        await self.send_json({"type": "room_joined", "room": room, "timestamp": self.timestamp})
        await self.send_to_group(
            room, {"type": "user_joined_room", "user_id": self.connection.user_id, "room": room}
        )

    async def handle_chat_message(self, message: Message) -> None:
        room = message.data.get("room")
        if room not in self.connection.groups:
            await self.send_error(f"Not in room: {room}")
            return
        await self.send_to_group(
            room,
            {
                "type": "chat_message",
                "user_id": self.connection.user_id,
                "room": room,
                "text": message.data["text"],
            },
        )

    async def handle_typing_start(self, message: Message) -> None:
        room = message.data.get("room")
        if not room or room not in self.connection.groups:
            return
        self.typing_users.setdefault(room, []).append(str(self.connection.user_id))
        await self.send_to_group_except_sender(
            room, {"type": "user_typing_start", "user_id": self.connection.user_id, "room": room}
        )

    async def handle_typing_stop(self, message: Message) -> None:
        room = message.data.get("room")
        if not room or room not in self.connection.groups:
            return
        # The consumer's own helper takes the original's keyword too.
        await self.send_group_except(
            room,
            {"type": "user_typing_stop", "user_id": self.connection.user_id, "room": room},
            exclude_connection_id=self.connection.channel_name,
        )

    async def handle_my_connections(self, message: Message) -> None:
        connections = await self.manager.get_user_connections(str(self.connection.user_id))
        await self.send_json(
            {"type": "my_connections", "channels": sorted(c.channel_name for c in connections)}
        )

    # The example's own helpers, as it writes them.
    async def send_error(self, error_message: str, message_type: str = "error") -> None:  # type: ignore[override]
        await self.send_json(
            {
                "type": "error",
                "message": error_message,
                "message_type": message_type,
                "timestamp": self.timestamp,
            }
        )

    async def send_to_group_except_sender(self, group: str, message: dict[str, Any]) -> None:
        await self.manager.send_group_except(
            group, message, exclude_connection_id=self.connection.channel_name
        )

    @property
    def timestamp(self) -> float:
        return time.time()


async def test_a_consumer_written_for_the_original_example_runs_unchanged(harness: Harness) -> None:
    middleware = ValidationMiddleware(4096) >> LoggingMiddleware() >> Censor("darn")
    server = await harness.start(middleware, consumer_class=SpecChatConsumer)
    carol, carol_welcome = await harness.client(server, quote("Carol Smith"))
    _, carol_phone_welcome = await harness.client(server, quote("Carol Smith"))
    zoe, zoe_welcome = await harness.client(server, quote("Zoë"))
    assert carol_welcome["user_id"] == "Carol Smith" and zoe_welcome["user_id"] == "Zoë"

    # Room names as people type them.
    for room in ("My Room", "Café"):
        joined = await request(carol, "room_joined", type="join_room", data={"room": f" {room} "})
        assert joined["room"] == room
        assert (await carol.receive_json_from())["type"] == "user_joined_room"
        await request(zoe, "room_joined", type="join_room", data={"room": room})
        assert (await zoe.receive_json_from())["user_id"] == "Zoë"
        assert await carol.receive_json_from() == {"type": "user_joined_room", "user_id": "Zoë", "room": room}

    # send_group_except(..., exclude_connection_id=...): everyone in the room but the sender.
    await carol.send_json_to({"type": "typing_start", "data": {"room": "My Room"}})
    assert await zoe.receive_json_from() == {
        "type": "user_typing_start",
        "user_id": "Carol Smith",
        "room": "My Room",
    }
    await carol.send_json_to({"type": "typing_stop", "data": {"room": "Café"}})
    assert await zoe.receive_json_from() == {
        "type": "user_typing_stop",
        "user_id": "Carol Smith",
        "room": "Café",
    }

    # await manager.get_user_connections(user_id): this server's connections of the user. Its
    # reply is the next frame Carol gets: the typing frames never reached her.
    mine = await request(carol, "my_connections", type="my_connections")
    assert mine["channels"] == sorted([carol_welcome["channel_name"], carol_phone_welcome["channel_name"]])

    # The custom middleware ran in the chain before receive.
    await zoe.send_json_to({"type": "chat_message", "data": {"room": "My Room", "text": "darn, it works"}})
    said = {"type": "chat_message", "user_id": "Zoë", "room": "My Room", "text": "****, it works"}
    assert await carol.receive_json_from() == said
    assert await zoe.receive_json_from() == said

    # The example's own send_error(text) answers what receive does not know.
    error = await request(zoe, "error", type="dance")
    assert error["message"] == "Unknown message type: dance"


async def test_the_original_import_paths_name_the_librarys_classes(harness: Harness) -> None:
    import fastapi_channels

    assert BaseConsumer is fastapi_channels.BaseConsumer
    assert Message is fastapi_channels.Message
    server = await harness.start(None, consumer_class=SpecChatConsumer)
    client, welcome = await harness.client(server, "plain")
    assert (await request(client, "my_connections", type="my_connections"))["channels"] == [
        welcome["channel_name"]
    ]
