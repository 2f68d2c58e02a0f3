"""Session-wide fixtures: a redis-server of our own (never the machine's), isolated per test by
prefix, and the one fixture that starts the test app (tests/app.py) under a real uvicorn."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from tests.support.redis_cluster import ClusterDeployment
from tests.support.redis_server import RedisProcess
from tests.support.serving import LogCapture, Running, StartServer, start_test_app


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterDeployment]:
    """A Redis Cluster of the session's own (three masters, a replica each), for the tests
    that run with REDIS_MODE=cluster; started on first use. Tests that kill nodes start their own."""
    deployment = ClusterDeployment(masters=3, replicas=1)
    deployment.start()
    yield deployment
    deployment.stop()


@pytest.fixture
def own_cluster() -> Iterator[ClusterDeployment]:
    """A Redis Cluster this test may kill nodes of (three masters, a replica each)."""
    deployment = ClusterDeployment(masters=3, replicas=1)
    deployment.start()
    yield deployment
    deployment.stop()


@pytest.fixture
def topology() -> str:
    """The Redis that the multi-server `cluster` fixture's servers share: "standalone" (the
    session's redis-server) unless a module overrides it with "cluster" (the Redis Cluster)."""
    return "standalone"


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests share one Redis without seeing each other."""
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis this test may kill and restart."""
    server = RedisProcess()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server_log() -> Iterator[LogCapture]:
    """uvicorn's and the library's log records while the test's servers run."""
    capture = LogCapture()
    yield capture
    capture.detach()


@pytest.fixture
def start_server(server_log: LogCapture) -> StartServer:
    """`async with start_server(ws=..., uvicorn={...}, **settings) as (server, manager)`: the
    test app under uvicorn on a free port, its log in `server_log` (tests/support/serving.py)."""

    def start(**options: Any) -> AbstractAsyncContextManager[Running]:
        return start_test_app(log=server_log, **options)

    return start
