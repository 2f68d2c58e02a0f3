"""Helpers users import to test their own apps, and that our suite uses too.

- `Communicator`: a WebSocket client of an ASGI app in the same event loop, with no port,
  no thread and no server process (the app's lifespan runs around it).
- `LocalCluster`: several managers in one process that reach each other the way servers
  do, through an in-memory hub or a real Redis, so cross-server behaviour is testable in a
  plain test function.
- `serve`: the app under a real uvicorn on a free loopback port, for protocol-level tests.
"""

from fastapi_channels.testing.cluster import LocalCluster
from fastapi_channels.testing.communicator import Communicator, app_lifespan
from fastapi_channels.testing.server import ServerHandle, free_port, serve

__all__ = ["Communicator", "LocalCluster", "ServerHandle", "app_lifespan", "free_port", "serve"]
