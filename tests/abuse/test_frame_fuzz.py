"""Arbitrary byte strings as text frames (valid UTF-8 or not) and binary frames against tests/app.py.

tests/consumer/test_fuzz.py fuzzes the consumer app with well-formed text; this sends what a
client library would refuse to: text frames whose bytes are not UTF-8. Whatever arrives, the
abusive connection either keeps working or is closed with a documented code, a long-lived
healthy client on the same server is answered after every example, and the log stays clean.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.abuse.conftest import FAST, WS_IDS, WS_IMPLEMENTATIONS
from tests.support.server_process import ServerProcess

TIMEOUT = 5.0
# 1007 invalid UTF-8 (uvicorn), 1011 the app's catch-all (receive_json failed or the command
# was not an object), 1000 a command that disconnects on purpose.
ALLOWED_CLOSE_CODES = {1000, 1007, 1011}

frames = st.lists(st.tuples(st.binary(max_size=300), st.booleans()), min_size=1, max_size=3)


class FuzzTarget:
    def __init__(self, server: ServerProcess, healthy: ClientConnection) -> None:
        self.server = server
        self.healthy = healthy


@pytest.fixture(scope="module", params=WS_IMPLEMENTATIONS, ids=WS_IDS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    log: Path = tmp_path_factory.mktemp("frame-fuzz") / "server.log"
    server = ServerProcess(
        {"BACKEND_TYPE": "memory", "WS_MAX_MESSAGE_SIZE": "65536"}, ws=request.param, log_path=log
    )
    server.start()
    try:
        with connect(f"{server.ws_url}/ws/healthy", open_timeout=10, close_timeout=5) as healthy:
            assert json.loads(healthy.recv(timeout=TIMEOUT))["type"] == "hello"
            yield FuzzTarget(server, healthy)
        assert server.alive
        assert_clean_log(server.log(), request.param)
    finally:
        server.kill()


def is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def assert_clean_log(log: str, ws: str) -> None:
    """No unhandled exception; the only tracebacks are uvicorn's own for invalid UTF-8.

    uvicorn's sans-I/O protocol logs "Invalid UTF-8 sequence received from client." with a
    traceback at ERROR for every such text frame (its 1007 path): a client can make the
    server write a traceback per frame. The fast path answers those with one INFO line, so
    its log has no traceback at all (see docs/reliability.md).
    """
    assert "Exception in ASGI" not in log, log[-4000:]
    if ws == FAST:
        assert "Traceback" not in log, log[-4000:]
    chunks = log.split("Traceback (most recent call last):")
    for before in chunks[:-1]:
        assert before.rstrip().endswith("Invalid UTF-8 sequence received from client."), log[-4000:]


def echo(ws: ClientConnection) -> None:
    """Send an echo command and wait for its answer (skipping anything else)."""
    nonce = uuid.uuid4().hex
    ws.send(json.dumps({"op": "echo", "data": nonce}))
    while True:
        reply = json.loads(ws.recv(timeout=TIMEOUT))
        if reply.get("type") == "echo" and reply.get("data") == nonce:
            return


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(frames=frames)
def test_arbitrary_bytes_as_text_or_binary_frames_leave_the_server_healthy(
    target: FuzzTarget, frames: list[tuple[bytes, bool]]
) -> None:
    with connect(f"{target.server.ws_url}/ws/fuzzer", open_timeout=10, close_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "hello"
        try:
            for data, as_text in frames:
                ws.send(data, text=as_text)
            echo(ws)  # still usable: every frame was a JSON object the app could run
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                # uvicorn sends 1007 and closes the transport at once; data we had already
                # written makes the kernel answer with a RST that can discard the close frame.
                assert any(as_text and not is_utf8(data) for data, as_text in frames), frames
            else:
                assert closed.rcvd.code in ALLOWED_CLOSE_CODES, (frames, closed.rcvd)
    echo(target.healthy)
