"""A real server for tests: `serve` runs an ASGI app under uvicorn inside the running event
loop on a free loopback port, so a test talks to it over real sockets and can still inspect
the manager directly. Needs uvicorn (the `server` extra). For tests without ports, see
`Communicator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["ServerHandle", "free_port", "serve"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerHandle:
    def __init__(self, server: Any, port: int) -> None:
        self.server = server
        self.port = port
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def serve(app: Any, *, ws: str = "websockets-sansio", **options: Any) -> AsyncIterator[ServerHandle]:
    """Run `app` under uvicorn (lifespan included) until the block exits."""
    import uvicorn

    from fastapi_channels.cli import resolve_ws

    port = free_port()
    # log_config=None keeps the process's logging as it is, so uvicorn's records (an
    # "Exception in ASGI application" included) reach the root logger and pytest's caplog.
    options.setdefault("log_config", None)
    # As `fastapi-channels run` serves: without compression. A client that negotiates
    # permessage-deflate (websockets' clients do by default) would otherwise never be written
    # to by the fast path, and a test of `ws="...FastWebSocketProtocol"` would test the ASGI
    # path instead.
    options.setdefault("ws_per_message_deflate", False)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws=resolve_ws(ws),
        log_level=options.pop("log_level", "warning"),
        **options,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.01)
        yield ServerHandle(server, port)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=15)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
