"""Keep clients from writing tracebacks into the server log.

uvicorn's sans-I/O WebSocket protocol (`--ws websockets-sansio`) logs every text message
that is not valid UTF-8 as `Invalid UTF-8 sequence received from client.` *with a traceback*
at ERROR: anyone who can open a socket can write a traceback into the log per connection.
`ProtocolErrorFilter` turns each such record into one line without the traceback and lets
at most `burst` of them through per `period` seconds; the next one let through says how many
were suppressed. (The fast-path protocol does not log these records at all; see fastpath.py.)

`fastapi-channels run` installs it. With plain uvicorn, call `install_protocol_error_filter()`
in the app's module, or pass `log_config=logging_config()` to `uvicorn.run`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CLIENT_ERROR_MESSAGES", "ProtocolErrorFilter", "install_protocol_error_filter", "logging_config"]

CLIENT_ERROR_MESSAGES = frozenset({"Invalid UTF-8 sequence received from client."})
"""uvicorn log messages a client can cause at will, logged with a traceback."""

LOGGER = "uvicorn.error"


class ProtocolErrorFilter(logging.Filter):
    """A logger filter: client-caused protocol errors as one WARNING line, at most `burst` per `period`."""

    def __init__(
        self, burst: int = 10, period: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self._clock = clock
        self._window_start = float("-inf")
        self._passed = 0
        self.suppressed = 0
        """Records dropped since the last one let through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in CLIENT_ERROR_MESSAGES:
            return True
        now = self._clock()
        if now - self._window_start >= self.period:
            self._window_start = now
            self._passed = 0
        if self._passed >= self.burst:
            self.suppressed += 1
            return False
        self._passed += 1
        # The traceback says nothing about the server: it is where uvicorn caught the client's bytes.
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} more suppressed)"
            self.suppressed = 0
        return True


def install_protocol_error_filter(
    logger: str = LOGGER, burst: int = 10, period: float = 60.0
) -> ProtocolErrorFilter:
    """Add the filter to uvicorn's error logger (once; later calls return the installed one)."""
    target = logging.getLogger(logger)
    for existing in target.filters:
        if isinstance(existing, ProtocolErrorFilter):
            return existing
    installed = ProtocolErrorFilter(burst, period)
    target.addFilter(installed)
    return installed


def logging_config(base: dict[str, Any] | None = None) -> dict[str, Any]:
    """uvicorn's logging config (or `base`) with the filter on its error logger.

    A dictConfig rather than a filter added in this process, so that every `--workers`
    process builds its own.
    """
    if base is None:
        from uvicorn.config import LOGGING_CONFIG

        base = LOGGING_CONFIG
    config = copy.deepcopy(base)
    config.setdefault("filters", {})["fastapi_channels_protocol_errors"] = {"()": ProtocolErrorFilter}
    error_logger = config.setdefault("loggers", {}).setdefault(LOGGER, {})
    error_logger["filters"] = [*error_logger.get("filters", []), "fastapi_channels_protocol_errors"]
    return config
