"""The filter that keeps client-caused protocol errors from flooding the log with tracebacks."""

from __future__ import annotations

import logging
import logging.config
import uuid

from fastapi_channels.logfilter import ProtocolErrorFilter, install_protocol_error_filter, logging_config

MESSAGE = "Invalid UTF-8 sequence received from client."


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.texts.append(self.format(record))


def fresh_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.logfilter.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger


def log_client_error(logger: logging.Logger) -> None:
    """What uvicorn does: `logger.exception` inside the `except UnicodeDecodeError`."""
    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        logger.exception(MESSAGE)


def test_a_burst_passes_as_single_lines_then_the_rest_of_the_period_is_suppressed() -> None:
    now = [0.0]
    handler = Collect()
    logger = fresh_logger(handler)
    logger.addFilter(ProtocolErrorFilter(burst=3, period=60.0, clock=lambda: now[0]))
    for _ in range(200):
        log_client_error(logger)
    assert len(handler.records) == 3
    assert all(record.levelno == logging.WARNING and record.exc_info is None for record in handler.records)
    assert handler.texts == [f"WARNING {MESSAGE}"] * 3  # no traceback lines
    now[0] = 60.0
    log_client_error(logger)
    assert handler.texts[-1] == f"WARNING {MESSAGE} (197 more suppressed)"


def test_other_records_pass_untouched() -> None:
    handler = Collect()
    logger = fresh_logger(handler)
    logger.addFilter(ProtocolErrorFilter(burst=0))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("Exception in ASGI application\n")
    assert len(handler.records) == 1 and handler.records[0].exc_info is not None
    assert handler.records[0].levelno == logging.ERROR


def test_install_adds_the_filter_once() -> None:
    name = f"test.logfilter.{uuid.uuid4().hex}"
    first = install_protocol_error_filter(name)
    assert install_protocol_error_filter(name) is first
    assert logging.getLogger(name).filters == [first]


def test_logging_config_puts_the_filter_on_uvicorns_error_logger() -> None:
    """Applied through dictConfig, as uvicorn applies `log_config` in each worker process."""
    handler = Collect()
    base = {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {"test.logfilter.dict": {"level": "INFO"}},
    }
    config = logging_config(base)
    config["loggers"]["uvicorn.error"]["handlers"] = []
    config["loggers"]["uvicorn.error"]["propagate"] = False
    logger = logging.getLogger("uvicorn.error")
    filters, handlers, propagate, level = (
        logger.filters[:],
        logger.handlers[:],
        logger.propagate,
        logger.level,
    )
    try:
        logging.config.dictConfig(config)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        for _ in range(20):
            log_client_error(logger)
        assert handler.texts == [f"WARNING {MESSAGE}"] * 10
    finally:
        logger.filters[:], logger.handlers[:], logger.propagate = filters, handlers, propagate
        logger.setLevel(level)
    assert "filters" not in base  # the base is copied, not changed
