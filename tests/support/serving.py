"""The test app (tests/app.py) under a real uvicorn in the test's own event loop, and what
tests say about uvicorn: its WebSocket protocols, and a capture of its log.

`start_test_app` is what the `start_server` fixture (tests/conftest.py) runs: a test talks to
the server over sockets and looks at the ConnectionManager directly. For server processes
(kill -9, SIGTERM, RSS), see server_process.py; for no server at all, the test kit's
`Communicator`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.testing import ServerHandle, serve
from tests.app import create_app

__all__ = [
    "ALL_WS",
    "FAST",
    "LEGACY",
    "SANSIO",
    "WS_IDS",
    "LogCapture",
    "Running",
    "StartServer",
    "has_local_connections",
    "start_test_app",
]

# uvicorn's `--ws` protocols: its sans-I/O one (the default here), its legacy one, and the
# library's fast path (a subclass of the sans-I/O one).
SANSIO = "websockets-sansio"
LEGACY = "websockets"
FAST = "fastapi_channels.fastpath:FastWebSocketProtocol"
ALL_WS = [SANSIO, LEGACY, FAST]
WS_IDS = {SANSIO: "sansio", LEGACY: "legacy", FAST: "fastpath"}

Running = tuple[ServerHandle, ConnectionManager]
StartServer = Callable[..., AbstractAsyncContextManager[Running]]


@asynccontextmanager
async def start_test_app(
    ws: str = SANSIO,
    uvicorn: dict[str, Any] | None = None,
    extend: Callable[[FastAPI], None] | None = None,
    log: LogCapture | None = None,
    **settings: Any,
) -> AsyncIterator[Running]:
    """`async with start_test_app(ws=..., uvicorn={...}, **settings) as (server, manager)`.

    `settings` are WSConfig fields (LOG_STATS is off unless given), `uvicorn` extra
    uvicorn.Config options, `extend` a function that may add routes before the app starts,
    `log` a capture to attach once uvicorn has configured its loggers.
    """
    app, manager = create_app(WSConfig(**{"LOG_STATS": False, **settings}))
    if extend is not None:
        extend(app)
    async with serve(app, ws=ws, **(uvicorn or {})) as server:
        if log is not None:
            log.attach()
        yield server, manager


async def has_local_connections(manager: ConnectionManager, user_id: str, count: int) -> bool:
    """Whether this server holds exactly `count` connections of `user_id` (for `eventually`)."""
    return len(await manager.get_user_connections(user_id)) == count


class LogCapture(logging.Handler):
    """Records of uvicorn's error logger (where "Exception in ASGI application" goes) and the library.

    A uvicorn logging config applied earlier in the session (any `uvicorn.run` with its
    default config) keeps "uvicorn.*" records away from the root logger, where pytest's caplog
    listens, so the handler is attached to those loggers directly, after each start.
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
