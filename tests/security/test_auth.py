"""Authentication at the handshake (a FastAPI dependency) and authorization per group join."""

from __future__ import annotations

import json

import pytest
from fastapi import Depends, FastAPI, WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastapi_channels import Connection, ConnectionManager, WSConfig
from fastapi_channels.auth import WebSocketAuth
from fastapi_channels.exceptions import BaseError
from fastapi_channels.testing import serve

TOKENS = {"t-alice": "alice", "t-bob": "bob"}


async def verify(token: str) -> str | None:
    return TOKENS.get(token)


def only_own_rooms(connection: Connection, group: str) -> bool:
    return group == "lobby" or group == f"private.{connection.user_id}"


def build() -> tuple[FastAPI, ConnectionManager]:
    manager = ConnectionManager(WSConfig(LOG_STATS=False), authorize_join=only_own_rooms)
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket, user_id: str = Depends(WebSocketAuth(verify))) -> None:
        connection = await manager.connect(websocket, user_id=user_id)
        await manager.send_personal(connection.channel_name, {"type": "hello", "user": user_id})
        try:
            while True:
                group = await websocket.receive_text()
                try:
                    await manager.join_group(connection.channel_name, group)
                    await manager.send_personal(connection.channel_name, {"type": "joined", "group": group})
                except BaseError as exc:
                    await manager.send_personal(connection.channel_name, exc.to_response().to_dict())
        except WebSocketDisconnect:
            await manager.disconnect(connection.channel_name)

    return app, manager


@pytest.mark.parametrize(
    ("suffix", "headers"),
    [("?token=t-alice", {}), ("", {"Authorization": "Bearer t-alice"}), ("", {"Cookie": "token=t-alice"})],
    ids=["query", "header", "cookie"],
)
async def test_a_valid_token_in_query_header_or_cookie_identifies_the_user(
    suffix: str, headers: dict
) -> None:
    app, manager = build()
    async with serve(app) as server, connect(f"{server.ws_url}/ws{suffix}", additional_headers=headers) as ws:
        assert json.loads(await ws.recv()) == {"type": "hello", "user": "alice"}
        assert [c.user_id for c in manager.registry] == ["alice"]


@pytest.mark.parametrize("suffix", ["", "?token=forged"], ids=["missing", "forged"])
async def test_no_or_a_bad_token_is_refused_before_anything_registers(suffix: str) -> None:
    app, manager = build()
    async with serve(app) as server:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{server.ws_url}/ws{suffix}")
        assert refused.value.response.status_code == 403
        assert len(manager.registry) == 0


async def test_an_unauthorized_join_is_an_authorization_error_and_joins_nothing() -> None:
    app, manager = build()
    async with serve(app) as server, connect(f"{server.ws_url}/ws?token=t-bob") as ws:
        await ws.recv()
        await ws.send("private.alice")
        error = json.loads(await ws.recv())
        assert (error["type"], error["error_code"], error["category"]) == (
            "error",
            "JOIN_FORBIDDEN",
            "authorization",
        )
        assert await manager.group_size("private.alice") == 0
        assert manager.get_group_connections("private.alice") == []
        assert "group:private.alice" not in manager.subscribed_topics
        await ws.send("private.bob")
        assert json.loads(await ws.recv()) == {"type": "joined", "group": "private.bob"}
