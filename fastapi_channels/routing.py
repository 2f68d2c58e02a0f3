"""Pure routing: name rules, topic names, channel names and the envelope that crosses a backend.

No I/O lives here, so every rule is testable without sockets or a broker. A name is
validated before it becomes a topic or a key: group, user and connection names are any text
people type (spaces, accents, other scripts, punctuation) without control characters; a
backend that builds keys from them escapes them there (`backends/redis_keys.py`), so no name
reaches outside its prefix or another name's keys. Server ids stay strict: they prefix
channel names and are parsed back out of them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import orjson

from fastapi_channels.exceptions import ValidationError

__all__ = [
    "BROADCAST_TOPIC",
    "MAX_NAME_LENGTH",
    "MAX_SERVER_ID_LENGTH",
    "Envelope",
    "broadcast_topic",
    "decode_envelope",
    "encode_control",
    "encode_frame_envelope",
    "encode_personal",
    "excluded_channels",
    "exclusion_header",
    "group_topic",
    "inbox_topic",
    "new_channel_name",
    "server_of",
    "tag_envelope",
    "user_topic",
    "validate_name",
    "validate_server_id",
]

MAX_NAME_LENGTH: Final = 200
"""Longest group, user or connection name, in characters (code points)."""
MAX_SERVER_ID_LENGTH: Final = 100
# Control characters (C0, DEL, C1), lone surrogates (not encodable as UTF-8) and the line and
# paragraph separators: what could break a line of a log, a frame or a key layout.
_FORBIDDEN_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")
_SERVER_ID_RE: Final = re.compile(r"[A-Za-z0-9_.@+\-]+")
_SEPARATOR: Final = "!"

BROADCAST_TOPIC: Final = "broadcast"


def validate_name(kind: str, value: object) -> str:
    """Return `value` if it is a valid group, user or connection name, else raise ValidationError.

    A name is 1-200 characters of any text without control characters, line or paragraph
    separators or lone surrogates, and it neither starts nor ends with whitespace (refused,
    not stripped: "My Room " and "My Room" would otherwise be two groups that look alike).
    Names are compared exactly as given: no case folding, no Unicode normalisation.
    """
    if not isinstance(value, str) or not value:
        raise ValidationError(
            f"{kind} name must be a non-empty string",
            error_code="INVALID_NAME",
            details={"kind": kind},
        )
    if (
        len(value) > MAX_NAME_LENGTH
        or _FORBIDDEN_RE.search(value) is not None
        or value[0].isspace()
        or value[-1].isspace()
    ):
        raise ValidationError(
            f"{kind} name must be 1-{MAX_NAME_LENGTH} characters without control characters, "
            "not starting or ending with whitespace",
            error_code="INVALID_NAME",
            details={"kind": kind, "max_length": MAX_NAME_LENGTH},
        )
    return value


def validate_server_id(value: str) -> str:
    """Server ids are 1-100 characters of `A-Z a-z 0-9 _ . @ + -`: they prefix channel names
    (`<server_id>!<token>`), topics and keys, and are parsed back out of channel names."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_SERVER_ID_LENGTH
        or _SERVER_ID_RE.fullmatch(value) is None
    ):
        raise ValueError(f"server id must be 1-{MAX_SERVER_ID_LENGTH} characters of A-Z a-z 0-9 _ . @ + -")
    return value


def group_topic(group: str) -> str:
    return "group:" + group


def user_topic(user_id: str) -> str:
    return "user:" + user_id


def inbox_topic(server_id: str) -> str:
    return "inbox:" + server_id


def broadcast_topic() -> str:
    return BROADCAST_TOPIC


def new_channel_name(server_id: str, connection_id: str | None = None) -> str:
    """A channel name says which server owns the connection: `<server_id>!<token>`.

    The token is a fresh hex id, or the caller's `connection_id` (a name, under the name rule;
    it may itself hold '!': the server id never does, so the first '!' splits the two).
    """
    token = uuid.uuid4().hex if connection_id is None else validate_name("connection", connection_id)
    return server_id + _SEPARATOR + token


def excluded_channels(
    exclude: str | Iterable[str] | None, exclude_connection_id: str | None
) -> frozenset[str]:
    """The channel names a `send_group_except` skips, given as `exclude` (one channel name or
    several) or as `exclude_connection_id` (the spec's keyword for one): one of them, not both."""
    if exclude is not None and exclude_connection_id is not None:
        raise TypeError("send_group_except() takes exclude or exclude_connection_id, not both")
    if exclude is None:
        if exclude_connection_id is None:
            raise TypeError("send_group_except() needs exclude or exclude_connection_id")
        exclude = exclude_connection_id
    return frozenset((exclude,) if isinstance(exclude, str) else exclude)


def server_of(channel_name: str) -> str:
    """The server that owns `channel_name`; ValidationError when it is not a channel name."""
    server, sep, token = channel_name.partition(_SEPARATOR) if isinstance(channel_name, str) else ("", "", "")
    if not sep or not token or len(server) > MAX_SERVER_ID_LENGTH or _SERVER_ID_RE.fullmatch(server) is None:
        raise ValidationError(
            "not a channel name (expected '<server_id>!<token>')",
            error_code="INVALID_CHANNEL_NAME",
            details={"channel_name": str(channel_name)[:200]},
        )
    return server


