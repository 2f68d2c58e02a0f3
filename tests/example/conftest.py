"""Fixtures of the chat example's tests: in-process servers of `example.main.create_app`."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from example.main import create_app
from example.settings import ChatSettings
from fastapi_channels import WSConfig
from fastapi_channels.testing import ServerHandle, serve
from tests.support.client import (
    close_all_clients,
    close_clients,  # noqa: F401 - an autouse fixture of this folder
)


class RunningChat:
    def __init__(self, app: FastAPI, handle: ServerHandle) -> None:
        self.app = app
        self.handle = handle
        self.ws_url = handle.ws_url
        self.http_url = handle.http_url


ChatFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningChat]]


@pytest.fixture
def chat_factory(tmp_path: Path) -> ChatFactory:
    """`async with chat_factory(**settings) as chat:` runs an app of its own on a free port."""

    @contextlib.asynccontextmanager
    async def run(
        db_path: Path | None = None, ws: dict[str, Any] | None = None, **settings: Any
    ) -> AsyncIterator[RunningChat]:
        config = WSConfig(
            BACKEND_TYPE="memory",
            LOG_STATS=False,
            WS_CLOSE_TIMEOUT=2,
            SERVER_INSTANCE_ID=f"chat-{uuid.uuid4().hex[:8]}",
            **(ws or {}),
        )
        chat_settings = ChatSettings(
            CHAT_DB_PATH=db_path or tmp_path / "chat.db",
            CHAT_MAX_FILE_BYTES=settings.pop("CHAT_MAX_FILE_BYTES", 4096),
            **settings,
        )
        app = create_app(config, chat_settings)
        # Served as `./run demo` serves it: the fast-path protocol, compression off.
        async with serve(
            app, ws="fastapi_channels.fastpath:FastWebSocketProtocol", ws_per_message_deflate=False
        ) as handle:
            try:
                yield RunningChat(app, handle)
            finally:
                await close_all_clients()  # before the server stops

    return run


@pytest.fixture
async def chat(chat_factory: ChatFactory) -> AsyncIterator[RunningChat]:
    async with chat_factory() as running:
        yield running
