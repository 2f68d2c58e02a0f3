"""Serializers, Message and to_frame: one encoding per send, pickle only on explicit opt-in."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapi_channels.exceptions import MessageError
from fastapi_channels.messages import Message, to_frame
from fastapi_channels.serializers import (
    JSONSerializer,
    OrjsonSerializer,
    PickleSerializer,
    Serializer,
    get_serializer,
)

JSON_SERIALIZERS = [OrjsonSerializer(), JSONSerializer()]
ids = [s.name for s in JSON_SERIALIZERS]


# --- to_frame -----------------------------------------------------------------------------------
@pytest.mark.parametrize("serializer", JSON_SERIALIZERS, ids=ids)
def test_to_frame_passes_str_and_bytes_through(serializer: Serializer) -> None:
    text = '{"already": "encoded"}'
    raw = b"\x00\x01binary"
    assert to_frame(text, serializer) is text
    assert to_frame(raw, serializer) is raw


@pytest.mark.parametrize("serializer", JSON_SERIALIZERS, ids=ids)
def test_to_frame_copies_bytearray_and_memoryview_to_bytes(serializer: Serializer) -> None:
    for value in (bytearray(b"abc"), memoryview(b"abc")):
        frame = to_frame(value, serializer)
        assert frame == b"abc"
        assert type(frame) is bytes


@pytest.mark.parametrize("serializer", JSON_SERIALIZERS, ids=ids)
def test_to_frame_dict_becomes_json_text(serializer: Serializer) -> None:
    message = {"type": "chat", "text": "héllo ✓", "n": [1, 2.5, None, True]}
    frame = to_frame(message, serializer)
    assert isinstance(frame, str)
    assert json.loads(frame) == message
    assert serializer.loads(frame) == message


@pytest.mark.parametrize("serializer", JSON_SERIALIZERS, ids=ids)
def test_to_frame_message_uses_its_wire_shape(serializer: Serializer) -> None:
    message = Message(type="chat", data={"text": "hi"}, sender_id="u1", group="room", created_at=1.5)
    frame = to_frame(message, serializer)
    assert isinstance(frame, str)
    assert json.loads(frame) == message.to_dict()


@pytest.mark.parametrize("serializer", JSON_SERIALIZERS, ids=ids)
def test_to_frame_binary_only_message_is_a_binary_frame(serializer: Serializer) -> None:
    assert to_frame(Message(type="file", binary_data=b"\x89PNG"), serializer) == b"\x89PNG"


@pytest.mark.parametrize("serializer", JSON_SERIALIZERS, ids=ids)
def test_to_frame_message_with_data_and_binary_is_json(serializer: Serializer) -> None:
    frame = to_frame(Message(type="file", data={"a": 1}, binary_data=b"x", created_at=0.0), serializer)
    assert isinstance(frame, str)
    assert json.loads(frame) == {"type": "file", "data": {"a": 1}, "created_at": 0.0}


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**53), max_value=2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=15,
)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_dict_round_trip_property(message: dict[str, Any]) -> None:
    for serializer in JSON_SERIALIZERS:
        frame = to_frame(message, serializer)
        assert isinstance(frame, str)
        assert serializer.loads(frame) == message
        assert serializer.loads(frame.encode()) == message


# --- fallbacks and failures ---------------------------------------------------------------------
class Point(pydantic.BaseModel):
    x: int
    y: int


@dataclass
class HasToDict:
    value: int

    def to_dict(self) -> dict[str, int]:
        return {"value": self.value}


@pytest.mark.parametrize("serializer", JSON_SERIALIZERS, ids=ids)
def test_common_non_json_types_are_encoded(serializer: Serializer) -> None:
    frame = serializer.dumps(
        {"tags": {"b", "a"}, "frozen": frozenset({2, 1}), "p": Point(x=1, y=2), "d": HasToDict(3)}
    )
    assert isinstance(frame, str)
    assert json.loads(frame) == {
        "tags": ["a", "b"],
        "frozen": [1, 2],
        "p": {"x": 1, "y": 2},
        "d": {"value": 3},
    }


@pytest.mark.parametrize("serializer", JSON_SERIALIZERS, ids=ids)
@pytest.mark.parametrize("value", [object(), {"f": lambda: None}, {"c": complex(1, 2)}])
def test_unserializable_raises_message_error(serializer: Serializer, value: object) -> None:
    with pytest.raises(MessageError) as info:
        serializer.dumps(value)
    assert info.value.error_code == "SERIALIZATION_FAILED"


@pytest.mark.parametrize("serializer", JSON_SERIALIZERS, ids=ids)
def test_to_frame_unserializable_raises_message_error(serializer: Serializer) -> None:
    with pytest.raises(MessageError):
        to_frame({"x": object()}, serializer)


def test_json_circular_reference_raises_message_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(MessageError):
        JSONSerializer().dumps(loop)


def test_get_serializer() -> None:
    assert isinstance(get_serializer("orjson"), OrjsonSerializer)
    assert isinstance(get_serializer("json"), JSONSerializer)
    assert isinstance(get_serializer("pickle", allow_pickle=True), PickleSerializer)
    with pytest.raises(MessageError) as info:
        get_serializer("yaml")
    assert info.value.error_code == "UNKNOWN_SERIALIZER"


# --- pickle -------------------------------------------------------------------------------------
def test_pickle_refused_by_default() -> None:
    with pytest.raises(MessageError) as info:
        get_serializer("pickle")
    assert info.value.error_code == "PICKLE_DISABLED"
    with pytest.raises(MessageError) as info:
        PickleSerializer()
    assert info.value.error_code == "PICKLE_DISABLED"


def test_pickle_when_allowed_round_trips_binary_frames() -> None:
    serializer = get_serializer("pickle", allow_pickle=True)
    frame = to_frame({"a": {1, 2}}, serializer)
    assert isinstance(frame, bytes)
    assert serializer.loads(frame) == {"a": {1, 2}}


EXECUTED: list[str] = []


def _record(tag: str) -> None:
    EXECUTED.append(tag)


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_record, ("pwned",))


@pytest.mark.parametrize("serializer", JSON_SERIALIZERS, ids=ids)
def test_crafted_pickle_payload_is_not_executed_by_default_serializers(serializer: Serializer) -> None:
    payload = pickle.dumps(Exploit(), protocol=2)
    EXECUTED.clear()
    pickle.loads(payload)
    assert EXECUTED == ["pwned"]
    EXECUTED.clear()
    for data in (payload, payload.decode("latin-1")):
        with pytest.raises(ValueError):
            serializer.loads(data)
    assert EXECUTED == []


def test_default_serializer_of_get_serializer_is_not_pickle() -> None:
    from fastapi_channels.config import WSConfig

    assert get_serializer(WSConfig.model_fields["WS_SERIALIZER"].default).name != "pickle"


# --- Message ------------------------------------------------------------------------------------
def test_message_to_dict_minimal() -> None:
    assert Message(type="ping", created_at=5.0).to_dict() == {"type": "ping", "created_at": 5.0}


def test_message_to_dict_full() -> None:
    message = Message(
        type="chat",
        data={"text": "hi"},
        sender_id="u1",
        group="room",
        metadata={"trace": "t"},
        priority=2,
        ttl_seconds=30.0,
        created_at=5.0,
        binary_data=b"ignored",
        raw_size=99,
    )
    assert message.to_dict() == {
        "type": "chat",
        "data": {"text": "hi"},
        "sender_id": "u1",
        "group": "room",
        "metadata": {"trace": "t"},
        "priority": 2,
        "ttl_seconds": 30.0,
        "created_at": 5.0,
    }


@pytest.mark.parametrize("falsy", [0, "", False, [], {}])
def test_message_to_dict_keeps_falsy_data(falsy: object) -> None:
    assert Message(type="t", data=falsy, created_at=0.0).to_dict()["data"] == falsy


def test_message_to_dict_is_json() -> None:
    message = Message(type="t", data={"a": [1, 2]}, created_at=1.0)
    assert orjson.loads(orjson.dumps(message.to_dict())) == message.to_dict()


def test_message_created_at_defaults_to_now() -> None:
    import time

    before = time.time()
    message = Message(type="t")
    assert before <= message.created_at <= time.time()


def test_message_expiry() -> None:
    message = Message(type="t", ttl_seconds=10.0, created_at=100.0)
    assert message.is_expired(now=110.0) is False
    assert message.is_expired(now=110.001) is True
    assert Message(type="t", created_at=0.0).is_expired(now=1e12) is False
