"""The ASGI path sends eagerly through uvicorn's own send, and only through it: an app's ASGI
middleware that wraps `send` sees every frame, from a task, as before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_channels import ConnectionManager
from fastapi_channels.testing import ServerHandle
from tests.support.client import Client
from tests.support.serving import FAST, LEGACY, SANSIO, StartServer


class SendWitness:
    """An app's ASGI middleware that wraps `send` and notes, for every frame sent, the task
    it ran in: code here may rely on one (asyncio.timeout, anyio, tracing spans)."""

    frames: list[tuple[str, bool]] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def witnessed(message: Message) -> None:
            if message["type"] == "websocket.send":
                async with asyncio.timeout(5):  # raises outside a task
                    SendWitness.frames.append((message["text"], asyncio.current_task() is not None))
            await send(message)

        await self.app(scope, receive, witnessed)


async def joined(server: ServerHandle, names: list[str], **options: Any) -> list[Client]:
    clients = [await Client.open(server, name, **options.get(name, {})) for name in names]
    for client in clients:
        await client.call("joined", op="join", group="room")
    return clients


async def fan_out_in_order(manager: ConnectionManager, clients: list[Client], count: int) -> None:
    """`count` numbered group messages from the server: every member gets all, in order."""
    for sequence in range(count):
        await manager.send_to_group("room", {"type": "group", "data": sequence})
    for client in clients:
        assert [(await client.next())["data"] for _ in range(count)] == list(range(count))


@pytest.mark.parametrize(("ws", "eager"), [(SANSIO, True), (LEGACY, False)], ids=["sansio", "legacy"])
async def test_uvicorns_own_send_is_run_eagerly_and_everything_arrives(
    start_server: StartServer, ws: str, eager: bool
) -> None:
    async with start_server(ws=ws) as (server, manager):
        clients = await joined(server, [f"member{i}" for i in range(4)])
        assert [connection.sends_eagerly for connection in manager.registry] == [eager] * 4
        await fan_out_in_order(manager, clients, 300)
        assert manager.get_stats()["messages_sent"] == 4 * 302  # a welcome, a join reply, 300 of the group


async def test_a_fast_path_server_sends_eagerly_where_it_falls_back_to_asgi(
    start_server: StartServer,
) -> None:
    # A server that negotiates compression (`serve` turns it off, as the CLI does).
    async with start_server(ws=FAST, uvicorn={"ws_per_message_deflate": True}) as (server, manager):
        # The client offers permessage-deflate unless told not to: that connection takes the ASGI path.
        plain, deflated = await joined(server, ["plain", "deflated"], plain={"compression": None})
        on_fast = manager.get_connection(plain.channel_name)
        on_asgi = manager.get_connection(deflated.channel_name)
        assert on_fast is not None and on_fast.uses_fast_path and not on_fast.sends_eagerly
        assert on_asgi is not None and not on_asgi.uses_fast_path and on_asgi.sends_eagerly
        await fan_out_in_order(manager, [plain, deflated], 100)


async def test_a_protocol_subclass_that_overrides_send_is_sent_to_from_the_writer_task(
    start_server: StartServer,
) -> None:
    # Its send needs a current task: stepped outside one, every connection closed with 1011.
    async with start_server(ws="tests.support.deadlined_ws:DeadlinedProtocol") as (server, manager):
        clients = await joined(server, [f"member{i}" for i in range(3)])
        assert [connection.sends_eagerly for connection in manager.registry] == [False] * 3
        await fan_out_in_order(manager, clients, 100)
        assert manager.get_stats()["send_failures"] == 0


async def test_a_middleware_wrapping_send_sees_every_frame_from_a_task(start_server: StartServer) -> None:
    SendWitness.frames = []

    def wrap(app: FastAPI) -> None:
        app.add_middleware(SendWitness)

    async with start_server(extend=wrap) as (server, manager):
        clients = await joined(server, [f"member{i}" for i in range(3)])
        assert [connection.sends_eagerly for connection in manager.registry] == [False] * 3
        await fan_out_in_order(manager, clients, 50)
    group_frames = [frame for frame, _ in SendWitness.frames if frame.startswith('{"type":"group"')]
    assert len(group_frames) == 3 * 50
    assert all(in_task for _, in_task in SendWitness.frames)
