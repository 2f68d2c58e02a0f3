"""Fixtures for emitter tests: two in-process uvicorn servers of the test app on one Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.testing import ServerHandle, serve
from tests.app import create_app
from tests.support.client import close_all_clients
from tests.support.redis_server import RedisProcess


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    await close_all_clients()


def redis_config(redis_server: RedisProcess, prefix: str, **settings: object) -> WSConfig:
    return WSConfig(
        BACKEND_TYPE="redis",
        REDIS_URL=redis_server.url,
        REDIS_CHANNEL_PREFIX=prefix,
        LOG_STATS=False,
        **settings,  # type: ignore[arg-type]
    )


@dataclass
class TwoServers:
    handles: list[ServerHandle]
    managers: list[ConnectionManager]


@pytest.fixture
async def two_servers(redis_server: RedisProcess, redis_prefix: str) -> AsyncIterator[TwoServers]:
    """Two uvicorn servers (in this process, on real ports) sharing the session's Redis."""
    async with AsyncExitStack() as stack:
        handles, managers = [], []
        for index in range(2):
            config = redis_config(
                redis_server, redis_prefix, SERVER_INSTANCE_ID=f"em{index}-{redis_prefix[:-1]}"
            )
            app, manager = create_app(config)
            handles.append(await stack.enter_async_context(serve(app)))
            managers.append(manager)
        yield TwoServers(handles, managers)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait (bounded) until `condition()` holds: for effects another process or task makes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
