"""Session-wide fixtures: a redis-server of our own (never the machine's), isolated per test by prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisProcess


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.stop()


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
