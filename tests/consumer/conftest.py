"""Fixtures for consumer tests: the consumer app in process (`harness`) or in server processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fastapi_channels import BaseConsumer, ConnectionManager, WSConfig
from fastapi_channels.middleware import Middleware
from fastapi_channels.testing import ServerHandle, free_port, serve
from tests.consumer.app import ChatConsumer, Events, FakeDatabase, create_app

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0


# --- a WebSocket client of the consumer app ------------------------------------------------------
class WsClient:
    opened: list[WsClient] = []  # closed after each test by the `close_clients` fixture

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.channel_name: str = welcome["channel_name"]
        WsClient.opened.append(self)

    @classmethod
    async def open(cls, base_url: str, user: str, **options: Any) -> WsClient:
        ws = await connect(f"{base_url}/ws/{user}", open_timeout=10, **options)
        try:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert welcome["type"] == "welcome", welcome
        except BaseException:
            await ws.close()
            raise
        return cls(ws, welcome)

    @classmethod
    async def open_raw(cls, base_url: str, user: str) -> WsClient:
        """Connect without expecting the welcome frame (closed at teardown by the caller's harness)."""
        ws = await connect(f"{base_url}/ws/{user}", open_timeout=10)
        return cls(ws, {"channel_name": None})

    async def frames_until_closed(self, timeout: float = TIMEOUT) -> tuple[list[Any], int | None]:
        """Every frame until the server closes, and the close code (1006 when no close frame came)."""
        frames: list[Any] = []

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    raw = await self.ws.recv()
                    frames.append(json.loads(raw) if isinstance(raw, str) else raw)

        await asyncio.wait_for(read(), timeout)
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return frames, self.ws.close_code

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv_raw(self, timeout: float = TIMEOUT) -> str | bytes:
        return await asyncio.wait_for(self.ws.recv(), timeout)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next JSON frame that is not the server's own heartbeat ping."""
        while True:
            raw = await self.recv_raw(timeout)
            assert isinstance(raw, str), raw
            frame = json.loads(raw)
            if frame.get("type") != "ping":
                return frame  # type: ignore[no-any-return]

    async def request(self, reply: str, **frame: Any) -> dict[str, Any]:
        await self.send(**frame)
        answer = await self.recv()
        assert answer["type"] == reply, answer
        return answer

    async def expect_error(self, error_code: str) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["type"] == "error", frame
        assert frame["error_code"] == error_code, frame
        return frame

    async def roundtrip(self) -> None:
        """A valid message and its reply: proves the connection still works end to end."""
        nonce = uuid.uuid4().hex
        answer = await self.request("echo", type="echo", data={"nonce": nonce})
        assert answer["data"] == {"nonce": nonce}, answer

    async def replies_before_echo(self) -> list[dict[str, Any]]:
        """Send an echo and return the frames that arrive before its reply (what earlier frames got)."""
        nonce = uuid.uuid4().hex
        await self.send(type="echo", data={"nonce": nonce})
        replies = []
        while True:
            frame = await self.recv()
            if frame.get("type") == "echo" and frame.get("data") == {"nonce": nonce}:
                return replies
            replies.append(frame)

    async def close_code(self, timeout: float = TIMEOUT) -> int | None:
        """Wait for the server to close; the close code it sent. Frames still queued are skipped."""

        async def drain() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.ws.recv()

        await asyncio.wait_for(drain(), timeout)
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


# --- the consumer app in this process --------------------------------------------------------------
@dataclass
class Running:
    handle: ServerHandle
    manager: ConnectionManager
    events: Events
    db: FakeDatabase

    @property
    def url(self) -> str:
        return self.handle.ws_url


class Harness:
    """Starts in-process servers of the consumer app and opens clients; closes all at teardown."""

    def __init__(self) -> None:
        self.stack = contextlib.AsyncExitStack()

    async def start(
        self,
        middleware: Middleware | None,
        *,
        consumer_class: type[BaseConsumer] = ChatConsumer,
        config: dict[str, Any] | None = None,
        **serve_options: Any,
    ) -> Running:
        ws_config = WSConfig(**{"BACKEND_TYPE": "memory", "LOG_STATS": False, **(config or {})})
        events = Events()
        db = FakeDatabase()
        app, manager = create_app(ws_config, middleware, consumer_class=consumer_class, db=db, events=events)
        handle = await self.stack.enter_async_context(serve(app, **serve_options))
        return Running(handle, manager, events, db)

    async def client(self, running: Running | str, user: str = "alice") -> WsClient:
        url = running.url if isinstance(running, Running) else running
        return await WsClient.open(url, user)

    async def aclose(self) -> None:
        await close_all_clients()  # before the servers stop
        await self.stack.aclose()


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    await close_all_clients()


async def close_all_clients() -> None:
    opened, WsClient.opened = WsClient.opened, []
    await asyncio.gather(*(c.ws.close() for c in opened), return_exceptions=True)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        await h.aclose()


async def eventually(predicate: Any, timeout: float = TIMEOUT) -> None:
    """Wait (bounded) until predicate() is true."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


# --- the consumer app in server processes ---------------------------------------------------------
class ConsumerServer:
    """`uvicorn --factory tests.consumer.app:app_from_env` in a process of its own."""

    def __init__(self, env: dict[str, str], log_path: Path, ws_max_size: int | None = None) -> None:
        self.port = free_port()
        self.env = {**os.environ, "LOG_STATS": "false", **env}
        self.log_path = log_path
        self.ws_max_size = ws_max_size
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "uvicorn", "tests.consumer.app:app_from_env", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--ws", "websockets-sansio",
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        if self.ws_max_size is not None:
            command += ["--ws-max-size", str(self.ws_max_size)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start listening:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def consumer_servers(tmp_path: Path) -> Iterator[Any]:
    """`consumer_servers(n, **env)` starts n server processes of the consumer app."""
    started: list[ConsumerServer] = []

    def start(count: int = 1, **env: object) -> list[ConsumerServer]:
        servers = []
        for _ in range(count):
            server = ConsumerServer(
                {key: str(value) for key, value in env.items()},
                tmp_path / f"consumer-server{len(started)}.log",
            )
            started.append(server)
            server.start()
            servers.append(server)
        return servers

    yield start
    for server in started:
        server.stop()
