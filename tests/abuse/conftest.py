"""Fixtures for fault-and-abuse tests: clients closed after each test, the Redis `cluster` factory."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tests.redis.conftest import cluster  # noqa: F401 - re-exported as a fixture of this package
from tests.support.client import close_clients  # noqa: F401 - an autouse fixture of this folder
from tests.support.serving import FAST, SANSIO

WS_IMPLEMENTATIONS = [SANSIO, FAST]
WS_IDS = ["sansio", "fastpath"]


class TracebackLog(logging.Handler):
    """Collects uvicorn's "Exception in ASGI application" records.

    caplog alone does not see them: uvicorn's default logging config (applied by any earlier
    `serve()` in the session) sets `propagate=False` on the "uvicorn" logger, so the records
    never reach the root logger. This handler is attached to "uvicorn.error" directly, after
    the server has started (uvicorn's dictConfig would drop it otherwise).
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Exception in ASGI application" in message:
            self.messages.append(message + (self.format(record) if record.exc_info else ""))


@contextmanager
def asgi_tracebacks() -> Iterator[TracebackLog]:
    handler = TracebackLog()
    handler.setFormatter(logging.Formatter())
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
