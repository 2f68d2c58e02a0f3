"""ValidationMiddleware: refuse oversized messages and malformed type names before anything else."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fastapi_channels.exceptions import CloseCode, ValidationError
from fastapi_channels.messages import Message
from fastapi_channels.middleware.base import Middleware

if TYPE_CHECKING:
    from fastapi_channels.connection import Connection

__all__ = ["ValidationMiddleware"]

_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")


class ValidationMiddleware(Middleware):
    """Size limit (MESSAGE_TOO_LARGE, answered; its ws_code 1009 applies if raised to close), type rule."""

    def __init__(
        self, max_message_size: int = 10 * 1024 * 1024, allowed_types: Iterable[str] | None = None
    ) -> None:
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        self.max_message_size = max_message_size
        self.allowed_types = frozenset(allowed_types) if allowed_types is not None else None

    async def process(self, message: Message, connection: Connection, consumer: Any) -> Message | None:
        size = message.raw_size or (len(message.binary_data) if message.binary_data is not None else 0)
        if size > self.max_message_size:
            raise ValidationError(
                f"message of {size} bytes exceeds the limit of {self.max_message_size}",
                error_code="MESSAGE_TOO_LARGE",
                ws_code=CloseCode.MESSAGE_TOO_BIG,
                details={"size": size, "max_message_size": self.max_message_size},
                message_type=message.type,
            )
        if _TYPE_NAME.fullmatch(message.type) is None:
            raise ValidationError(
                "message type must be 1-64 characters: a letter, then letters, digits or _ . : -",
                error_code="INVALID_MESSAGE_TYPE",
                details={"type": message.type[:64]},
            )
        if self.allowed_types is not None and message.type not in self.allowed_types:
            raise ValidationError(
                f"unknown message type {message.type!r}",
                error_code="UNKNOWN_MESSAGE_TYPE",
                details={"type": message.type, "allowed": sorted(self.allowed_types)},
            )
        return message
