"""A WebSocket client of the test app's command protocol (see tests/app.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


class Client:
    opened: list[Client] = []  # closed by the `close_clients` fixture after each test

    def __init__(self, ws: ClientConnection, channel_name: str) -> None:
        self.ws = ws
        self.channel_name = channel_name
        Client.opened.append(self)

    @classmethod
    async def open(cls, base_url: str, user: str, **options: Any) -> Client:
        ws = await connect(f"{base_url}/ws/{user}", open_timeout=10, **options)
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except BaseException:
            await ws.close()
            raise
        assert hello["type"] == "hello", hello
        return cls(ws, hello["channel_name"])

    async def send(self, **command: Any) -> None:
        await self.ws.send(json.dumps(command))

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame that is not a heartbeat ping."""
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if frame.get("type") != "ping":
                return frame  # type: ignore[no-any-return]

    async def call(self, reply: str, timeout: float = 5.0, **command: Any) -> dict[str, Any]:
        """Send a command and return its reply (an error frame fails the test)."""
        await self.send(**command)
        frame = await self.next(timeout)
        assert frame["type"] == reply, frame
        return frame

    async def close(self) -> None:
        await self.ws.close()


async def close_all_clients() -> None:
    opened, Client.opened = Client.opened, []
    await asyncio.gather(*(client.ws.close() for client in opened), return_exceptions=True)
