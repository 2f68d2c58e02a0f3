"""A consumer app in the README's shape, for the consumer tests.

`create_app` builds the FastAPI app around a middleware chain and a consumer class; its
WebSocket endpoint body is the README's, verbatim. `readme_middleware` is the README's chain
(validation >> logging >> rate limit, the rate limit in Redis when given a client).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from fastapi_channels import BaseConsumer, ConnectionManager, Message
from fastapi_channels.config import WSConfig
from fastapi_channels.exceptions import BaseError
from fastapi_channels.middleware import (
    LoggingMiddleware,
    Middleware,
    RateLimitMiddleware,
    ValidationMiddleware,
)

EXCLUDED_TYPES = frozenset({"ping", "pong", "welcome", "typing_start", "typing_stop", "list_rooms"})


# --- typed messages ------------------------------------------------------------------------------
class ChatData(BaseModel):
    room: str
    text: str = Field(max_length=200)


class GroupData(BaseModel):
    group: str


class SayData(BaseModel):
    group: str
    text: str


class TextData(BaseModel):
    text: str


# --- what the server saw, for in-process tests -----------------------------------------------------
@dataclass
class Events:
    on_disconnect: list[tuple[str, Any]] = field(default_factory=list)
    disconnect_calls: list[tuple[str, int]] = field(default_factory=list)
    connected: list[str] = field(default_factory=list)


class FakeDatabase:
    """Stands in for the README's ChatDatabase: the consumer gets it as `database=`."""

    def __init__(self, name: str = "test-db") -> None:
        self.name = name
        self.saved: list[tuple[str | None, str, str]] = []

    def save(self, user_id: str | None, room: str, text: str) -> int:
        self.saved.append((user_id, room, text))
        return len(self.saved)


# --- the consumer --------------------------------------------------------------------------------
class ChatConsumer(BaseConsumer):
    message_types = {
        "chat": ChatData,
        "join": GroupData,
        "leave": GroupData,
        "say": SayData,
        "say_others": SayData,
        "text": TextData,
        "bytes": TextData,
    }

    database: FakeDatabase | None
    events: Events | None = None  # set per app by create_app

    async def connect(self) -> None:
        events = self.events
        if events is not None:
            events.connected.append(self.channel_name)
        await self.send_json({"type": "welcome", "channel_name": self.channel_name, "user_id": self.user_id})

    async def disconnect(self, code: int = 1000) -> None:
        events = self.events
        if events is not None:
            events.disconnect_calls.append((self.channel_name, code))
        await super().disconnect(code)

    async def on_disconnect(self, code: int) -> None:
        events = self.events
        if events is not None:
            events.on_disconnect.append((self.channel_name, code))

    async def on_echo(self, message: Message) -> None:
        await self.send_json({"type": "echo", "data": message.data, "metadata": message.metadata})

    async def on_chat(self, message: Message) -> None:
        data = message.data
        assert isinstance(data, ChatData), type(data)  # the model replaced the raw dict
        saved = self.database.save(self.user_id, data.room, data.text) if self.database is not None else 0
        await self.send_json({"type": "chat_ok", "room": data.room, "text": data.text, "saved": saved})

    async def on_whoami(self, message: Message) -> None:
        database = getattr(self, "database", None)
        await self.send_json(
            {"type": "whoami", "user_id": self.user_id, "database": getattr(database, "name", None)}
        )

    async def on_typing_start(self, message: Message) -> None:
        await self.send_json({"type": "typing_ok"})

    async def on_binary(self, message: Message) -> None:
        size = len(message.binary_data) if message.binary_data is not None else None
        await self.send_json({"type": "binary_ok", "size": size})

    async def on_boom(self, message: Message) -> None:
        raise RuntimeError("kaboom: secret internals")

    async def on_bye(self, message: Message) -> None:
        # Two concurrent calls: on_disconnect must still run once, with the first code.
        await asyncio.gather(self.disconnect(4100), self.disconnect(4200))

    async def on_join(self, message: Message) -> None:
        await self.join_group(message.data.group)
        await self.send_json({"type": "joined", "group": message.data.group, "groups": sorted(self.groups)})

    async def on_leave(self, message: Message) -> None:
        await self.leave_group(message.data.group)
        await self.send_json({"type": "left", "group": message.data.group, "groups": sorted(self.groups)})

    async def on_say(self, message: Message) -> None:
        await self.send_to_group(
            message.data.group, {"type": "said", "from": self.user_id, "text": message.data.text}
        )

    async def on_say_others(self, message: Message) -> None:
        await self.send_to_group_except_sender(
            message.data.group, {"type": "said", "from": self.user_id, "text": message.data.text}
        )

    async def on_text(self, message: Message) -> None:
        await self.send_text(message.data.text)

    async def on_bytes(self, message: Message) -> None:
        await self.send_bytes(message.data.text.encode())


