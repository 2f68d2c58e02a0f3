"""Helpers for the chat example's tests: a protocol client and the demo app in a subprocess."""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, ClassVar, cast

from websockets.asyncio.client import ClientConnection, connect

from example.protocol import SERVER_FRAMES
from tests.support.server_process import ROOT, ServerProcess


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll `condition` (plain or async) until it holds; fail after `timeout` seconds (a bound,
    not a measurement)."""

    async def holds() -> bool:
        result = condition()
        return await result if inspect.isawaitable(result) else result

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await holds():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.01)


class ChatClient:
    """A WebSocket client of the chat protocol. Every frame it receives is checked against the
    documented model of its type (example.protocol.SERVER_FRAMES), so docs and code agree."""

    opened: ClassVar[list[ChatClient]] = []

    def __init__(self, ws: ClientConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.backlog: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] = {}
        ChatClient.opened.append(self)

    @classmethod
    async def open(cls, ws_url: str, user: str, token: str | None = None) -> ChatClient:
        query = f"?token={token}" if token is not None else ""
        ws = await connect(f"{ws_url}/ws/{user}{query}", open_timeout=10, max_size=4 * 1024 * 1024)
        client = cls(ws, user)
        client.welcome = await client.expect("welcome", timeout=10)
        return client

    async def send(self, kind: str, **data: Any) -> None:
        await self.ws.send(json.dumps({"type": kind, "data": data} if data else {"type": kind}))

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    async def _recv(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame = json.loads(raw)
        assert isinstance(frame, dict), frame
        model = SERVER_FRAMES.get(frame.get("type", ""))
        assert model is not None, f"undocumented frame type: {frame}"
        model.model_validate(frame)
        return frame

    async def expect(self, kind: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The first frame of `kind` whose fields match; other frames wait in the backlog."""

        def matches(frame: dict[str, Any]) -> bool:
            return frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items())

        for index, frame in enumerate(self.backlog):
            if matches(frame):
                return self.backlog.pop(index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.user}: no {kind} {fields} within {timeout}s; got {self.backlog}")
            try:
                frame = await self._recv(remaining)
            except TimeoutError:
                raise AssertionError(
                    f"{self.user}: no {kind} {fields} within {timeout}s; got {self.backlog}"
                ) from None
            if matches(frame):
                return frame
            if frame["type"] != "ping":  # server heartbeat
                self.backlog.append(frame)

    async def expect_error(self, code: str, timeout: float = 5.0) -> dict[str, Any]:
        return await self.expect("error", timeout, error_code=code)

    async def sync(self) -> list[dict[str, Any]]:
        """Send a ping and return every frame that arrived before its pong (and drop them).

        The server handles one connection's frames in order, and everything a message causes
        for this connection is queued before the next message is handled, so when the pong
        is here nothing earlier is still on its way (on one server).
        """
        await self.send("ping")
        await self.expect("pong")
        frames, self.backlog = self.backlog, []
        return frames

    async def close(self) -> None:
        await self.ws.close()


async def close_all_clients() -> None:
    opened, ChatClient.opened[:] = list(ChatClient.opened), []
    await asyncio.gather(*(client.ws.close() for client in opened), return_exceptions=True)


class ExampleServer(ServerProcess):
    """The demo command in a subprocess: what `./run demo` executes (`fastapi_channels.cli run`)."""

    def _spawn(self, log: object) -> None:
        import subprocess

        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastapi_channels.cli",
                "run",
                "example.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=cast("int | IO[bytes]", log),
            stderr=cast("int | IO[bytes]", log),
        )


def example_env(db_path: Path, **extra: str) -> dict[str, str]:
    """Environment of a demo subprocess: its own database, no stats lines, quick shutdown."""
    return {
        "CHAT_DB_PATH": str(db_path),
        "LOG_LEVEL": "WARNING",
        "LOG_STATS": "false",
        "WS_CLOSE_TIMEOUT": "2",
        **extra,
    }
