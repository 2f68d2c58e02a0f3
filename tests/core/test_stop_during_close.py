"""`stop_tasks(timeout=...)` shorter than a consumer's `on_disconnect`: every client still gets
1001 and is unregistered, and nothing reaches the log.

Before (found by an adversarial review, 2026-12-02): stop_tasks cancelled the closes still
running its hooks, which skipped the rest of the close; clients stayed open with nothing
telling them, their connections stayed registered half closed (counted in `connections`
after a restart), and each logged a CancelledError traceback when it finally left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import websockets
from fastapi import FastAPI

from fastapi_channels import BaseConsumer, ConnectionManager, WSConfig
from fastapi_channels.backends import MemoryBackend
from fastapi_channels.connection import ConnectionState
from fastapi_channels.exceptions import ConnectionError as ChannelsConnectionError
from fastapi_channels.testing import serve
from tests.support.serving import FAST, SANSIO


class SlowGoodbye(BaseConsumer):
    async def connect(self) -> None:
        await self.join_group("room")
        await self.send_json({"type": "welcome"})

    async def on_disconnect(self, code: int) -> None:
        await asyncio.sleep(1.0)  # longer than stop_tasks will wait


def _app(manager: ConnectionManager) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start_tasks()
        yield
        await manager.stop_tasks()

    app = FastAPI(lifespan=lifespan)
    app.add_api_websocket_route("/ws/{user_id}", SlowGoodbye.as_route(manager, user_id="user_id"))
    return app


@pytest.mark.parametrize("ws", [SANSIO, FAST], ids=["sansio", "fastpath"])
async def test_a_stop_that_outwaits_its_timeout_still_closes_every_client_with_1001(
    ws: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    manager = ConnectionManager(WSConfig(BACKEND_TYPE="memory", LOG_STATS=False, WS_ENABLE_HEARTBEAT=False))
    async with serve(_app(manager), ws=ws) as server:
        clients = []
        for index in range(3):
            client = await websockets.connect(f"{server.ws_url}/ws/u{index}", compression=None)
            assert "welcome" in await client.recv()
            clients.append(client)
        connections = list(manager.registry)
        await manager.send_to_group("room", {"type": "last"})

        await manager.stop_tasks(timeout=0.3)

        assert len(manager.registry) == 0
        assert [connection.state for connection in connections] == [ConnectionState.CLOSED] * 3
        assert manager.get_stats()["connections_closed"] == 3
        for client in clients:
            frames = []
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    frames.append(await asyncio.wait_for(client.recv(), 5))
            assert client.close_code == 1001
            assert len(frames) == 1 and "last" in frames[0]
        await manager.start_tasks()
        assert manager.get_stats()["connections"] == 0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info] == []


class SlowRelease(MemoryBackend):
    """A backend whose group leave takes a while (a slow Redis) and that notes what it did after
    it was stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = False
        self.after_stop: list[str] = []

    async def group_discard(self, group: str, channel_name: str) -> None:
        await asyncio.sleep(1.5)  # longer than stop_tasks used to wait after its cancel (1 s)
        if self.stopped:
            self.after_stop.append(channel_name)
        await super().group_discard(group, channel_name)

    async def stop(self) -> None:
        self.stopped = True
        await super().stop()


async def test_no_close_cut_short_by_a_stop_reaches_the_backend_after_it_stopped() -> None:
    """A close cut short by stop_tasks still releases the connection's groups: stop_tasks waits
    for that (bounded) before it stops the backend, instead of leaving it running behind."""
    backend = SlowRelease()
    manager = ConnectionManager(
        WSConfig(BACKEND_TYPE="memory", LOG_STATS=False, WS_ENABLE_HEARTBEAT=False), backend=backend
    )
    async with serve(_app(manager), ws=SANSIO) as server:
        clients = [await websockets.connect(f"{server.ws_url}/ws/u{i}", compression=None) for i in range(2)]
        for client in clients:
            assert "welcome" in await client.recv()
        await manager.stop_tasks(timeout=0.3)
        assert backend.after_stop == [] and len(manager.registry) == 0
        for client in clients:
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(client.recv(), 5)
            assert client.close_code == 1001
        await manager.start_tasks()


class GatedGroupAdd(MemoryBackend):
    """A backend whose group_add waits at a gate: a join's backend step, caught mid-way."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()  # open until the test closes it
        self.waiting = asyncio.Event()

    async def group_add(self, group: str, channel_name: str, *, max_groups: int) -> bool:
        self.waiting.set()
        await self.gate.wait()
        return await super().group_add(group, channel_name, max_groups=max_groups)


async def test_a_join_whose_connection_closes_during_the_backend_step_raises_and_leaves_nothing() -> None:
    """The join's other window (see tests/core/test_lifecycle.py for the authorizer's): the
    connection closes while the backend adds the membership. The join raises CONNECTION_CLOSED
    and the membership it added is taken back."""
    backend = GatedGroupAdd()
    manager = ConnectionManager(
        WSConfig(BACKEND_TYPE="memory", LOG_STATS=False, WS_ENABLE_HEARTBEAT=False), backend=backend
    )
    async with serve(_app(manager), ws=SANSIO) as server:
        client = await websockets.connect(f"{server.ws_url}/ws/u", compression=None)
        assert "welcome" in await client.recv()  # its connect() joined "room" (the gate was open)
        backend.waiting.clear()
        (connection,) = list(manager.registry)
        backend.gate.clear()
        join = asyncio.create_task(manager.join_group(connection.channel_name, "other"))
        await backend.waiting.wait()
        await client.close()
        await connection.wait_closed(timeout=5)
        backend.gate.set()
        with pytest.raises(ChannelsConnectionError) as raised:
            await join
        assert raised.value.error_code == "CONNECTION_CLOSED"
        assert await manager.group_size("other") == 0
