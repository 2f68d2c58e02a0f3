"""Fixtures for multi-server tests: server processes of the test app on one Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.client import close_clients  # noqa: F401 - an autouse fixture of this folder
from tests.support.redis_server import RedisProcess
from tests.support.server_process import ServerProcess

ClusterFactory = Callable[..., list[ServerProcess]]


@pytest.fixture
def cluster(redis_server: RedisProcess, redis_prefix: str, tmp_path: Path) -> Iterator[ClusterFactory]:
    """`cluster(n, **env)` starts n server processes sharing the session's Redis."""
    started: list[ServerProcess] = []

    def start(
        count: int = 2, redis: RedisProcess | None = None, ws: str = "websockets-sansio", **env: object
    ) -> list[ServerProcess]:
        servers = []
        for index in range(count):
            server = ServerProcess(
                {
                    "BACKEND_TYPE": "redis",
                    "REDIS_URL": (redis or redis_server).url,
                    "REDIS_CHANNEL_PREFIX": redis_prefix,
                    "SERVER_INSTANCE_ID": f"srv{index}-{redis_prefix.rstrip(':')}",
                    **{key: str(value) for key, value in env.items()},
                },
                ws=ws,
                log_path=tmp_path / f"server{index}.log",
            )
            server.start()
            started.append(server)
            servers.append(server)
        return servers

    yield start
    for server in started:
        server.kill()