# --- Envelope: what a topic carries ------------------------------------------------------------
#
#   t<utf-8 text>                       a text frame for every local target of the topic
#   b<bytes>                            a binary frame for every local target of the topic
#   x<4-byte length><json list>(t|b)... the same, minus the listed channel names
#   p<channel name>\n(t|b)...           a frame for one connection (server inbox only)
#   c<json object>                      a control command for the owning server (inbox only)
#   h<offset>:<epoch>\n(t|x)...          a history group's message and its position
#   o<8-byte seq><server id>\n<envelope> any of the above, tagged by the server that published
#                                       it, so that server knows when its own send came back

_TEXT: Final = 0x74  # b"t"
_BINARY: Final = 0x62  # b"b"
_EXCEPT: Final = 0x78  # b"x"
_PERSONAL: Final = 0x70  # b"p"
_CONTROL: Final = 0x63  # b"c"
_ORIGIN: Final = 0x6F  # b"o"
_POSITIONED: Final = 0x68  # b"h"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded topic payload: a frame with its targets, or a control command."""

    frame: str | bytes | None = None
    exclude: frozenset[str] = frozenset()
    channel_name: str | None = None
    control: dict[str, object] | None = None
    origin: str | None = None
    seq: int = 0
    position: tuple[int, str] | None = None  # (offset, epoch) of a history group's message


def _frame_part(frame: str | bytes) -> bytes:
    if isinstance(frame, str):
        return b"t" + frame.encode()
    return b"b" + frame


def _decode_frame(data: bytes) -> str | bytes:
    if not data:
        raise ValueError("empty envelope")
    kind = data[0]
    if kind == _TEXT:
        return data[1:].decode()
    if kind == _BINARY:
        return data[1:]
    raise ValueError(f"unknown frame kind {kind!r}")


def encode_frame_envelope(frame: str | bytes, exclude: frozenset[str] | set[str] = frozenset()) -> bytes:
    return exclusion_header(exclude) + _frame_part(frame)


def exclusion_header(exclude: frozenset[str] | set[str]) -> bytes:
    """The part of a frame envelope that lists the channel names left out (b"" for none)."""
    if not exclude:
        return b""
    header = orjson.dumps(sorted(exclude))
    return b"x" + len(header).to_bytes(4, "big") + header


def encode_personal(channel_name: str, frame: str | bytes) -> bytes:
    return b"p" + channel_name.encode() + b"\n" + _frame_part(frame)


def encode_control(command: dict[str, object]) -> bytes:
    return b"c" + orjson.dumps(command)


def tag_envelope(envelope: bytes, server_id: str, seq: int) -> bytes:
    return b"o" + seq.to_bytes(8, "big") + server_id.encode() + b"\n" + envelope


def decode_envelope(data: bytes) -> Envelope:
    """Decode a topic payload; ValueError on anything malformed (a backend logs and drops it)."""
    if not data:
        raise ValueError("empty envelope")
    kind = data[0]
    if kind == _ORIGIN:
        origin, sep, rest = data[9:].partition(b"\n")
        if len(data) < 10 or not sep or rest[:1] == b"o":
            raise ValueError("malformed origin tag")
        inner = decode_envelope(rest)
        return Envelope(
            frame=inner.frame,
            exclude=inner.exclude,
            channel_name=inner.channel_name,
            control=inner.control,
            origin=origin.decode(),
            seq=int.from_bytes(data[1:9], "big"),
            position=inner.position,
        )
    if kind == _POSITIONED:
        header, sep, rest = data[1:].partition(b"\n")
        if not sep or rest[:1] not in (b"t", b"b", b"x"):
            raise ValueError("malformed history envelope")
        inner = decode_envelope(rest)
        offset, colon, epoch = header.partition(b":")
        if not colon or not offset.isdigit() or not epoch:
            raise ValueError("malformed history position")
        return Envelope(frame=inner.frame, exclude=inner.exclude, position=(int(offset), epoch.decode()))
    if kind in (_TEXT, _BINARY):
        return Envelope(frame=_decode_frame(data))
    if kind == _EXCEPT:
        size = int.from_bytes(data[1:5], "big")
        names = orjson.loads(data[5 : 5 + size])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("exclude list must be a list of channel names")
        return Envelope(frame=_decode_frame(data[5 + size :]), exclude=frozenset(names))
    if kind == _PERSONAL:
        name, sep, rest = data[1:].partition(b"\n")
        if not sep:
            raise ValueError("personal envelope without a channel name")
        return Envelope(frame=_decode_frame(rest), channel_name=name.decode())
    if kind == _CONTROL:
        command = orjson.loads(data[1:])
        if not isinstance(command, dict):
            raise ValueError("control envelope must hold an object")
        return Envelope(control=command)
    raise ValueError(f"unknown envelope kind {kind!r}")
