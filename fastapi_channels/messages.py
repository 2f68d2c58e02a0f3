"""Message: what consumers and middleware handle; and `to_frame`, the one place a send is encoded.

A send is encoded once, whatever the number of recipients: the frame (a `str` for a text
frame, `bytes` for a binary one) is what every recipient's buffer holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi_channels.serializers import Serializer

__all__ = ["Message", "to_frame"]


@dataclass(slots=True)
class Message:
    """One application message, as parsed from a client frame or built by the server."""

    type: str
    data: Any = None
    sender_id: str | None = None
    group: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    ttl_seconds: float | None = None
    created_at: float = field(default_factory=time.time)
    binary_data: bytes | None = None
    raw_size: int = 0
    """Size in bytes of the client frame it was parsed from; 0 for a message built by the server."""

    def to_dict(self) -> dict[str, Any]:
        """The wire shape; empty optional fields are left out to keep frames small."""
        out: dict[str, Any] = {"type": self.type}
        if self.data is not None:
            out["data"] = self.data
        if self.sender_id is not None:
            out["sender_id"] = self.sender_id
        if self.group is not None:
            out["group"] = self.group
        if self.metadata:
            out["metadata"] = self.metadata
        if self.priority:
            out["priority"] = self.priority
        if self.ttl_seconds is not None:
            out["ttl_seconds"] = self.ttl_seconds
        out["created_at"] = self.created_at
        return out

    def is_expired(self, now: float | None = None) -> bool:
        if self.ttl_seconds is None:
            return False
        return (time.time() if now is None else now) > self.created_at + self.ttl_seconds


def to_frame(message: Any, serializer: Serializer) -> str | bytes:
    """Encode `message` once: str and bytes pass through, anything else goes to the serializer."""
    if isinstance(message, str | bytes):
        return message
    if isinstance(message, bytearray | memoryview):
        return bytes(message)
    if isinstance(message, Message):
        if message.binary_data is not None and message.data is None:
            return message.binary_data
        # Its wire shape, not every field (orjson would serialise the dataclass whole).
        return serializer.dumps(message.to_dict())
    return serializer.dumps(message)
