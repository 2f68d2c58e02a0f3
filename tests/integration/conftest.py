"""Integration fixtures: the test app (tests/app.py) under a real uvicorn, real WebSocket clients.

Each test builds its own ConnectionManager with `create_app(WSConfig(LOG_STATS=False, ...))`
and runs it with `fastapi_channels.testing.serve`, in the test's own event loop, so a test
can talk to the server over sockets and look at the manager directly.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.testing import ServerHandle, serve
from tests.app import create_app

SANSIO = "websockets-sansio"
LEGACY = "websockets"
FAST = "fastapi_channels.fastpath:FastWebSocketProtocol"
ALL_WS = [SANSIO, LEGACY, FAST]
WS_IDS = {SANSIO: "sansio", LEGACY: "legacy", FAST: "fastpath"}

Running = tuple[ServerHandle, ConnectionManager]
StartServer = Callable[..., AbstractAsyncContextManager[Running]]

WAIT = 5.0  # every wait for a frame or a close is bounded by this


# --- servers --------------------------------------------------------------------------------------
@pytest.fixture
def start_server(server_log: LogCapture) -> StartServer:
    """`async with start_server(ws=..., uvicorn={...}, **settings) as (server, manager)`.

    `settings` are WSConfig fields, `uvicorn` extra uvicorn.Config options, and `extend`
    a function that may add routes to the app before it starts.
    """

    @asynccontextmanager
    async def start(
        ws: str = SANSIO,
        uvicorn: dict[str, Any] | None = None,
        extend: Callable[[FastAPI], None] | None = None,
        **settings: Any,
    ) -> AsyncIterator[Running]:
        app, manager = create_app(WSConfig(LOG_STATS=False, **settings))
        if extend is not None:
            extend(app)
        async with serve(app, ws=ws, **(uvicorn or {})) as server:
            server_log.attach()  # after uvicorn configured its loggers (which drops handlers)
            yield server, manager

    return start


# --- clients --------------------------------------------------------------------------------------
class Client:
    """A WebSocket client of the test app's JSON command protocol (tests/app.py)."""

    opened: list[Client] = []

    def __init__(self, ws: ClientConnection, channel_name: str, user: str) -> None:
        self.ws = ws
        self.channel_name = channel_name
        self.user = user
        Client.opened.append(self)

    @classmethod
    async def open(cls, server: ServerHandle, user: str, **options: Any) -> Client:
        """Connect as `user` and read the hello frame that carries the channel name."""
        ws = await connect(f"{server.ws_url}/ws/{user}", open_timeout=WAIT, **options)
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        except BaseException:
            await ws.close()
            raise
        assert hello["type"] == "hello", hello
        return cls(ws, hello["channel_name"], user)

    async def send(self, **command: Any) -> None:
        await self.ws.send(json.dumps(command))

    async def next(self, timeout: float = WAIT, *, skip_pings: bool = True) -> Any:
        """The next frame (JSON-decoded when it is JSON), heartbeat pings skipped by default."""
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            try:
                frame = json.loads(raw)
            except ValueError:
                return raw
            if not (skip_pings and isinstance(frame, dict) and frame.get("type") == "ping"):
                return frame

    async def call(self, reply: str, **command: Any) -> dict[str, Any]:
        """Send a command, return its reply; an error frame fails the test."""
        await self.send(**command)
        frame = await self.next()
        assert isinstance(frame, dict) and frame["type"] == reply, frame
        return frame

    async def join(self, group: str) -> None:
        await self.call("joined", op="join", group=group)

    async def echo_marker(self, marker: str) -> Any:
        """Ask the server to echo `marker`; returns the first frame that arrives after asking.

        The server answers in order, so anything addressed to this client before the echo
        arrives first: `assert await c.echo_marker("m") == {"type": "echo", "data": "m"}`
        proves that nothing else was on its way.
        """
        await self.send(op="echo", data=marker)
        return await self.next()

    async def wait_closed(self, timeout: float = WAIT) -> tuple[int | None, str | None]:
        """Read until the server closes; the (code, reason) of its close frame, (None, None) if none."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                return None, None
            return closed.rcvd.code, closed.rcvd.reason
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.ws.close()


async def refused_close(server: ServerHandle, user: str) -> tuple[int | None, str | None]:
    """Open a connection that the server should refuse; the close code and reason it sent."""
    ws = await connect(f"{server.ws_url}/ws/{user}", open_timeout=WAIT)
    try:
        while True:
            frame = await asyncio.wait_for(ws.recv(), WAIT)
            raise AssertionError(f"refused connection received a frame: {frame!r}")
    except ConnectionClosed as closed:
        if closed.rcvd is None:
            return None, None
        return closed.rcvd.code, closed.rcvd.reason
    finally:
        await ws.close()


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    opened, Client.opened = Client.opened, []
    await asyncio.gather(*(client.ws.close() for client in opened), return_exceptions=True)


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = WAIT, what: str = "condition"
) -> None:
    """Wait (bounded) until `condition()` holds: for server-side effects of a client's action.

    `condition` may be a coroutine function (or return an awaitable), e.g. one that awaits
    `manager.get_user_connections`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _holds(condition):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = condition()
    return bool(await result) if inspect.isawaitable(result) else bool(result)


