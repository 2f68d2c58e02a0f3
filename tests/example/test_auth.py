"""The chat's optional token authentication and its admin-only rooms (authorize_join)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from example.consumers import room_group
from example.main import create_app
from example.settings import ChatSettings
from fastapi_channels import WSConfig
from fastapi_channels.testing import serve


async def next_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if frame["type"] == kind:
            return frame  # type: ignore[no-any-return]


async def test_with_access_tokens_only_the_users_own_token_opens_its_socket(tmp_path: Path) -> None:
    settings = ChatSettings(CHAT_DB_PATH=tmp_path / "chat.db", CHAT_ACCESS_TOKENS="alice:s3cret,bob:hunter2")
    app = create_app(WSConfig(LOG_STATS=False), settings)
    async with serve(app) as server:
        for path in ("/ws/alice", "/ws/alice?token=wrong", "/ws/alice?token=hunter2"):  # none, bad, bob's
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.ws_url + path)
            assert refused.value.response.status_code == 403
        async with connect(server.ws_url + "/ws/alice?token=s3cret") as ws:
            assert (await next_of(ws, "welcome"))["user_id"] == "alice"
        async with connect(
            server.ws_url + "/ws/bob", additional_headers={"Authorization": "Bearer hunter2"}
        ) as ws:
            assert (await next_of(ws, "welcome"))["user_id"] == "bob"


async def test_admin_rooms_refuse_other_users_and_join_nothing(tmp_path: Path) -> None:
    settings = ChatSettings(CHAT_DB_PATH=tmp_path / "chat.db", CHAT_ADMINS="alice")
    app = create_app(WSConfig(LOG_STATS=False), settings)
    manager = app.state.manager
    async with (
        serve(app) as server,
        connect(server.ws_url + "/ws/alice") as alice,
        connect(server.ws_url + "/ws/bob") as bob,
    ):
        await next_of(alice, "welcome")
        await next_of(bob, "welcome")
        await alice.send(json.dumps({"type": "create_room", "data": {"room": "admin-ops"}}))
        assert (await next_of(alice, "room_joined"))["room"] == "admin-ops"
        await bob.send(json.dumps({"type": "join_room", "data": {"room": "admin-ops"}}))
        error = await next_of(bob, "error")
        assert (error["error_code"], error["category"]) == ("JOIN_FORBIDDEN", "authorization")
        await bob.send(json.dumps({"type": "get_room_users", "data": {"room": "admin-ops"}}))
        users = await next_of(bob, "room_users")
        assert [u["user_id"] if isinstance(u, dict) else u for u in users["users"]] == ["alice"]
        assert len(await manager.group_members(room_group("admin-ops"))) == 1
        # Ordinary rooms stay open to everyone.
        await bob.send(json.dumps({"type": "join_room", "data": {"room": "general"}}))
        assert (await next_of(bob, "room_joined"))["room"] == "general"


async def test_health_and_metrics_are_public_even_with_tokens(tmp_path: Path) -> None:
    """A load balancer and Prometheus have no token: /health/* and /metrics answer anyway, and
    say nothing about users (counts only)."""
    import httpx

    settings = ChatSettings(CHAT_DB_PATH=tmp_path / "chat.db", CHAT_ACCESS_TOKENS="alice:s3cret")
    app = create_app(WSConfig(LOG_STATS=False), settings)
    async with serve(app) as server, httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        assert (await http.get("/health/live")).status_code == 200
        ready = await http.get("/health/ready")
        assert ready.status_code == 200, ready.text
        async with connect(server.ws_url + "/ws/alice?token=s3cret") as ws:
            await next_of(ws, "welcome")
            metrics = (await http.get("/metrics")).text
        assert "fastapi_channels_connections 1.0" in metrics
        assert "alice" not in metrics and "s3cret" not in metrics
