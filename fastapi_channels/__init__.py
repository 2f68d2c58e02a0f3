"""fastapi-channels: real-time messaging over WebSockets for FastAPI and Starlette.

Connections, groups, per-user and per-connection sends and broadcast, on one process (memory
backend) or many servers sharing Redis, with the same API.
"""

from fastapi_channels.backends import BaseBackend, MemoryBackend
from fastapi_channels.config import WSConfig
from fastapi_channels.connection import Connection, ConnectionState
from fastapi_channels.consumer import BaseConsumer
from fastapi_channels.emitter import Emitter, SyncEmitter
from fastapi_channels.exceptions import BaseError, CloseCode, ErrorResponse
from fastapi_channels.manager import ConnectionManager, get_manager
from fastapi_channels.messages import Message
from fastapi_channels.registry import ConnectionRegistry

__all__ = [
    "BaseBackend",
    "BaseConsumer",
    "BaseError",
    "CloseCode",
    "Connection",
    "ConnectionManager",
    "ConnectionRegistry",
    "ConnectionState",
    "Emitter",
    "ErrorResponse",
    "MemoryBackend",
    "Message",
    "SyncEmitter",
    "WSConfig",
    "get_manager",
]

__version__ = "0.1.0"
