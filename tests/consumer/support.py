"""The consumer app (tests/consumer/app.py) in the test's own event loop, talked to with the
test kit's `Communicator`: no port, no thread, no process. Only the transport is left out; a
test about the transport itself (uvicorn's frame size limit) uses a real server instead.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from fastapi_channels import BaseConsumer, ConnectionManager, WSConfig
from fastapi_channels.middleware import Middleware
from fastapi_channels.testing import Communicator, app_lifespan
from tests.consumer.app import ChatConsumer, Events, FakeDatabase, create_app

WAIT = 5.0


@dataclass
class Running:
    """One consumer app, its lifespan held for the test: the manager and what the server saw."""

    app: FastAPI
    manager: ConnectionManager
    events: Events
    db: FakeDatabase


class Harness:
    """Starts consumer apps and opens communicators to them; closes all at teardown."""

    def __init__(self) -> None:
        self.stack = contextlib.AsyncExitStack()

    async def start(
        self,
        middleware: Middleware | None,
        *,
        consumer_class: type[BaseConsumer] = ChatConsumer,
        config: dict[str, Any] | None = None,
    ) -> Running:
        ws_config = WSConfig(**{"BACKEND_TYPE": "memory", "LOG_STATS": False, **(config or {})})
        events = Events()
        db = FakeDatabase()
        app, manager = create_app(ws_config, middleware, consumer_class=consumer_class, db=db, events=events)
        await self.stack.enter_async_context(app_lifespan(app))
        return Running(app, manager, events, db)

    async def open(self, running: Running, user: str) -> Communicator:
        """A connected communicator that has read nothing yet (the app may refuse it)."""
        client = Communicator(running.app, f"/ws/{user}")
        await client.connect()
        self.stack.push_async_callback(client.disconnect)
        return client

    async def client(self, running: Running, user: str = "alice") -> tuple[Communicator, dict[str, Any]]:
        """A connected communicator and the consumer's welcome frame (it names the channel)."""
        client = await self.open(running, user)
        welcome = await client.receive_json_from(WAIT)
        assert welcome["type"] == "welcome", welcome
        return client, welcome

    async def aclose(self) -> None:
        await self.stack.aclose()


# --- the consumer app's protocol, over a Communicator ----------------------------------------------
async def request(client: Communicator, reply: str, **frame: Any) -> dict[str, Any]:
    """Send a frame; its answer, of type `reply`, must be the next frame."""
    await client.send_json_to(frame)
    answer = await client.receive_json_from(WAIT)
    assert answer["type"] == reply, answer
    return answer  # type: ignore[no-any-return]


async def expect_error(client: Communicator, error_code: str) -> dict[str, Any]:
    """The next frame must be an error frame with this code."""
    frame = await client.receive_json_from(WAIT)
    assert frame["type"] == "error" and frame["error_code"] == error_code, frame
    return frame  # type: ignore[no-any-return]


async def roundtrip(client: Communicator) -> None:
    """A valid message and its reply: the connection still works end to end."""
    nonce = uuid.uuid4().hex
    answer = await request(client, "echo", type="echo", data={"nonce": nonce})
    assert answer["data"] == {"nonce": nonce}, answer


async def replies_before_echo(client: Communicator) -> list[Any]:
    """Send an echo; the frames that arrive before its reply (what earlier frames caused).

    The consumer answers one connection's frames in order, so `== []` proves that nothing
    came back, without waiting for a while and hoping.
    """
    nonce = uuid.uuid4().hex
    await client.send_json_to({"type": "echo", "data": {"nonce": nonce}})
    replies = []
    while True:
        frame = await client.receive_json_from(WAIT)
        if frame.get("type") == "echo" and frame.get("data") == {"nonce": nonce}:
            return replies
        replies.append(frame)


async def frames_until_closed(client: Communicator) -> tuple[list[Any], int | None]:
    """Every frame until the app closes the socket, and its close code (1006 when the app
    returned without closing)."""
    frames = []
    with contextlib.suppress(ConnectionError):
        while True:
            raw = await client.receive_from(WAIT)
            frames.append(raw if isinstance(raw, bytes) else _json_or_text(raw))
    return frames, client.close_code


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
