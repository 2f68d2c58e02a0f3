"""LoggingMiddleware: one line per message, the payload only when asked, and then bounded."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from fastapi_channels.messages import Message
from fastapi_channels.middleware import LoggingMiddleware

CONNECTION: Any = SimpleNamespace(user_id="u1", channel_name="srv!c1")


async def logged(middleware: LoggingMiddleware, message: Message, caplog: pytest.LogCaptureFixture) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fastapi_channels.messages"):
        assert await middleware.process(message, CONNECTION, None) is message
    [record] = caplog.records
    return record.getMessage()


async def test_the_line_names_the_message_but_never_its_payload_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    line = await logged(LoggingMiddleware(), Message("say", {"text": "SECRET"}, raw_size=33), caplog)
    assert "type=say" in line and "size=33" in line and "user=u1" in line and "connection=srv!c1" in line
    assert "SECRET" not in line
    assert "SECRET" not in repr(caplog.records[0].__dict__)


async def test_include_payload_puts_the_data_in_the_line_as_json(caplog: pytest.LogCaptureFixture) -> None:
    middleware = LoggingMiddleware(include_payload=True)
    line = await logged(middleware, Message("say", {"text": "SECRET-PAYLOAD"}), caplog)
    assert line.endswith('payload={"text":"SECRET-PAYLOAD"}')
    assert caplog.records[0].ws["payload"] == {"text": "SECRET-PAYLOAD"}


async def test_a_logged_payload_cannot_forge_a_line_and_is_cut_at_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = LoggingMiddleware(include_payload=True, max_payload_chars=40)
    forged = await logged(middleware, Message("say", "hi\nERROR root: forged"), caplog)
    assert "\n" not in forged and '"hi\\nERROR root: forged"' in forged
    long = await logged(middleware, Message("say", "x" * 1000), caplog)
    payload = long.split("payload=", 1)[1]
    assert payload == '"' + "x" * 39 + "...(+962 chars)"


async def test_a_binary_payload_is_logged_in_hex(caplog: pytest.LogCaptureFixture) -> None:
    middleware = LoggingMiddleware(include_payload=True, max_payload_chars=6)
    line = await logged(middleware, Message("binary", binary_data=b"\x00\x01\xff\x10"), caplog)
    assert line.endswith("payload=0001ff...(+2 chars)")


def test_the_payload_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_payload_chars"):
        LoggingMiddleware(max_payload_chars=0)
