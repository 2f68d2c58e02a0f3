"""What a server sent before a leave, a kick or a stop reaches the client first, or is counted.

Found by an adversarial review of the delivery contract (2026-12-01); each test failed before
its fix. On Redis a group send comes back to its own server through the reader after the call
returned, so a leave or a kick right after it used to run first and the message was lost with
nobody told (a personal frame held behind it too, though `send_personal` had said True).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from fastapi import FastAPI, WebSocket

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.exceptions import ConnectionError as ChannelsConnectionError
from fastapi_channels.testing import Communicator, LocalCluster, serve
from tests.support.client import Client
from tests.support.eventually import eventually
from tests.support.member_app import member_app
from tests.support.redis_server import RedisProcess
from tests.support.serving import FAST, SANSIO, StartServer


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, redis_server: RedisProcess, redis_prefix: str) -> dict[str, Any]:
    if request.param == "memory":
        return {"BACKEND_TYPE": "memory"}
    return {"BACKEND_TYPE": "redis", "REDIS_URL": redis_server.url, "REDIS_CHANNEL_PREFIX": redis_prefix}


@pytest.mark.parametrize("ws", [SANSIO, FAST], ids=["sansio", "fastpath"])
async def test_a_group_send_then_a_leave_reaches_the_member_first(
    start_server: StartServer, backend: dict[str, Any], ws: str
) -> None:
    async with start_server(ws=ws, WS_STRICT_DELIVERY=True, **backend) as (server, manager):
        member = await Client.open(server, "member", compression=None)
        for round_ in range(30):
            await manager.join_group(member.channel_name, "room")
            await manager.send_to_group("room", {"type": "group", "data": round_})
            await manager.leave_group(member.channel_name, "room")
        assert [(await member.next())["data"] for _ in range(30)] == list(range(30))
        assert manager.get_stats()["messages_dropped"] == 0


@pytest.mark.parametrize("ws", [SANSIO, FAST], ids=["sansio", "fastpath"])
async def test_a_group_send_and_a_personal_send_then_a_kick_arrive_before_the_close(
    start_server: StartServer, backend: dict[str, Any], ws: str
) -> None:
    async with start_server(ws=ws, **backend) as (server, manager):
        for round_ in range(10):
            client = await Client.open(server, f"kicked{round_}", compression=None)
            await manager.join_group(client.channel_name, "room")
            await manager.send_to_group("room", {"type": "group", "data": round_})
            assert await manager.send_personal(client.channel_name, {"type": "personal", "data": round_})
            await manager.disconnect(client.channel_name, 4000, "kicked")
            frames = await client.read_until_closed()
            assert [(frame["type"], frame["data"]) for frame in frames] == [
                ("group", round_),
                ("personal", round_),
            ]
            assert client.close_code == 4000
        assert manager.get_stats()["messages_dropped"] == 0


async def test_a_frame_to_a_member_that_is_closing_is_counted_as_dropped(start_server: StartServer) -> None:
    """Still a member while it closes (its on_disconnect may run then), it takes no frame: each
    one sent to it is counted, as a close's cut frames are."""
    async with start_server(BACKEND_TYPE="memory") as (server, manager):
        member = await Client.open(server, "member")
        await member.call("joined", op="join", group="room")
        connection = manager.get_connection(member.channel_name)
        assert connection is not None
        dropped = manager.get_stats()["messages_dropped"]
        connection.close(4000, "closing")
        assert member.channel_name in {c.channel_name for c in manager.get_group_connections("room")}
        await manager.send_to_group("room", {"type": "group", "data": "to a closing member"})
        assert manager.get_stats()["messages_dropped"] == dropped + 1
        assert connection.messages_dropped == 1
        assert await member.read_until_closed() == []


