"""LoggingMiddleware: one structured log line per message; never the payload unless asked."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from fastapi_channels.messages import Message
from fastapi_channels.middleware.base import Middleware

if TYPE_CHECKING:
    from fastapi_channels.connection import Connection

__all__ = ["LoggingMiddleware"]


class LoggingMiddleware(Middleware):
    """One line per message: type, size, user, connection and time in the server so far.

    With `include_payload=True` the line ends with the message's data as JSON (a binary
    message's bytes in hex), cut at `max_payload_chars` characters: JSON escapes line breaks
    and control characters, so a client cannot forge log lines, and one message is at most
    that much log. `record.ws` holds the same fields (and the data itself) for structured
    handlers.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
        include_payload: bool = False,
        max_payload_chars: int = 1024,
    ) -> None:
        if max_payload_chars < 1:
            raise ValueError("max_payload_chars must be at least 1")
        self.logger = logger or logging.getLogger("fastapi_channels.messages")
        self.level = level
        self.include_payload = include_payload
        self.max_payload_chars = max_payload_chars

    async def process(self, message: Message, connection: Connection, consumer: Any) -> Message | None:
        if self.logger.isEnabledFor(self.level):
            extra: dict[str, Any] = {
                "message_type": message.type,
                "size": message.raw_size,
                "user_id": connection.user_id,
                "connection_id": connection.channel_name,
                # How long the message has been in the server so far (parse and earlier steps).
                "duration_ms": round((time.time() - message.created_at) * 1000, 3),
            }
            line = "ws message type=%s size=%d user=%s connection=%s duration_ms=%.3f"
            args: list[Any] = [
                message.type,
                message.raw_size,
                connection.user_id,
                connection.channel_name,
                extra["duration_ms"],
            ]
            if self.include_payload:
                extra["payload"] = message.data
                line += " payload=%s"
                args.append(self._payload_text(message))
            self.logger.log(self.level, line, *args, extra={"ws": extra})
        return message

    def _payload_text(self, message: Message) -> str:
        if message.binary_data is not None and message.data is None:
            text = message.binary_data[: self.max_payload_chars].hex()
            whole = len(message.binary_data) * 2
        else:
            text = orjson.dumps(message.data, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
            whole = len(text)
        if whole > self.max_payload_chars:
            return f"{text[: self.max_payload_chars]}...(+{whole - self.max_payload_chars} chars)"
        return text
