"""Who receives what: groups, users, personal sends, broadcast, order, leave."""

from __future__ import annotations

import asyncio

from tests.core.conftest import StartServer
from tests.support.client import Client


async def test_group_messages_reach_members_only_in_order(start_server: StartServer) -> None:
    async with start_server() as (server, manager):
        members = [await Client.open(server.ws_url, f"m{i}") for i in range(3)]
        outsider = await Client.open(server.ws_url, "outsider")
        for member in members:
            await member.call("joined", op="join", group="room")
        for sequence in range(200):
            await manager.send_to_group("room", {"type": "group", "data": sequence})
        for member in members:
            assert [(await member.next())["data"] for _ in range(200)] == list(range(200))
        await manager.send_personal(outsider.channel_name, {"type": "marker"})
        assert (await outsider.next()) == {"type": "marker"}  # nothing of the room's before it


async def test_order_is_kept_per_sender_across_clients(start_server: StartServer) -> None:
    async with start_server() as (server, _):
        a, b = await Client.open(server.ws_url, "a"), await Client.open(server.ws_url, "b")
        for client in (a, b):
            await client.call("joined", op="join", group="room")
        for sequence in range(100):
            await a.send(op="group", group="room", data=["a", sequence])
            await b.send(op="group", group="room", data=["b", sequence])
        for receiver in (a, b):
            seen: dict[str, list[int]] = {"a": [], "b": []}
            for _ in range(200):
                sender, sequence = (await receiver.next())["data"]
                seen[sender].append(sequence)
            assert seen == {"a": list(range(100)), "b": list(range(100))}


async def test_user_sends_reach_every_connection_of_the_user(start_server: StartServer) -> None:
    async with start_server() as (server, manager):
        phone, laptop = await Client.open(server.ws_url, "alice"), await Client.open(server.ws_url, "alice")
        bob = await Client.open(server.ws_url, "bob")
        reply = await bob.call("user_sent", op="user", user="alice", data="hi")
        assert reply["count"] == 2
        for device in (phone, laptop):
            assert (await device.next()) == {"type": "user", "data": "hi"}
        assert await manager.send_to_user("nobody", {"type": "user"}) == 0


async def test_broadcast_and_personal_sends(start_server: StartServer) -> None:
    async with start_server() as (server, manager):
        clients = [await Client.open(server.ws_url, f"u{i}") for i in range(4)]
        await clients[0].send(op="broadcast", data="all")
        for client in clients:
            assert (await client.next()) == {"type": "broadcast", "data": "all"}
        await clients[1].send(op="personal", to=clients[3].channel_name, data="psst")
        assert (await clients[3].next()) == {"type": "personal", "data": "psst"}
        assert await manager.send_personal(clients[2].channel_name, "raw text") is True
        assert await asyncio.wait_for(clients[2].ws.recv(), 5) == "raw text"
        assert await manager.send_personal(clients[2].channel_name, b"\x00\x01") is True
        assert await asyncio.wait_for(clients[2].ws.recv(), 5) == b"\x00\x01"
        assert await manager.send_personal(f"{manager.server_id}!gone", {"type": "x"}) is False


async def test_leave_stops_delivery_and_except_skips_the_sender(start_server: StartServer) -> None:
    async with start_server() as (server, manager):
        a, b = await Client.open(server.ws_url, "a"), await Client.open(server.ws_url, "b")
        for client in (a, b):
            await client.call("joined", op="join", group="room")
        await a.send(op="group_except", group="room", data="not to a")
        assert (await b.next()) == {"type": "group", "data": "not to a"}
        await b.call("left", op="leave", group="room")
        assert manager.get_group_connections("room") == [manager.get_connection(a.channel_name)]
        await a.send(op="group", group="room", data="only a")
        assert (await a.next()) == {"type": "group", "data": "only a"}
        await manager.send_personal(b.channel_name, {"type": "marker"})
        assert (await b.next()) == {"type": "marker"}


async def test_large_and_binary_frames(start_server: StartServer) -> None:
    async with start_server() as (server, manager):
        a = await Client.open(server.ws_url, "a", max_size=None)
        await a.call("joined", op="join", group="room")
        for size in (125, 126, 65535, 65536, 300_000):
            await manager.send_to_group("room", "é" * size)
            assert await asyncio.wait_for(a.ws.recv(), 5) == "é" * size
            await manager.send_to_group("room", bytes(range(256)) * (size // 256 + 1))
            assert await asyncio.wait_for(a.ws.recv(), 5) == bytes(range(256)) * (size // 256 + 1)
