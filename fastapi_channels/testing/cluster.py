"""LocalCluster: several ConnectionManagers in one process that reach each other as servers do.

With no Redis URL they share one in-memory hub (no dependency at all); with one, each is a
Redis-backed server with its own id under a key prefix of the cluster's own, so a test can
check that a message sent on one "server" reaches a member on another, in a plain test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi_channels.backends.memory import MemoryBackend, MemoryHub
from fastapi_channels.config import WSConfig
from fastapi_channels.manager import ConnectionManager
from fastapi_channels.testing.communicator import lifespan_enter, lifespan_leave

__all__ = ["LocalCluster"]

MAX_LOCAL_SERVERS = 64


class LocalCluster:
    """`size` managers (and apps, when `app_factory` is given), started and stopped together.

    ``async with LocalCluster(2, app_factory=create_app) as cluster:`` then talk to
    ``cluster.apps[0]`` and ``cluster.apps[1]`` with `Communicator`, or use
    ``cluster.managers`` directly. Extra keyword arguments are WSConfig settings.
    """

    def __init__(
        self,
        size: int = 2,
        *,
        redis_url: str | None = None,
        prefix: str | None = None,
        app_factory: Callable[[ConnectionManager], Any] | None = None,
        **settings: Any,
    ) -> None:
        if not 1 <= size <= MAX_LOCAL_SERVERS:
            raise ValueError(f"size must be 1-{MAX_LOCAL_SERVERS}")
        tag = uuid.uuid4().hex[:8]
        self.hub = MemoryHub() if redis_url is None else None
        self.prefix = prefix if prefix is not None else f"test-{tag}:"
        settings.setdefault("LOG_STATS", False)
        self.managers: list[ConnectionManager] = []
        for index in range(size):
            server_id = f"local{index}-{tag}"
            if redis_url is None:
                config = WSConfig(BACKEND_TYPE="memory", SERVER_INSTANCE_ID=server_id, **settings)
                manager = ConnectionManager(config, backend=MemoryBackend(self.hub))
            else:
                config = WSConfig(
                    BACKEND_TYPE="redis",
                    REDIS_URL=redis_url,
                    REDIS_CHANNEL_PREFIX=self.prefix,
                    SERVER_INSTANCE_ID=server_id,
                    **settings,
                )
                manager = ConnectionManager(config)
            self.managers.append(manager)
        self.apps: list[Any] = [app_factory(m) for m in self.managers] if app_factory is not None else []

    async def start(self) -> None:
        # Each app's lifespan is held open for the cluster's life, so communicators that come
        # and go never stop a server in between.
        for app in self.apps:
            await lifespan_enter(app)
        for manager in self.managers:
            await manager.start_tasks()

    async def stop(self) -> None:
        for app in self.apps:
            await lifespan_leave(app)
        for manager in self.managers:
            await manager.stop_tasks(timeout=5)

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
