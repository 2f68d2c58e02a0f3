"""Hypothesis-generated frames against the README-shaped consumer app, through the test kit's
Communicator (tests/abuse/test_frame_fuzz.py fuzzes the transport of a real server).

Whatever a client sends (arbitrary text, arbitrary JSON objects, binary), each frame gets a
normal reply or an error frame that is not INTERNAL_ERROR (an unhandled exception), the
connection stays open and usable, and the app logs no traceback.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastapi_channels import WSConfig
from fastapi_channels.testing import Communicator, app_lifespan
from tests.consumer.app import create_app, readme_middleware

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


@pytest.fixture
async def consumer_app(caplog: pytest.LogCaptureFixture) -> AsyncIterator[FastAPI]:
    """The README's chain in front of the consumer app; a rate limit no fuzz run reaches."""
    caplog.set_level(logging.WARNING)
    config = WSConfig(BACKEND_TYPE="memory", LOG_STATS=False, WS_MAX_MESSAGE_SIZE=MAX_SIZE)
    app, _ = create_app(config, readme_middleware(config, None, limit=1_000_000, window=1))
    async with app_lifespan(app):
        yield app


async def replies_before_echo(ws: Communicator) -> list[Any]:
    nonce = uuid.uuid4().hex
    await ws.send_json_to({"type": "echo", "data": nonce})
    replies: list[Any] = []
    while True:
        raw = await ws.receive_from(TIMEOUT)
        frame: Any = raw
        if isinstance(raw, str):
            try:
                frame = json.loads(raw)
            except ValueError:
                frame = raw  # a raw text reply (send_text)
        if isinstance(frame, dict) and frame.get("type") == "echo" and frame.get("data") == nonce:
            return replies
        replies.append(frame)


async def exchange(app: FastAPI, frames: list[str | bytes]) -> None:
    """Each frame on one connection; an exception the app did not handle fails at the exit."""
    async with Communicator(app, "/ws/fuzzer") as ws:
        welcome = await ws.receive_json_from(TIMEOUT)
        assert welcome["type"] == "welcome"
        assert await replies_before_echo(ws) == []
        for frame in frames:
            if isinstance(frame, bytes):
                await ws.send_to(bytes_data=frame)
            else:
                await ws.send_to(text_data=frame)
            replies = await replies_before_echo(ws)  # the connection is still usable after every frame
            assert len(replies) == 1, (frame, replies)
            reply = replies[0]
            if isinstance(reply, dict) and reply.get("type") == "error":
                assert reply["error_code"] != "INTERNAL_ERROR", (frame, reply)
                assert {"error_code", "category", "error_id", "message", "details"} <= reply.keys()
            elif isinstance(reply, dict):
                assert reply.get("type") in NORMAL_REPLIES, (frame, reply)
            else:
                assert isinstance(reply, str | bytes), (frame, reply)


async def fuzz(app: FastAPI, caplog: pytest.LogCaptureFixture, frames: list[str | bytes]) -> None:
    start = len(caplog.records)
    await exchange(app, frames)
    logged = [r for r in caplog.records[start:] if r.exc_info or "unexpected error" in r.getMessage()]
    assert not logged, [r.getMessage() for r in logged]


@FUZZ
@given(frames=st.lists(text_frames, min_size=1, max_size=6))
async def test_arbitrary_text_frames(
    consumer_app: FastAPI, caplog: pytest.LogCaptureFixture, frames: list[str]
) -> None:
    await fuzz(consumer_app, caplog, list(frames))


@FUZZ
@given(frames=st.lists(json_objects, min_size=1, max_size=6))
async def test_arbitrary_json_objects(
    consumer_app: FastAPI, caplog: pytest.LogCaptureFixture, frames: list[dict[str, Any]]
) -> None:
    await fuzz(consumer_app, caplog, [json.dumps(frame) for frame in frames])


@FUZZ
@given(frames=st.lists(binary_frames | text_frames | json_objects.map(json.dumps), min_size=1, max_size=6))
async def test_binary_and_mixed_frames(
    consumer_app: FastAPI, caplog: pytest.LogCaptureFixture, frames: list[str | bytes]
) -> None:
    await fuzz(consumer_app, caplog, list(frames))