async def has_local_connections(manager: ConnectionManager, user_id: str, count: int) -> bool:
    """Whether this server holds exactly `count` connections of `user_id`."""
    return len(await manager.get_user_connections(user_id)) == count


# --- a client that never reads --------------------------------------------------------------------
class SilentSocket:
    """A real WebSocket handshake by hand over a TCP socket with a tiny receive buffer, then
    never a read again: the kernel soon stops accepting the server's bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def open(cls, server: ServerHandle, user: str) -> SilentSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET /ws/{user} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            response = await asyncio.wait_for(loop.sock_recv(sock, 1024), WAIT)
            assert response.startswith(b"HTTP/1.1 101"), response
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        """One final, masked client frame (RFC 6455 5.2) with any payload, valid or not."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = bytes([0x80 | opcode, 0x80 | length])
        elif length < 1 << 16:
            header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + masked)

    async def read_close_code(self) -> int | None:
        """Read frames until the server's close frame, answer it as a client must (RFC 6455
        5.5.1), and return its code (None if the TCP connection ended first)."""
        loop = asyncio.get_running_loop()
        data = b""
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), WAIT)
            if not chunk:
                return None
            data += chunk
            while len(data) >= 2:
                opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
                if length == 126:
                    length, start = int.from_bytes(data[2:4], "big"), 4
                elif length == 127:
                    length, start = int.from_bytes(data[2:10], "big"), 10
                if len(data) < start + length:
                    break
                payload, data = data[start : start + length], data[start + length :]
                if opcode == 0x8:
                    await self.send_frame(payload[:2], opcode=0x8)
                    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None

    def close(self) -> None:
        self.sock.close()


# --- server log ------------------------------------------------------------------------------------
class LogCapture(logging.Handler):
    """Records of uvicorn's error logger (where "Exception in ASGI application" goes) and the library.

    uvicorn's logging config keeps "uvicorn.*" records away from the root logger, where
    pytest's caplog listens, and every server start re-applies it (dropping foreign handlers),
    so the handler is attached to those loggers directly, after each start.
    """

    LOGGERS = ("uvicorn.error", "fastapi_channels")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def attach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def tracebacks(self) -> list[str]:
        """Messages of records that carry an exception or name an ASGI failure."""
        return [
            r.getMessage()
            for r in self.records
            if r.exc_info or "Exception in ASGI application" in r.getMessage()
        ]


@pytest.fixture
def server_log() -> Iterator[LogCapture]:
    capture = LogCapture()
    yield capture
    capture.detach()
