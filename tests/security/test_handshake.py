"""Handshake checks: origin allow-list (cross-site WebSocket hijacking) and names as keys."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.exceptions import CloseCode, ValidationError
from fastapi_channels.testing import serve
from tests.app import create_app


async def test_a_forged_origin_is_refused_at_the_handshake(caplog: pytest.LogCaptureFixture) -> None:
    app, manager = create_app(
        WSConfig(LOG_STATS=False, WS_ALLOWED_ORIGINS="http://chat.example, https://chat.example/")
    )
    async with serve(app) as server:
        with caplog.at_level(logging.ERROR), pytest.raises(InvalidStatus) as refused:
            await connect(f"{server.ws_url}/ws/mallory", origin="http://evil.example")
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            await connect(f"{server.ws_url}/ws/mallory")  # no Origin header at all

        async with connect(f"{server.ws_url}/ws/alice", origin="https://chat.example") as ws:
            assert "hello" in await ws.recv()
            assert len(manager.registry) == 1
        assert manager.get_stats()["connections_refused"] == 2
        assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]


async def test_any_origin_is_accepted_when_no_allow_list_is_set() -> None:
    app, _ = create_app(WSConfig(LOG_STATS=False))
    async with (
        serve(app) as server,
        connect(f"{server.ws_url}/ws/alice", origin="http://anywhere.example") as ws,
    ):
        assert "hello" in await ws.recv()


@pytest.mark.parametrize(
    ("user", "user_id"),
    [
        ("Carol%20Smith", "Carol Smith"),
        ("a%3Ab", "a:b"),
        ("%2A", "*"),
        ("a%7Cb", "a|b"),
        ("Caf%C3%A9", "Café"),
        ("x" * 200, "x" * 200),
    ],
)
async def test_a_user_id_with_spaces_separators_or_accents_is_accepted(user: str, user_id: str) -> None:
    app, manager = create_app(WSConfig(LOG_STATS=False, BACKEND_TYPE="memory"))
    async with serve(app) as server, connect(f"{server.ws_url}/ws/{user}") as ws:
        assert "hello" in await ws.recv()
        [connection] = await manager.get_user_connections(user_id)
        assert connection.user_id == user_id
        assert await manager.count_user_connections(user_id) == 1


# Control characters, surrounding whitespace, empty or over 200 characters: not a name.
@pytest.mark.parametrize("user", ["%20padded", "trailing%20", "tab%09in", "nul%00", "esc%1B", "x" * 201])
async def test_a_user_id_that_cannot_be_a_key_is_refused_cleanly(user: str) -> None:
    app, manager = create_app(WSConfig(LOG_STATS=False, BACKEND_TYPE="memory"))
    async with serve(app) as server:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{server.ws_url}/ws/{user}")
        assert refused.value.response.status_code == 403
        assert len(manager.registry) == 0
        assert manager.backend.hub.connections == {}  # type: ignore[attr-defined]


# A custom connection id falls under the same rule (it ends the channel name and is a key).
@pytest.mark.parametrize("cid", ["%20padded", "trailing%20", "a%01b", "x" * 201])
async def test_a_connection_id_that_cannot_be_a_name_is_refused_at_the_handshake(
    cid: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, manager = create_app(WSConfig(LOG_STATS=False, BACKEND_TYPE="memory"))
    async with serve(app) as server:
        with caplog.at_level(logging.ERROR), pytest.raises(InvalidStatus) as refused:
            await connect(f"{server.ws_url}/ws/alice?cid={cid}")
        assert refused.value.response.status_code == 403
        assert len(manager.registry) == 0
        assert manager.get_stats()["connections_refused"] == 1
        assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]
        async with connect(f"{server.ws_url}/ws/alice?cid=fine") as ws:  # the server is unharmed
            assert "hello" in await ws.recv()


@pytest.mark.parametrize(("user_id", "connection_id"), [("bob ", None), ("a\x01b", None), ("bob", " c")])
async def test_the_handshake_refusal_of_a_bad_name_is_a_validation_error(
    user_id: str, connection_id: str | None
) -> None:
    """What the README promises: a ValidationError with INVALID_NAME (and HTTP 403)."""
    manager = ConnectionManager(ws_config=WSConfig(LOG_STATS=False, BACKEND_TYPE="memory"))
    raised: list[BaseException] = []

    async def endpoint(websocket: WebSocket) -> None:
        try:
            await manager.connect(websocket, user_id=user_id, connection_id=connection_id)
        except BaseException as exc:
            raised.append(exc)
            raise

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    try:
        async with serve(app) as server:
            with pytest.raises(InvalidStatus) as refused:
                await connect(f"{server.ws_url}/ws")
            assert refused.value.response.status_code == 403
    finally:
        await manager.stop_tasks(timeout=5)
    [error] = raised
    assert isinstance(error, ValidationError)
    assert error.error_code == "INVALID_NAME"
    assert error.ws_code == CloseCode.POLICY_VIOLATION
    assert len(manager.registry) == 0
