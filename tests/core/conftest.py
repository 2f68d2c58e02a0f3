"""Core behaviour on one server, for each way uvicorn can carry the frames."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.testing import ServerHandle, serve
from tests.app import create_app
from tests.support.client import close_all_clients

FAST = "fastapi_channels.fastpath:FastWebSocketProtocol"
WS_IMPLEMENTATIONS = ["websockets-sansio", "websockets", FAST]

Started = tuple[ServerHandle, ConnectionManager]
StartServer = Callable[..., AbstractAsyncContextManager[Started]]


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    await close_all_clients()


@pytest.fixture(params=WS_IMPLEMENTATIONS, ids=["sansio", "legacy", "fastpath"])
def ws_impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start_server(ws_impl: str) -> StartServer:
    """`async with start_server(**settings) as (server, manager)`: the test app under uvicorn."""

    @asynccontextmanager
    async def start(**settings: Any) -> AsyncIterator[Started]:
        app, manager = create_app(WSConfig(LOG_STATS=False, **settings))
        async with serve(app, ws=ws_impl) as server:
            yield server, manager

    return start
