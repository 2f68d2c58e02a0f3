"""Edge cases of the fast path: compression, interleaving with protocol pings, close mid-fan-out."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import ConnectionClosed

from fastapi_channels.framing import encode_frame
from tests.support.client import Client
from tests.support.serving import FAST, StartServer


def test_frames_follow_rfc_6455_length_forms() -> None:
    assert encode_frame("hi") == b"\x81\x02hi"
    assert encode_frame(b"\x00") == b"\x82\x01\x00"
    assert encode_frame("a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert encode_frame(b"a" * 65536)[:10] == b"\x82\x7f" + (65536).to_bytes(8, "big")


async def test_a_connection_with_permessage_deflate_takes_the_standard_path(
    start_server: StartServer,
) -> None:
    # A server that negotiates compression (`serve` turns it off, as the CLI does).
    async with start_server(ws=FAST, uvicorn={"ws_per_message_deflate": True}) as (server, manager):
        plain = await Client.open(server, "plain", compression=None)
        deflated = await Client.open(server, "deflated")  # the client offers permessage-deflate
        assert manager.get_connection(plain.channel_name).uses_fast_path  # type: ignore[union-attr]
        assert not manager.get_connection(deflated.channel_name).uses_fast_path  # type: ignore[union-attr]
        for client in (plain, deflated):
            await client.call("joined", op="join", group="room")
        for sequence in range(100):
            await manager.send_to_group("room", {"type": "group", "data": sequence})
        for client in (plain, deflated):
            assert [(await client.next())["data"] for _ in range(100)] == list(range(100))


async def test_fast_frames_interleave_cleanly_with_the_protocols_own_pings(
    start_server: StartServer,
) -> None:
    async with start_server(ws=FAST, uvicorn={"ws_ping_interval": 0.01, "ws_ping_timeout": 5}) as (
        server,
        manager,
    ):
        client = await Client.open(server, "a", compression=None, max_size=None)
        await client.call("joined", op="join", group="room")
        for sequence in range(3000):
            await manager.send_to_group("room", {"type": "group", "data": sequence, "pad": "y" * 500})
            if sequence % 100 == 0:
                await asyncio.sleep(0.005)  # room for keepalive pings between bursts
        assert [(await client.next())["data"] for _ in range(3000)] == list(range(3000))


async def test_closing_a_member_during_a_fan_out_burst_hurts_no_one(start_server: StartServer) -> None:
    async with start_server(ws=FAST) as (server, manager):
        clients = [await Client.open(server, f"u{i}", compression=None) for i in range(5)]
        for client in clients:
            await client.call("joined", op="join", group="room")
        leaving = clients[2]
        for sequence in range(500):
            await manager.send_to_group("room", {"type": "group", "data": sequence})
            if sequence == 250:
                manager.get_connection(leaving.channel_name).close(4100, "bye")  # type: ignore[union-attr]
        for client in clients:
            if client is leaving:
                continue
            assert [(await client.next())["data"] for _ in range(500)] == list(range(500))
        got = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got.append((await leaving.next())["data"])
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4100
        assert got == list(range(len(got))) and 250 <= len(got) <= 500
