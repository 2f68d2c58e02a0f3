"""The heartbeat: idle clients get {"type": "ping"}; any frame from a client is liveness; a
client silent for WS_HEARTBEAT_TIMEOUT is closed with 4000; WS_ENABLE_HEARTBEAT=false turns
all of it off. Silence is at the application level: the websockets client still answers
protocol-level pings, and that must not count."""

from __future__ import annotations

import asyncio

from tests.support.client import Client
from tests.support.eventually import eventually
from tests.support.serving import StartServer

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
