"""A consumer's end-of-life cleanup closes its own connection, never the one that reconnected
with the same `connection_id` meanwhile.

Before (found by an adversarial review, 2026-12-02): A closes, its slot and id are released,
B connects with the same custom id, and A's `on_disconnect` finishes; `BaseConsumer.disconnect`
then closed the connection holding that id, B, with 1000 (10 of 10 with a 50 ms hook).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import websockets
from fastapi import FastAPI, WebSocket

from fastapi_channels import BaseConsumer, ConnectionManager, WSConfig
from fastapi_channels.testing import serve
from tests.support.eventually import eventually
from tests.support.serving import FAST, SANSIO


class SlowGoodbye(BaseConsumer):
    goodbyes: list[str] = []  # connections whose on_disconnect has ended

    async def connect(self) -> None:
        await self.send_json({"type": "welcome"})

    async def on_disconnect(self, code: int) -> None:
        await asyncio.sleep(0.05)
        SlowGoodbye.goodbyes.append(self.channel_name)


def _app(manager: ConnectionManager) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start_tasks()
        yield
        await manager.stop_tasks()

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{cid}")
    async def endpoint(websocket: WebSocket, cid: str) -> None:
        await SlowGoodbye.serve(websocket, manager, user_id="u", connection_id=cid)

    return app


@pytest.mark.parametrize("ws", [SANSIO, FAST], ids=["sansio", "fastpath"])
async def test_a_reconnect_with_the_same_id_survives_its_predecessors_cleanup(ws: str) -> None:
    SlowGoodbye.goodbyes.clear()
    manager = ConnectionManager(WSConfig(BACKEND_TYPE="memory", LOG_STATS=False, WS_ENABLE_HEARTBEAT=False))
    async with serve(_app(manager), ws=ws) as server:
        for round_ in range(5):
            url = f"{server.ws_url}/ws/X{round_}"
            name = f"{manager.server_id}!X{round_}"
            first = await websockets.connect(url, compression=None)
            assert "welcome" in await first.recv()
            await first.close()
            second = await websockets.connect(url, compression=None)  # waits for the id to be free
            assert "welcome" in await second.recv()
            await eventually(lambda: len(SlowGoodbye.goodbyes) == 1, what="the first one's cleanup")
            assert await manager.send_personal(name, {"type": "still here"})
            assert "still here" in await asyncio.wait_for(second.recv(), 5)
            await second.close()
            await eventually(lambda: manager.get_connection(name) is None, what="cleanup")  # noqa: B023
            await eventually(lambda: len(SlowGoodbye.goodbyes) == 2, what="the second one's cleanup")
            SlowGoodbye.goodbyes.clear()
