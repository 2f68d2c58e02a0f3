"""Fixtures for multi-server tests: server processes of the test app on one Redis.

`cluster(n)` starts them on the session's Redis; a test module that defines a `topology`
fixture with params ("standalone", "cluster") runs its tests on both that Redis and the
session's Redis Cluster (REDIS_MODE=cluster), with the same assertions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.client import close_clients  # noqa: F401 - an autouse fixture of this folder
from tests.support.redis_cluster import ClusterDeployment
from tests.support.redis_server import RedisProcess
from tests.support.server_process import ServerProcess

ClusterFactory = Callable[..., list[ServerProcess]]


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, topology: str, redis_prefix: str, tmp_path: Path
) -> Iterator[ClusterFactory]:
    """`cluster(n, **env)` starts n server processes sharing the session's Redis (or, with
    `topology` "cluster", the session's Redis Cluster)."""
    started: list[ServerProcess] = []
    if topology == "cluster":
        deployment: ClusterDeployment = request.getfixturevalue("redis_cluster")
        shared = {"REDIS_URL": deployment.url, "REDIS_MODE": "cluster"}
    else:
        shared = {"REDIS_URL": request.getfixturevalue("redis_server").url}

    def start(
        count: int = 2, redis: RedisProcess | None = None, ws: str = "websockets-sansio", **env: object
    ) -> list[ServerProcess]:
        servers = []
        for index in range(count):
            server = ServerProcess(
                {
                    "BACKEND_TYPE": "redis",
                    **(shared if redis is None else {"REDIS_URL": redis.url}),
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
