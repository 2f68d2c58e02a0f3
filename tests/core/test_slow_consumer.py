"""A client that never reads fills only its own bounded buffer: the slow-consumer policy
deals with it, and the other members of its group get every message, in order."""

from __future__ import annotations

import asyncio

import pytest

from fastapi_channels import Connection, ConnectionManager
from fastapi_channels.testing import ServerHandle
from tests.support.client import Client
from tests.support.eventually import eventually
from tests.support.raw_socket import RawSocket
from tests.support.serving import FAST, StartServer, has_local_connections

QUEUE_BYTES = 64 * 1024
CHUNK = 2048
COUNT = 20 * 1024 * 1024 // CHUNK  # 10,240 messages, 20 MiB
WINDOW = 8  # the producer stays at most this many messages ahead of the healthy readers


async def flood_group(
    manager: ConnectionManager, readers: list[Client], count: int = COUNT
) -> tuple[list[int], int]:
    """Send `count` numbered ~2 KB messages to "room" through the manager, as a background job
    would, while `readers` read. The producer is paced by what the healthy readers have
    *received* (end to end), never by the silent client.

    Returns how many messages each reader got in order, and the largest outbound buffer (in
    bytes) any connection had right after a send.
    """
    padding = "x" * (CHUNK - 40)
    received = [0] * len(readers)
    progress = asyncio.Event()

    async def read(index: int, reader: Client) -> None:
        while received[index] < count:
            frame = await reader.next(timeout=10)
            assert frame["data"][0] == received[index], "out of order or lost"
            received[index] += 1
            progress.set()

    tasks = [asyncio.create_task(read(i, r)) for i, r in enumerate(readers)]
    peak = 0
    try:
        for sequence in range(count):
            while sequence - min(received) >= WINDOW:
                progress.clear()
                await asyncio.wait_for(progress.wait(), 10)
                for task in tasks:
                    if task.done():
                        task.result()  # a reader failed: raise its error here
            await manager.send_to_group("room", {"type": "group", "data": [sequence, padding]})
            # MemoryBackend fans out before the send returns: the buffers are at their fullest now.
            peak = max([peak, *(c.buffered_bytes for c in manager.registry)])
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return received, peak


async def open_room(
    manager: ConnectionManager, server: ServerHandle, readers: int
) -> tuple[list[Client], RawSocket, Connection]:
    """`readers` healthy clients and one that never reads, all in the group "room"."""
    healthy = [await Client.open(server, f"reader{i}", max_size=None) for i in range(readers)]
    for client in healthy:
        await client.call("joined", op="join", group="room")
    silent = await RawSocket.open(server.port, "/ws/stalled", receive_buffer=4096)
    try:
        await eventually(lambda: has_local_connections(manager, "stalled", 1), what="the silent socket")
        (slow,) = await manager.get_user_connections("stalled")
        await manager.join_group(slow.channel_name, "room")  # as an app would, by channel name
    except BaseException:
        await silent.close()
        raise
    return healthy, silent, slow


async def test_a_client_that_never_reads_is_closed_and_the_others_get_everything(
    start_server: StartServer, ws: str
) -> None:
    async with start_server(ws=ws, WS_OUTBOUND_QUEUE_BYTES=QUEUE_BYTES, WS_CLOSE_TIMEOUT=0.5) as (
        server,
        manager,
    ):
        healthy, silent, slow = await open_room(manager, server, readers=2)
        try:
            received, peak = await flood_group(manager, healthy)

            assert received == [COUNT, COUNT]  # every message, in order, at every healthy member
            stats = manager.get_stats()
            assert stats["slow_consumer_closes"] == 1
            assert stats["messages_dropped"] >= 1
            assert manager.get_connection(slow.channel_name) is None  # gone from the registry at once
            assert await manager.get_user_connections("stalled") == []
            assert [c.channel_name for c in manager.get_group_connections("room")] == [
                c.channel_name for c in healthy
            ]
            assert slow.buffered_bytes == 0  # its buffer released with it
            assert peak <= QUEUE_BYTES  # no connection ever buffered more than its limit
            for client in healthy:  # and the healthy ones still work
                assert await client.echo_marker("m") == {"type": "echo", "data": "m"}
            if ws == FAST:
                # Where the library owns the transport, a client past the close deadline is
                # aborted: what the kernel already holds can be read, then the connection ends.
                await asyncio.wait_for(silent.read_until_eof(), 15)
        finally:
            await silent.close()


