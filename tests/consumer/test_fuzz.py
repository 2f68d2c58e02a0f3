"""Hypothesis-generated frames against a server process of the README-shaped consumer app.

Whatever a client sends (arbitrary text, arbitrary JSON objects, binary), each frame gets a
normal reply or an error frame that is not INTERNAL_ERROR (an unhandled exception), the
connection stays open and usable, and the server logs no traceback.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.consumer.conftest import ConsumerServer

MAX_SIZE = 600
TIMEOUT = 5.0

# Replies the consumer app gives to valid messages (JSON frames); raw text/bytes replies also count.
NORMAL_REPLIES = {"echo", "chat_ok", "whoami", "typing_ok", "binary_ok", "pong", "joined", "left"}
KNOWN_TYPES = ["echo", "chat", "whoami", "typing_start", "ping", "join", "leave", "text", "bytes", "binary"]
# Not sent: "bye" closes on purpose, "boom" raises on purpose, "say*" reply to the group (0 or 1
# frame), "pong" is answered by nothing, "disconnect" hits the bug test_consumer covers.
SKIPPED_TYPES = {"bye", "boom", "say", "say_others", "pong", "disconnect"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
typed_data = st.fixed_dictionaries(
    {},
    optional={"room": json_values | st.text(), "text": st.text(max_size=250), "group": st.text(max_size=12)},
)
message_types = st.sampled_from(KNOWN_TYPES) | st.text(max_size=70)
json_objects = st.one_of(
    # arbitrary objects (mostly without a usable "type")
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    # frames in the protocol's shape with arbitrary field values
    st.fixed_dictionaries(
        {"type": message_types},
        optional={
            "data": typed_data | json_values,
            "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
            "priority": st.integers(-(2**70), 2**70) | json_values,
            "ttl_seconds": st.floats(-10, 1e9, allow_nan=False) | json_values,
            "group": json_values,
        },
    ),
).filter(lambda frame: frame.get("type") not in SKIPPED_TYPES)
text_frames = st.one_of(
    st.text(max_size=MAX_SIZE + 100),
    json_values.map(json.dumps),  # valid JSON that is not an object: scalars, arrays
    st.tuples(json_objects.map(json.dumps), st.integers(0, 200)).map(lambda t: t[0][: t[1]]),  # cut short
).filter(lambda text: not _skipped_json(text))
binary_frames = st.binary(max_size=MAX_SIZE + 100)

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _skipped_json(text: str) -> bool:
    try:
        frame = json.loads(text)
    except ValueError:
        return False
    return isinstance(frame, dict) and frame.get("type") in SKIPPED_TYPES


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsumerServer]:
    server = ConsumerServer(
        {
            "BACKEND_TYPE": "memory",
            "WS_MAX_MESSAGE_SIZE": str(MAX_SIZE),
            "CONSUMER_RATE_LIMIT": "1000000",
            "CONSUMER_RATE_WINDOW": "1",
        },
        tmp_path_factory.mktemp("fuzz") / "server.log",
    )
    server.start()
    yield server
    server.stop()


def replies_before_echo(ws: ClientConnection) -> list[Any]:
    nonce = uuid.uuid4().hex
    ws.send(json.dumps({"type": "echo", "data": nonce}))
    replies: list[Any] = []
    while True:
        raw = ws.recv(timeout=TIMEOUT)
        frame: Any = raw
        if isinstance(raw, str):
            try:
                frame = json.loads(raw)
            except ValueError:
                frame = raw  # a raw text reply (send_text)
        if isinstance(frame, dict) and frame.get("type") == "echo" and frame.get("data") == nonce:
            return replies
        replies.append(frame)


def exchange(server: ConsumerServer, frames: list[str | bytes]) -> None:
    with connect(f"{server.ws_url}/ws/fuzzer", open_timeout=10, close_timeout=5) as ws:
        welcome = json.loads(ws.recv(timeout=TIMEOUT))
        assert welcome["type"] == "welcome"
        assert replies_before_echo(ws) == []
        for frame in frames:
            ws.send(frame)
            replies = replies_before_echo(ws)  # the connection is still usable after every frame
            assert len(replies) == 1, (frame, replies)
            reply = replies[0]
            if isinstance(reply, dict) and reply.get("type") == "error":
                assert reply["error_code"] != "INTERNAL_ERROR", (frame, reply)
                assert {"error_code", "category", "error_id", "message", "details"} <= reply.keys()
            elif isinstance(reply, dict):
                assert reply.get("type") in NORMAL_REPLIES, (frame, reply)
            else:
                assert isinstance(reply, str | bytes), (frame, reply)


def assert_clean_log(server: ConsumerServer, since: int) -> None:
    log = server.log()[since:]
    for marker in ("Traceback", "unexpected error", "Exception in ASGI"):
        assert marker not in log, log[-4000:]


@FUZZ
@given(frames=st.lists(text_frames, min_size=1, max_size=6))
def test_arbitrary_text_frames(fuzz_server: ConsumerServer, frames: list[str]) -> None:
    start = len(fuzz_server.log())
    exchange(fuzz_server, list(frames))
    assert_clean_log(fuzz_server, start)


@FUZZ
@given(frames=st.lists(json_objects, min_size=1, max_size=6))
def test_arbitrary_json_objects(fuzz_server: ConsumerServer, frames: list[dict[str, Any]]) -> None:
    start = len(fuzz_server.log())
    exchange(fuzz_server, [json.dumps(frame) for frame in frames])
    assert_clean_log(fuzz_server, start)


@FUZZ
@given(frames=st.lists(binary_frames | text_frames | json_objects.map(json.dumps), min_size=1, max_size=6))
def test_binary_and_mixed_frames(fuzz_server: ConsumerServer, frames: list[str | bytes]) -> None:
    start = len(fuzz_server.log())
    exchange(fuzz_server, list(frames))
    assert_clean_log(fuzz_server, start)
