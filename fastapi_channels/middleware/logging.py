"""LoggingMiddleware: one structured log line per message; never the payload unless asked."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi_channels.messages import Message
from fastapi_channels.middleware.base import Middleware

if TYPE_CHECKING:
    from fastapi_channels.connection import Connection

__all__ = ["LoggingMiddleware"]


class LoggingMiddleware(Middleware):
    def __init__(
        self, logger: logging.Logger | None = None, level: int = logging.INFO, include_payload: bool = False
    ) -> None:
        self.logger = logger or logging.getLogger("fastapi_channels.messages")
        self.level = level
        self.include_payload = include_payload

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
            if self.include_payload:
                extra["payload"] = message.data
            self.logger.log(
                self.level,
                "ws message type=%s size=%d user=%s connection=%s duration_ms=%.3f",
                message.type,
                message.raw_size,
                connection.user_id,
                connection.channel_name,
                extra["duration_ms"],
                extra={"ws": extra},
            )
        return message
