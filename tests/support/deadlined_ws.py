"""A `--ws` protocol as a deployment might write one: uvicorn's sans-I/O protocol with its
`send` overridden by code that needs a current task (a deadline per send)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class DeadlinedProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: Any) -> None:
        async with asyncio.timeout(10):  # raises outside a task
            await super().send(message)