async def test_drop_oldest_keeps_the_slow_client_and_counts_what_it_lost(
    start_server: StartServer, ws: str
) -> None:
    async with start_server(
        ws=ws,
        WS_OUTBOUND_QUEUE_BYTES=QUEUE_BYTES,
        WS_SLOW_CONSUMER_POLICY="drop_oldest",
        WS_CLOSE_TIMEOUT=0.5,
    ) as (server, manager):
        healthy, silent, slow = await open_room(manager, server, readers=2)
        try:
            received, peak = await flood_group(manager, healthy, count=4096)  # 8 MiB

            assert received == [4096, 4096]
            assert slow.is_open
            assert manager.get_connection(slow.channel_name) is slow
            stats = manager.get_stats()
            assert stats["slow_consumer_closes"] == 0
            assert stats["messages_dropped"] > 0
            assert slow.messages_dropped == stats["messages_dropped"]  # only the slow one lost any
            assert peak <= QUEUE_BYTES and slow.buffered_bytes <= QUEUE_BYTES

            # Closed now, without flushing: on the ASGI path the writer is cut in the middle of
            # a send that waits for the stalled socket. Every one of the 4096 frames is then
            # counted once, as sent or as dropped (the one in flight may or may not have left),
            # and so is the app's "hello" before them.
            slow.close(flush=False)
            await asyncio.wait_for(slow.wait_closed(), 10)
            assert slow.buffered_messages == 0
            assert slow.messages_sent + slow.messages_dropped == 1 + 4096
        finally:
            await silent.close()


SHUTDOWN_BOUND = 3.0  # seconds for the whole graceful shutdown, with WS_CLOSE_TIMEOUT=0.5


# Fast path only: uvicorn's own protocols wait, with no deadline, for a transport that cannot
# flush, and the library owns no transport there (README: use uvicorn's
# --timeout-graceful-shutdown).
@pytest.mark.parametrize("ws", [FAST], ids=["fastpath"])
async def test_graceful_shutdown_is_not_held_up_by_a_client_that_never_reads(
    start_server: StartServer, ws: str
) -> None:
    running = start_server(
        ws=ws,
        WS_OUTBOUND_QUEUE_BYTES=QUEUE_BYTES,
        WS_SLOW_CONSUMER_POLICY="drop_oldest",
        WS_CLOSE_TIMEOUT=0.5,
    )
    server, manager = await running.__aenter__()
    silent: RawSocket | None = None
    try:
        healthy, silent, slow = await open_room(manager, server, readers=1)
        # Enough to fill the silent client's kernel buffers and its transport's: it stays
        # connected (drop_oldest), with bytes the server cannot get rid of.
        received, _ = await flood_group(manager, healthy, count=2500)
        assert received == [2500] and slow.is_open
        assert slow.messages_dropped > 0  # its kernel and transport buffers really are full
        closing = asyncio.ensure_future(healthy[0].wait_closed(timeout=SHUTDOWN_BOUND + 1))
    except BaseException:
        if silent is not None:
            await silent.close()
        await running.__aexit__(None, None, None)
        raise

    # Leave the serve() block, as SIGTERM would: uvicorn shuts down, then the lifespan runs.
    leaving = asyncio.ensure_future(running.__aexit__(None, None, None))
    done, _ = await asyncio.wait({leaving}, timeout=SHUTDOWN_BOUND)
    if not done:  # what a second Ctrl+C does; then fail
        server.server.force_exit = True
        await silent.close()
        await leaving
        await server.server.lifespan.shutdown()  # force_exit skipped it: stop the manager's tasks
        raise AssertionError(
            f"the server was still shutting down after {SHUTDOWN_BOUND}s: uvicorn waits for the "
            "never-reading client's connection to close, and nothing aborts it"
        )
    await silent.close()
    await leaving
    assert (await closing)[0] == 1001  # the healthy client was told why
    assert len(manager.registry) == 0
