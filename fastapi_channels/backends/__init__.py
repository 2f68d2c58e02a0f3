"""Backends: where topics travel and cluster state lives. Memory for one process, Redis for many."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi_channels.backends.base import Admission, BaseBackend, MessageHandler
from fastapi_channels.backends.memory import MemoryBackend, MemoryHub

if TYPE_CHECKING:
    from fastapi_channels.backends.redis import RedisBackend

__all__ = ["Admission", "BaseBackend", "MemoryBackend", "MemoryHub", "MessageHandler", "RedisBackend"]


def __getattr__(name: str) -> Any:
    # redis is an optional extra: import it only when the Redis backend is asked for.
    if name == "RedisBackend":
        from fastapi_channels.backends.redis import RedisBackend

        return RedisBackend
    raise AttributeError(name)
