"""Helpers for the chat example's tests: a protocol client and the demo app in a subprocess."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any, Self, cast

from example.protocol import SERVER_FRAMES
from tests.support.client import Client, HasWsUrl
from tests.support.server_process import ROOT, ServerProcess


class ChatClient(Client):
    """The suite's client speaking the chat protocol: frames `{"type": kind, "data": {...}}`,
    a welcome frame first, and every frame it receives checked against the documented model
    of its type (example.protocol.SERVER_FRAMES), so docs and code agree."""

    @classmethod
    async def open(  # type: ignore[override]
        cls, server: str | HasWsUrl, user: str, token: str | None = None, **options: Any
    ) -> Self:
        query = f"?token={token}" if token is not None else ""
        options.setdefault("max_size", 4 * 1024 * 1024)
        return await super().open(server, f"{user}{query}", greeting="welcome", **options)

    @property
    def welcome(self) -> dict[str, Any]:
        return self.greeting

    def received(self, frame: Any) -> None:
        assert isinstance(frame, dict), frame
        model = SERVER_FRAMES.get(frame.get("type", ""))
        assert model is not None, f"undocumented frame type: {frame}"
        model.model_validate(frame)

    async def send(self, kind: str, **data: Any) -> None:  # type: ignore[override]
        await self.send_json({"type": kind, "data": data} if data else {"type": kind})

    async def sync(self) -> list[dict[str, Any]]:
        """Send a ping and return every frame that arrived before its pong (and drop them).

        The server handles one connection's frames in order, and everything a message causes
        for this connection is queued before the next message is handled, so when the pong
        is here nothing earlier is still on its way (on one server).
        """
        return await self.frames_before({"type": "ping"}, "pong")


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
