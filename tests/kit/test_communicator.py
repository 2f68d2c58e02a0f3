"""The test kit users import: Communicator (no port, no process) and LocalCluster."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.testing import Communicator, LocalCluster, app_lifespan
from tests.support.redis_server import RedisProcess


def chat_app(manager: ConnectionManager) -> FastAPI:
    """A small app: `{"op": "join"|"say"|"echo", ...}` commands over /ws/{user}."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        await manager.start_tasks()
        yield
        await manager.stop_tasks(timeout=5)

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{user}")
    async def endpoint(websocket: WebSocket, user: str) -> None:
        connection = await manager.connect(websocket, user_id=user)
        name = connection.channel_name
        await manager.send_personal(name, {"type": "hello", "user": user})
        try:
            while True:
                command: dict[str, Any] = await websocket.receive_json()
                if command["op"] == "join":
                    await manager.join_group(name, command["room"])
                    await manager.send_personal(name, {"type": "joined"})
                elif command["op"] == "say":
                    await manager.send_to_group(
                        command["room"], {"type": "said", "by": user, "text": command["text"]}
                    )
                else:
                    await manager.send_personal(name, {"type": "echo", "text": command.get("text")})
        except WebSocketDisconnect:
            await manager.disconnect(name)

    return app


async def test_a_communicator_talks_to_the_endpoint_without_a_server() -> None:
    manager = ConnectionManager(WSConfig(LOG_STATS=False))
    app = chat_app(manager)
    async with Communicator(app, "/ws/alice") as alice:
        assert await alice.receive_json_from() == {"type": "hello", "user": "alice"}
        assert await alice.receive_nothing(0.05)
        await alice.send_json_to({"op": "echo", "text": "hi"})
        assert await alice.receive_json_from() == {"type": "echo", "text": "hi"}
        assert manager.get_stats()["connections"] == 1
    # The last communicator left: the endpoint ran its cleanup and the lifespan stopped.
    assert len(manager.registry) == 0
    assert manager.get_stats()["started"] is False


async def test_several_communicators_share_one_app_and_its_lifespan() -> None:
    manager = ConnectionManager(WSConfig(LOG_STATS=False))
    app = chat_app(manager)
    async with app_lifespan(app), Communicator(app, "/ws/a") as a, Communicator(app, "/ws/b") as b:
        for client in (a, b):
            await client.receive_json_from()
            await client.send_json_to({"op": "join", "room": "r"})
            assert (await client.receive_json_from())["type"] == "joined"
        await a.send_json_to({"op": "say", "room": "r", "text": "hello"})
        for client in (a, b):
            assert await client.receive_json_from() == {"type": "said", "by": "a", "text": "hello"}
    assert manager.get_stats()["started"] is False


async def test_a_refused_connection_reports_its_close_code_and_reason() -> None:
    manager = ConnectionManager(WSConfig(LOG_STATS=False, MAX_CONNECTIONS_PER_CLIENT=1))
    app = chat_app(manager)
    async with Communicator(app, "/ws/solo"):
        # Over a limit the manager accepts and closes at once, so the client sees why.
        second = Communicator(app, "/ws/solo")
        await second.connect()
        with pytest.raises(ConnectionError, match="1013"):
            await second.receive_from()
        assert (second.close_code, second.close_reason) == (1013, "CONNECTION_LIMIT_EXCEEDED")
        await second.disconnect()
        # Refused before accept (a user id that is not a name): the handshake fails.
        bad = Communicator(app, "/ws/" + "x" * 300)
        assert await bad.connect() == (False, 1008)
        await bad.disconnect()
        with pytest.raises(AssertionError, match="refused"):
            async with Communicator(app, "/ws/" + "x" * 300):
                pass


async def test_a_client_disconnect_reaches_the_app() -> None:
    manager = ConnectionManager(WSConfig(LOG_STATS=False))
    app = chat_app(manager)
    async with app_lifespan(app):
        comm = Communicator(app, "/ws/gone")
        await comm.connect()
        await comm.receive_json_from()
        await comm.disconnect(code=1001)
        assert len(manager.registry) == 0
        with pytest.raises(ConnectionError):
            await comm.receive_from()


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_a_local_cluster_carries_messages_between_its_servers(
    broker: str, redis_server: RedisProcess
) -> None:
    url = redis_server.url if broker == "redis" else None
    async with LocalCluster(2, redis_url=url, app_factory=chat_app) as cluster:
        first, second = cluster.apps
        async with Communicator(first, "/ws/ann") as ann, Communicator(second, "/ws/bob") as bob:
            for client in (ann, bob):
                await client.receive_json_from()
                await client.send_json_to({"op": "join", "room": "lobby"})
                assert (await client.receive_json_from())["type"] == "joined"
            await bob.send_json_to({"op": "say", "room": "lobby", "text": "across"})
            assert await ann.receive_json_from(timeout=5) == {"type": "said", "by": "bob", "text": "across"}
            assert await bob.receive_json_from(timeout=5) == {"type": "said", "by": "bob", "text": "across"}
            assert await cluster.managers[0].group_size("lobby") == 2
        # The cluster's servers stay up between communicators.
        assert all(m.get_stats()["started"] for m in cluster.managers)
    assert not any(m.get_stats()["started"] for m in cluster.managers)


async def test_a_percent_encoded_path_reaches_the_app_decoded_as_a_server_hands_it_over() -> None:
    manager = ConnectionManager(WSConfig(LOG_STATS=False))
    app = chat_app(manager)
    async with Communicator(app, "/ws/Carol%20Smith") as carol:
        assert await carol.receive_json_from() == {"type": "hello", "user": "Carol Smith"}
