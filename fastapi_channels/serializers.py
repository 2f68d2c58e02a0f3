"""Serializers turn a message object into a frame and back.

JSON (stdlib) and orjson produce text frames; pickle produces binary frames and is refused
unless explicitly enabled, because unpickling untrusted bytes runs arbitrary code.
"""

from __future__ import annotations

import json
import pickle  # opt-in only, see PickleSerializer
from typing import Any, Protocol

import orjson

from fastapi_channels.exceptions import MessageError

__all__ = ["JSONSerializer", "OrjsonSerializer", "PickleSerializer", "Serializer", "get_serializer"]


class Serializer(Protocol):
    name: str

    def dumps(self, obj: Any) -> str | bytes: ...

    def loads(self, data: str | bytes) -> Any: ...


class JSONSerializer:
    """Standard-library JSON; text frames."""

    name = "json"

    def dumps(self, obj: Any) -> str:
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_fallback)
        except (TypeError, ValueError) as exc:
            raise MessageError(
                f"message is not JSON-serializable: {exc}", error_code="SERIALIZATION_FAILED"
            ) from exc

    def loads(self, data: str | bytes) -> Any:
        return json.loads(data)


class OrjsonSerializer:
    """orjson: the same JSON several times faster; text frames."""

    name = "orjson"

    def dumps(self, obj: Any) -> str:
        try:
            return orjson.dumps(obj, default=_fallback).decode()
        except TypeError as exc:
            raise MessageError(
                f"message is not JSON-serializable: {exc}", error_code="SERIALIZATION_FAILED"
            ) from exc

    def loads(self, data: str | bytes) -> Any:
        return orjson.loads(data)


class PickleSerializer:
    """Pickle; binary frames. Only for peers you trust completely: loading runs code."""

    name = "pickle"

    def __init__(self, *, allow: bool = False) -> None:
        if not allow:
            raise MessageError(
                "pickle is disabled: set WS_ALLOW_PICKLE=true only if every peer is trusted",
                error_code="PICKLE_DISABLED",
            )

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: str | bytes) -> Any:
        raw = data.encode() if isinstance(data, str) else data
        return pickle.loads(raw)  # noqa: S301 - explicitly enabled by the operator


def _fallback(obj: Any) -> Any:
    """Encode the few non-JSON types messages commonly carry (sets, pydantic models, dataclasses)."""
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def get_serializer(name: str, *, allow_pickle: bool = False) -> Serializer:
    if name == "orjson":
        return OrjsonSerializer()
    if name == "json":
        return JSONSerializer()
    if name == "pickle":
        return PickleSerializer(allow=allow_pickle)
    raise MessageError(f"unknown serializer {name!r}", error_code="UNKNOWN_SERIALIZER")