# --- middleware used by the tests ------------------------------------------------------------------
class Tag(Middleware):
    """Appends its name to metadata["trail"] (and to a shared log) and passes the message on."""

    def __init__(self, name: str, log: list[tuple[str, str]] | None = None) -> None:
        self.name = name
        self.log = log if log is not None else []

    async def process(self, message: Message, connection: Any, consumer: Any) -> Message | None:
        self.log.append((self.name, message.type))
        trail = message.metadata.get("trail")
        message.metadata["trail"] = [*(trail if isinstance(trail, list) else []), self.name]
        return message


class DropType(Middleware):
    """Stops messages of one type quietly (returns None)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def process(self, message: Message, connection: Any, consumer: Any) -> Message | None:
        return None if message.type == self.kind else message


class RaiseOn(Middleware):
    """Raises `make_error()` for messages of one type."""

    def __init__(self, kind: str, make_error: Callable[[], BaseError]) -> None:
        self.kind = kind
        self.make_error = make_error

    async def process(self, message: Message, connection: Any, consumer: Any) -> Message | None:
        if message.type == self.kind:
            raise self.make_error()
        return message


# --- the app -------------------------------------------------------------------------------------
def create_app(
    ws_config: WSConfig,
    middleware: Middleware | None,
    *,
    consumer_class: type[BaseConsumer] = ChatConsumer,
    db: FakeDatabase | None = None,
    events: Events | None = None,
    manager: ConnectionManager | None = None,
) -> tuple[FastAPI, ConnectionManager]:
    """`manager`: one made elsewhere (a LocalCluster's); by default one of `ws_config`."""
    manager = manager if manager is not None else ConnectionManager(ws_config=ws_config)
    # Under the README's name, so that the endpoint body below is the README's verbatim.
    ChatConsumer = type(consumer_class.__name__, (consumer_class,), {"events": events})
    db = db if db is not None else FakeDatabase()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await manager.start_tasks()
        yield
        await manager.stop_tasks(timeout=5)

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{user_id}")
    async def websocket_endpoint(websocket: WebSocket, user_id: str):  # type: ignore[no-untyped-def]
        connection = await manager.connect(websocket=websocket, user_id=user_id)

        consumer = ChatConsumer(
            connection=connection,
            manager=manager,
            middleware_stack=middleware,
            database=db,
        )

        try:
            await consumer.connect()

            while True:
                message = await websocket.receive()
                if "text" in message:
                    json_str = message["text"]
                    await consumer.handle_message(json_str=json_str)
                elif "bytes" in message:
                    binary = message["bytes"]
                    await consumer.handle_message(binary=binary)
                else:
                    # Unknown message type, skip
                    continue

        except WebSocketDisconnect:
            await consumer.disconnect(1000)
        except BaseError as e:
            if e.should_disconnect():
                code = e.ws_code
                await consumer.disconnect(code)
            else:
                await consumer.handle_error(e)
        except Exception:
            await consumer.disconnect(1011)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return manager.get_stats()

    return app, manager


def readme_middleware(ws_config: WSConfig, redis: Any, *, limit: int, window: float) -> Middleware:
    """The README's chain: validation >> logging >> rate limit (excluded types pass)."""
    return (
        ValidationMiddleware(ws_config.WS_MAX_MESSAGE_SIZE)
        >> LoggingMiddleware()
        >> RateLimitMiddleware(
            messages_per_window=limit,
            window_seconds=window,
            redis=redis,
            excluded_message_types=EXCLUDED_TYPES,
            prefix=ws_config.REDIS_CHANNEL_PREFIX,
        )
    )
