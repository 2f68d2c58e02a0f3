"""The heartbeat: idle clients get {"type": "ping"}; any frame from a client is liveness; a
client silent for WS_HEARTBEAT_TIMEOUT is closed with 4000; WS_ENABLE_HEARTBEAT=false turns
all of it off. Silence is at the application level: the websockets client still answers
protocol-level pings, and that must not count."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.client import Client
from tests.support.eventually import eventually
from tests.support.raw_socket import OP_PING, OP_PONG, OP_TEXT, RawSocket
from tests.support.serving import FAST, SANSIO, StartServer

HEARTBEAT = {"WS_HEARTBEAT_INTERVAL": 0.2, "WS_HEARTBEAT_TIMEOUT": 0.6}


async def answer_pings(client: Client, answered: list[float]) -> None:
    """A well-behaved client: every {"type": "ping"} gets a {"type": "pong"}."""
    while True:
        frame = await client.next(timeout=30, skip_pings=False)
        if frame.get("type") == "ping":
            answered.append(frame["timestamp"])
            await client.send(type="pong")


async def test_a_silent_client_is_pinged_then_closed_with_4000(start_server: StartServer) -> None:
    async with start_server(**HEARTBEAT) as (server, manager):
        silent = await Client.open(server, "silent")

        first = await silent.next(skip_pings=False)
        assert first["type"] == "ping" and isinstance(first["timestamp"], float)
        code, reason = await silent.wait_closed()

        assert (code, reason) == (4000, "heartbeat timeout")
        assert manager.get_connection(silent.channel_name) is None
        stats = manager.get_stats()
        assert stats["heartbeat_pings"] >= 1 and stats["heartbeat_closes"] == 1


async def test_a_client_that_answers_stays_open(start_server: StartServer) -> None:
    async with start_server(**HEARTBEAT) as (server, manager):
        chatty = await Client.open(server, "chatty")
        silent = await Client.open(server, "silent")
        answered: list[float] = []
        answering = asyncio.create_task(answer_pings(chatty, answered))
        try:
            assert (await silent.wait_closed())[0] == 4000
            # Well past the timeout: six pings answered take at least 6 x 0.2 s = 2 x 0.6 s.
            await eventually(lambda: len(answered) >= 6 or answering.done(), what="six pings")
            assert not answering.done(), answering  # still reading: not closed
            assert manager.get_connection(chatty.channel_name) is not None
        finally:
            answering.cancel()
            await asyncio.gather(answering, return_exceptions=True)
        assert await chatty.echo_marker("alive") == {"type": "echo", "data": "alive"}
        assert manager.get_stats()["heartbeat_closes"] == 1  # the silent one only


async def test_with_the_heartbeat_off_a_silent_client_stays_open(start_server: StartServer) -> None:
    async with (
        start_server(WS_ENABLE_HEARTBEAT=False, **HEARTBEAT) as (off_server, off_manager),
        start_server(**HEARTBEAT) as (on_server, _),
    ):
        quiet = await Client.open(off_server, "quiet")
        # The same silence on a server with the heartbeat on is the clock: when that one is
        # closed, `quiet` has been silent for longer than the timeout.
        witness = await Client.open(on_server, "witness")
        assert (await witness.wait_closed())[0] == 4000

        assert await quiet.echo_marker("still here") == {"type": "echo", "data": "still here"}
        assert off_manager.get_connection(quiet.channel_name) is not None
        stats = off_manager.get_stats()
        assert stats["heartbeat_pings"] == 0 and stats["heartbeat_closes"] == 0


async def frames_until(raw: RawSocket, heartbeat_pings: int, protocol_pings: int) -> tuple[int, int]:
    """Read (answering every ping, JSON or protocol) until either count is reached: both counts."""
    json_seen = protocol_seen = 0
    while json_seen < heartbeat_pings and protocol_seen < protocol_pings:
        opcode, payload = await asyncio.wait_for(raw.read_frame(), 5)
        if opcode == OP_PING:
            protocol_seen += 1
            await raw.send_frame(payload, OP_PONG)
        elif opcode == OP_TEXT and json.loads(payload).get("type") == "ping":
            json_seen += 1
            await raw.send_frame(b'{"type": "pong"}')
    return json_seen, protocol_seen


async def test_on_the_fast_path_the_heartbeat_is_the_only_keepalive(start_server: StartServer) -> None:
    """uvicorn would ping every 0.05 s here: its timers are stopped for a fast-path connection
    the heartbeat watches, so the client sees our pings (answered: it stays open) and no other."""
    async with start_server(
        ws=FAST, uvicorn={"ws_ping_interval": 0.05, "ws_ping_timeout": 5}, WS_HEARTBEAT_INTERVAL=0.3
    ) as (server, manager):
        raw = await RawSocket.open(server.port, "/ws/raw")
        try:
            assert (await raw.next_json())["type"] == "hello"
            assert await frames_until(raw, heartbeat_pings=3, protocol_pings=1) == (3, 0)
            assert len(manager.registry) == 1
        finally:
            await raw.close()


@pytest.mark.parametrize(
    ("ws", "heartbeat"), [(SANSIO, True), (FAST, False)], ids=["asgi-path", "fastpath-heartbeat-off"]
)
async def test_otherwise_uvicorns_keepalive_stays(
    start_server: StartServer, ws: str, heartbeat: bool
) -> None:
    """The ASGI path cannot reach uvicorn's timers, and with the heartbeat off they are all there is."""
    async with start_server(
        ws=ws,
        uvicorn={"ws_ping_interval": 0.05, "ws_ping_timeout": 5},
        WS_ENABLE_HEARTBEAT=heartbeat,
        WS_HEARTBEAT_INTERVAL=30,
    ) as (server, _):
        raw = await RawSocket.open(server.port, "/ws/raw")
        try:
            assert (await raw.next_json())["type"] == "hello"
            assert await frames_until(raw, heartbeat_pings=1, protocol_pings=3) == (0, 3)
        finally:
            await raw.close()
