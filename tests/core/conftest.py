"""Core behaviour on one server: the test app (tests/app.py) under a real uvicorn, started by
the `start_server` fixture (tests/conftest.py), and real WebSocket clients (tests/support/).

A test that takes the `ws` fixture runs once per uvicorn protocol that can carry the frames:
its sans-I/O and legacy protocols and the library's fast path. Those are the tests where the
protocol is what is under test (framing, fan-out, close codes, bad input); the others run on
the sans-I/O protocol, the default.
"""

from __future__ import annotations

import pytest

from tests.support.client import close_clients  # noqa: F401 - an autouse fixture of this folder
from tests.support.serving import ALL_WS, WS_IDS


@pytest.fixture(params=ALL_WS, ids=[WS_IDS[ws] for ws in ALL_WS])
def ws(request: pytest.FixtureRequest) -> str:
    return str(request.param)