async def test_a_stop_that_begins_during_a_connect_leaves_no_connection_behind(
    redis_server: RedisProcess, redis_prefix: str
) -> None:
    """stop_tasks closes what the registry holds: a connect admitted meanwhile is refused
    (1001), never registered on the stopped manager, open and counted nowhere."""
    manager = ConnectionManager(
        ws_config=WSConfig(
            BACKEND_TYPE="redis",
            REDIS_URL=redis_server.url,
            REDIS_CHANNEL_PREFIX=redis_prefix,
            LOG_STATS=False,
        )
    )
    app = FastAPI()
    stops: list[asyncio.Task[None]] = []

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        stops.append(asyncio.create_task(manager.stop_tasks(timeout=2)))  # begins during the admission
        try:
            await manager.connect(websocket)
        except ChannelsConnectionError as refused:
            assert refused.error_code == "SERVER_SHUTTING_DOWN"
            raise
        await asyncio.Event().wait()  # held open, as an endpoint's receive loop would

    async with serve(app) as server:
        for _ in range(10):
            await manager.start_tasks()
            async with websockets.connect(f"{server.ws_url}/ws") as client:
                await asyncio.gather(*stops)
                stops.clear()
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(client.recv(), 5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            await eventually(lambda: len(manager.registry) == 0, what="an empty registry")
            assert not manager.get_stats()["started"]


async def test_live_frames_past_a_replays_hold_are_counted_as_dropped(start_server: StartServer) -> None:
    """A join with a position while the group is published to holds live frames until the
    replay is out, up to WS_OUTBOUND_QUEUE_MESSAGES; under a drop policy the ones past it are
    lost to that member, and counted."""
    async with start_server(
        BACKEND_TYPE="memory",
        WS_HISTORY_GROUPS="room.*",
        WS_HISTORY_SIZE=4000,
        WS_OUTBOUND_QUEUE_MESSAGES=64,
        WS_SLOW_CONSUMER_POLICY="drop_newest",
        WS_ENABLE_HEARTBEAT=False,
    ) as (server, manager):
        for index in range(2000):
            await manager.send_to_group("room.1", {"type": "old", "i": index})
        epoch = (await manager.history("room.1", limit=1)).epoch
        async with websockets.connect(f"{server.ws_url}/ws/bob", max_queue=None, compression=None) as client:
            hello = json.loads(await client.recv())
            offsets: list[int] = []

            async def read() -> None:
                while True:
                    offsets.append(json.loads(await client.recv())["offset"])

            reading = asyncio.create_task(read())

            async def publish() -> None:
                for index in range(300):
                    await manager.send_to_group("room.1", {"type": "live", "i": index})
                    await asyncio.sleep(0.001)

            publishing = asyncio.create_task(publish())
            await asyncio.sleep(0.002)
            dropped = manager.get_stats()["messages_dropped"]
            await manager.join_group(hello["channel_name"], "room.1", since=(epoch, 0))
            await publishing

            def accounted() -> bool:  # each of the 2300 offsets received or counted as dropped
                return bool(len(set(offsets)) + manager.get_stats()["messages_dropped"] - dropped == 2300)

            await eventually(accounted, what="every offset received or counted")
            reading.cancel()
        missing = set(range(1, 2301)) - set(offsets)
        assert len(missing) == manager.get_stats()["messages_dropped"] - dropped
        assert len(offsets) == len(set(offsets))  # and nothing twice


async def test_a_send_from_one_server_then_a_leave_on_another_reaches_the_member_first(
    redis_server: RedisProcess,
) -> None:
    """Nothing but the order of the two calls links them: the leave fences the group's
    partition (a token through the leaving server's own probe channel), so the send that
    Redis handed that server's reader before reaches the member first."""
    async with LocalCluster(2, redis_url=redis_server.url, app_factory=member_app) as cluster:
        sender, owner = cluster.managers
        async with Communicator(cluster.apps[1], "/ws/member") as member:
            name = (await member.receive_json_from(5))["channel_name"]
            for round_ in range(50):
                await owner.join_group(name, "room")
                await sender.send_to_group("room", {"type": "group", "data": round_})
                await owner.leave_group(name, "room")
            received = [(await member.receive_json_from(5))["data"] for _ in range(50)]
            assert received == list(range(50))
            assert await member.receive_nothing(0.2)


async def test_sends_from_one_server_then_a_disconnect_on_another_reach_the_client_first(
    redis_server: RedisProcess,
) -> None:
    """The same for a kick: the owner fences every partition the connection hears through
    (its groups', and the home's for its user, its inbox and everyone) before it closes."""
    async with LocalCluster(2, redis_url=redis_server.url, app_factory=member_app) as cluster:
        sender, owner = cluster.managers
        for round_ in range(10):
            member = Communicator(cluster.apps[1], f"/ws/member{round_}")
            connected, _ = await member.connect()
            assert connected
            name = (await member.receive_json_from(5))["channel_name"]
            await owner.join_group(name, "room")
            await sender.send_to_group("room", {"type": "group", "data": round_})
            await sender.send_to_user(f"member{round_}", {"type": "user", "data": round_})
            await sender.broadcast({"type": "everyone", "data": round_})
            await owner.disconnect(name, 4000, "kicked")
            frames = [await member.receive_json_from(5) for _ in range(3)]
            assert sorted((frame["type"], frame["data"]) for frame in frames) == [
                ("everyone", round_),
                ("group", round_),
                ("user", round_),
            ]
            with pytest.raises(ConnectionError):
                await member.receive_from(5)
            assert member.close_code == 4000
