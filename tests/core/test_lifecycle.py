"""Connections come and go without leaks; limits, heartbeat, shutdown and bad input."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fastapi_channels import get_manager
from fastapi_channels import manager as manager_module
from tests.core.conftest import FAST, StartServer
from tests.support.client import Client


async def test_a_thousand_connect_disconnect_cycles_leave_no_trace(start_server: StartServer) -> None:
    async with start_server() as (server, manager):
        baseline_topics = manager.subscribed_topics
        baseline_tasks = len(asyncio.all_tasks())
        for round_ in range(100):
            clients = [await Client.open(server.ws_url, f"user{i % 3}") for i in range(10)]
            for index, client in enumerate(clients):
                await client.send(op="join", group=f"g{index % 4}")
            for client in clients:
                assert (await client.next())["type"] == "joined"
            if round_ % 2:
                await asyncio.gather(*(client.close() for client in clients))
            else:  # half the rounds end from the server side
                await asyncio.gather(*(manager.disconnect(c.channel_name) for c in clients))
                await asyncio.gather(*(client.close() for client in clients))
        for _ in range(100):
            if len(manager.registry) == 0 and len(asyncio.all_tasks()) <= baseline_tasks:
                break
            await asyncio.sleep(0.05)
        stats = manager.get_stats()
        assert (stats["connections"], stats["users"], stats["groups"]) == (0, 0, 0)
        assert stats["connections_opened"] == stats["connections_closed"] == 1000
        assert manager.subscribed_topics == baseline_topics
        hub = manager.backend.hub  # type: ignore[attr-defined]
        assert hub.connections == {} and hub.users == {} and hub.groups == {}
        assert set(hub.subscribers) == set(baseline_topics)
        assert len(asyncio.all_tasks()) <= baseline_tasks


async def test_per_user_and_total_limits_refuse_cleanly(start_server: StartServer) -> None:
    async with start_server(MAX_CONNECTIONS_PER_CLIENT=2, MAX_TOTAL_CONNECTIONS=3) as (server, manager):
        await Client.open(server.ws_url, "alice")
        await Client.open(server.ws_url, "alice")
        with pytest.raises(ConnectionClosed) as per_user:
            await Client.open(server.ws_url, "alice")
        assert per_user.value.rcvd is not None
        assert (per_user.value.rcvd.code, per_user.value.rcvd.reason) == (1013, "CONNECTION_LIMIT_EXCEEDED")
        await Client.open(server.ws_url, "bob")
        with pytest.raises(ConnectionClosed) as total:
            await Client.open(server.ws_url, "carol")
        assert total.value.rcvd is not None and total.value.rcvd.code == 1013
        assert manager.get_stats()["connections_refused"] == 2
        assert len(manager.registry) == 3


async def test_a_silent_client_is_pinged_then_closed_and_a_chatty_one_stays(
    start_server: StartServer,
) -> None:
    async with start_server(WS_HEARTBEAT_INTERVAL=0.2, WS_HEARTBEAT_TIMEOUT=0.8) as (server, manager):
        silent = await Client.open(server.ws_url, "silent")
        chatty = await Client.open(server.ws_url, "chatty")
        ping = json.loads(await asyncio.wait_for(silent.ws.recv(), 5))
        assert ping["type"] == "ping" and isinstance(ping["timestamp"], float)

        async def keep_answering() -> None:
            while True:
                frame = json.loads(await chatty.ws.recv())
                if frame["type"] == "ping":
                    await chatty.ws.send(json.dumps({"type": "pong"}))

        answering = asyncio.create_task(keep_answering())
        try:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(silent.ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
            assert manager.get_connection(chatty.channel_name) is not None
            assert manager.get_connection(silent.channel_name) is None
            assert manager.get_stats()["heartbeat_closes"] == 1
        finally:
            answering.cancel()


async def test_heartbeat_can_be_turned_off(start_server: StartServer) -> None:
    async with start_server(
        WS_ENABLE_HEARTBEAT=False, WS_HEARTBEAT_INTERVAL=0.05, WS_HEARTBEAT_TIMEOUT=0.1
    ) as (
        server,
        manager,
    ):
        silent = await Client.open(server.ws_url, "silent")
        manager.heartbeat_sweep  # noqa: B018 - the sweeper exists but is not running
        await asyncio.sleep(0.5)  # five timeouts of silence
        assert (await silent.call("echo", op="echo", data=1))["data"] == 1
        assert manager.get_stats()["heartbeat_closes"] == 0


async def test_malformed_input_never_kills_the_server(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with start_server() as (server, manager):
        healthy = await Client.open(server.ws_url, "healthy")
        for bad in ("not json", "[1,2]", '{"op": "join"}', b"\xff\xfe binary"):
            victim = await Client.open(server.ws_url, "victim")
            await victim.ws.send(bad)
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(victim.ws.recv(), 5)
        async with connect(f"{server.ws_url}/ws/big", max_size=None) as big:
            await big.recv()
            await big.send("x" * (17 * 1024 * 1024))  # above uvicorn's 16 MiB default
            with pytest.raises(ConnectionClosed) as too_big:
                while True:
                    await asyncio.wait_for(big.recv(), 10)
            assert too_big.value.rcvd is not None and too_big.value.rcvd.code == 1009
        assert (await healthy.call("echo", op="echo", data="still here"))["data"] == "still here"
        for _ in range(50):
            if len(manager.registry) == 1:
                break
            await asyncio.sleep(0.05)
        assert len(manager.registry) == 1


async def test_stop_tasks_closes_everyone_with_1001(start_server: StartServer) -> None:
    async with start_server() as (server, manager):
        clients = [await Client.open(server.ws_url, f"u{i}") for i in range(5)]
        for client in clients:
            await client.call("joined", op="join", group="room")
        await manager.stop_tasks(timeout=5)
        for client in clients:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(client.ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert len(manager.registry) == 0
        assert not manager.get_stats()["started"]
        assert manager.backend.hub.connections == {}  # type: ignore[attr-defined]


async def test_server_shutdown_sends_every_client_a_close_frame(
    start_server: StartServer, ws_impl: str
) -> None:
    clients: list[Client] = []
    async with start_server() as (server, manager):
        clients = [await Client.open(server.ws_url, f"u{i}") for i in range(5)]
    # uvicorn's own protocols close with 1012 (service restart) before the lifespan runs;
    # the library's fast-path protocol says 1001 (going away).
    expected = 1001 if ws_impl == FAST else 1012
    for client in clients:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(client.ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == expected
    assert len(manager.registry) == 0


async def test_get_manager_without_a_manager_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "_default_manager", None)
    with pytest.raises(RuntimeError, match="no ConnectionManager exists yet"):
        get_manager()


async def test_a_refused_connection_logs_no_traceback(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with start_server(MAX_TOTAL_CONNECTIONS=1) as (server, _):
        await Client.open(server.ws_url, "first")
        with caplog.at_level(logging.ERROR), pytest.raises(ConnectionClosed):
            await Client.open(server.ws_url, "second")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
