"""Fixtures for consumer tests: the consumer app in the test's event loop (`harness`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.consumer.support import Harness
from tests.support.client import close_clients  # noqa: F401 - an autouse fixture of this folder


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        await h.aclose()
