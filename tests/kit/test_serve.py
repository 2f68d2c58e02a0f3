"""BaseConsumer.serve / as_route: the library owns the connection loop and its one ending."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

from fastapi_channels import BaseConsumer, ConnectionManager, WSConfig
from fastapi_channels.exceptions import AuthenticationError
from fastapi_channels.messages import Message
from fastapi_channels.testing import Communicator, app_lifespan
from tests.support.consumer_app import consumer_app


class RoomConsumer(BaseConsumer):
    subprotocols = ("chat.v2", "chat.v1")
    ended: list[dict[str, Any]] = []

    async def connect(self) -> None:
        await self.join_group("room")
        await self.send({"type": "welcome", "groups": sorted(self.groups)})

    async def on_say(self, message: Message) -> None:
        await self.send_to_group("room", {"type": "said", "text": message.data})

    async def on_boom(self, message: Message) -> None:
        raise RuntimeError("a bug in a handler")

    async def on_leave_me(self, message: Message) -> None:
        raise AuthenticationError("token expired")

    async def on_hang(self, message: Message) -> None:
        await asyncio.Event().wait()

    async def on_disconnect(self, code: int) -> None:
        members = [c.channel_name for c in self.manager.get_group_connections("room")]
        RoomConsumer.ended.append(
            {"code": code, "groups": sorted(self.groups), "still_member": self.channel_name in members}
        )


def make_app() -> tuple[FastAPI, ConnectionManager]:
    app, manager = consumer_app(RoomConsumer, WSConfig(LOG_STATS=False))

    @app.websocket("/direct/{user}")
    async def direct(websocket: WebSocket, user: str) -> None:
        await RoomConsumer.serve(websocket, manager, user_id=user, connection_id=f"c-{user}")

    return app, manager


@pytest.fixture(autouse=True)
def reset_log() -> None:
    RoomConsumer.ended.clear()


async def test_a_served_consumer_talks_and_ends_once_while_still_a_member() -> None:
    app, manager = make_app()
    async with (
        app_lifespan(app),
        Communicator(app, "/ws/ann") as ann,
        Communicator(app, "/direct/bob") as bob,
    ):
        assert await ann.receive_json_from() == {"type": "welcome", "groups": ["room"]}
        assert (await bob.receive_json_from())["type"] == "welcome"
        assert manager.get_connection(manager.server_id + "!c-bob") is not None
        await ann.send_json_to({"type": "say", "data": "hi"})
        for client in (ann, bob):
            assert await client.receive_json_from() == {"type": "said", "text": "hi"}
        await ann.disconnect(code=1001)
        assert RoomConsumer.ended == [{"code": 1001, "groups": ["room"], "still_member": True}]
        assert len(manager.registry) == 1


async def test_the_consumer_picks_a_subprotocol_the_client_offered() -> None:
    app, _ = make_app()
    async with app_lifespan(app):
        for offered, chosen in (
            (["chat.v1", "chat.v2"], "chat.v2"),
            (["chat.v1"], "chat.v1"),
            (["other"], None),
        ):
            comm = Communicator(app, "/ws/p", subprotocols=offered)
            assert await comm.connect() == (True, chosen)
            await comm.disconnect()


async def test_a_server_side_close_runs_on_disconnect_once_before_the_groups_are_left() -> None:
    app, manager = make_app()
    async with Communicator(app, "/ws/kick") as kicked:
        await kicked.receive_json_from()
        (connection,) = manager.get_group_connections("room")
        await manager.disconnect(connection.channel_name, 4000, "bye")
        with pytest.raises(ConnectionError):
            await kicked.receive_from()
        assert (kicked.close_code, kicked.close_reason) == (4000, "bye")
        await asyncio.sleep(0)  # the serve loop ends on the close it sees
    assert RoomConsumer.ended == [{"code": 4000, "groups": ["room"], "still_member": True}]


async def test_an_error_that_ends_the_connection_closes_with_its_code_after_its_frame() -> None:
    app, manager = make_app()
    async with Communicator(app, "/ws/err") as client:
        await client.receive_json_from()
        await client.send_json_to({"type": "boom"})
        assert (await client.receive_json_from())["error_code"] == "INTERNAL_ERROR"  # kept open
        await client.send_json_to({"type": "leave_me"})
        assert (await client.receive_json_from())["error_code"] == "AUTHENTICATION_FAILED"
        with pytest.raises(ConnectionError):
            await client.receive_from()
        assert client.close_code == 4001
    assert [entry["code"] for entry in RoomConsumer.ended] == [4001]
    assert len(manager.registry) == 0


async def test_a_cancelled_endpoint_still_disconnects_once() -> None:
    app, manager = make_app()
    async with app_lifespan(app):
        client = Communicator(app, "/ws/hang")
        await client.connect()
        await client.receive_json_from()
        await client.send_json_to({"type": "hang"})
        await asyncio.sleep(0.05)
        assert client._task is not None
        client._task.cancel()
        await asyncio.wait([client._task])
        assert RoomConsumer.ended == [{"code": 1001, "groups": ["room"], "still_member": True}]
        assert len(manager.registry) == 0
        await client.disconnect()


async def test_the_spec_long_hand_loop_also_ends_once_while_still_a_member() -> None:
    """The loop the spec's README writes by hand keeps working, and gains the same ending."""
    from starlette.websockets import WebSocketDisconnect

    from fastapi_channels.exceptions import BaseError

    manager = ConnectionManager(WSConfig(LOG_STATS=False))

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        await manager.start_tasks()
        yield
        await manager.stop_tasks(timeout=5)

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{user_id}")
    async def websocket_endpoint(websocket: WebSocket, user_id: str) -> None:
        connection = await manager.connect(websocket=websocket, user_id=user_id)
        consumer = RoomConsumer(connection=connection, manager=manager)
        try:
            await consumer.connect()
            while True:
                message = await websocket.receive()
                if "text" in message:
                    await consumer.handle_message(json_str=message["text"])
                elif "bytes" in message:
                    await consumer.handle_message(binary=message["bytes"])
        except WebSocketDisconnect:
            await consumer.disconnect(1000)
        except BaseError as e:
            if e.should_disconnect():
                await consumer.disconnect(e.ws_code)
            else:
                await consumer.handle_error(e)
        except Exception:
            await consumer.disconnect(1011)

    async with Communicator(app, "/ws/old") as client:
        assert (await client.receive_json_from())["type"] == "welcome"
    assert len(RoomConsumer.ended) == 1 and RoomConsumer.ended[0]["still_member"] is True
    assert len(manager.registry) == 0
