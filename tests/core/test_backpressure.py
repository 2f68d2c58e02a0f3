"""A client that stops reading is handled by the slow-consumer policy; the others never wait."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

from fastapi_channels import ConnectionManager
from tests.core.conftest import FAST, StartServer
from tests.support.client import Client


async def open_silent_socket(port: int, user: str) -> socket.socket:
    """A real WebSocket handshake, then a client that never reads again (tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws/{user} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    response = await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


async def read_until_closed(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    try:
        while await loop.sock_recv(sock, 1 << 20):
            pass
    except ConnectionResetError:
        pass


async def wait_for(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def flood(manager: ConnectionManager, reader: Client, total_bytes: int, chunk: int) -> int:
    """Send `total_bytes` to the group while `reader` keeps up; returns the message count."""
    payload = "x" * chunk
    count = total_bytes // chunk
    received = 0

    async def read_all() -> None:
        nonlocal received
        while received < count:
            await asyncio.wait_for(reader.ws.recv(), 15)
            received += 1

    reading = asyncio.create_task(read_all())
    for index in range(count):
        await manager.send_to_group("room", payload)
        if index % 10 == 0:
            await asyncio.sleep(0)  # let the writers run, as a real server between messages
    await reading
    return received


async def test_a_client_that_never_reads_is_closed_and_the_others_get_everything(
    start_server: StartServer, ws_impl: str
) -> None:
    limit = 256 * 1024
    async with start_server(WS_OUTBOUND_QUEUE_BYTES=limit, WS_CLOSE_TIMEOUT=0.5) as (server, manager):
        reader = await Client.open(server.ws_url, "reader", max_size=None)
        await reader.call("joined", op="join", group="room")
        stalled = await open_silent_socket(server.port, "stalled")
        try:
            await wait_for(lambda: len(manager.registry) == 2)
            slow = next(c for c in manager.registry if c.user_id == "stalled")
            await manager.join_group(slow.channel_name, "room")
            peak = 0

            def watch() -> None:
                nonlocal peak
                peak = max(peak, slow.buffered_bytes)

            watcher = asyncio.get_running_loop().call_soon(watch)
            received = await flood(manager, reader, total_bytes=20 * 1024 * 1024, chunk=2048)
            watcher.cancel()
            assert received == 10240  # every message reached the reader
            stats = manager.get_stats()
            assert stats["slow_consumer_closes"] == 1
            assert stats["messages_dropped"] >= 1
            assert manager.get_connection(slow.channel_name) is None  # unregistered at once
            assert slow.buffered_bytes == 0 and peak <= limit + 2048 + 16
            if ws_impl == FAST:
                # Where the library owns the transport, a client past the close deadline is
                # aborted: what the kernel already holds can be read, then the connection ends.
                await asyncio.wait_for(read_until_closed(stalled), 15)
        finally:
            stalled.close()


async def test_drop_oldest_keeps_a_slow_client_and_counts_what_it_lost(start_server: StartServer) -> None:
    async with start_server(
        WS_OUTBOUND_QUEUE_BYTES=64 * 1024, WS_SLOW_CONSUMER_POLICY="drop_oldest", WS_CLOSE_TIMEOUT=0.5
    ) as (server, manager):
        reader = await Client.open(server.ws_url, "reader", max_size=None)
        await reader.call("joined", op="join", group="room")
        stalled = await open_silent_socket(server.port, "stalled")
        try:
            await wait_for(lambda: len(manager.registry) == 2)
            slow = next(c for c in manager.registry if c.user_id == "stalled")
            await manager.join_group(slow.channel_name, "room")
            assert await flood(manager, reader, total_bytes=8 * 1024 * 1024, chunk=2048) == 4096
            assert slow.is_open and manager.get_connection(slow.channel_name) is slow
            assert (
                slow.messages_dropped > 0 and manager.get_stats()["messages_dropped"] == slow.messages_dropped
            )
            assert slow.buffered_bytes <= 64 * 1024
            assert manager.get_stats()["slow_consumer_closes"] == 0
        finally:
            stalled.close()
