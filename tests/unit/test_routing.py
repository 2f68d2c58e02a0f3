"""Routing: name rules, topics, channel names and the envelope codec."""

from __future__ import annotations

import contextlib
import string
import unicodedata

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapi_channels.exceptions import ValidationError
from fastapi_channels.routing import (
    BROADCAST_TOPIC,
    MAX_NAME_LENGTH,
    MAX_SERVER_ID_LENGTH,
    Envelope,
    broadcast_topic,
    decode_envelope,
    encode_control,
    encode_frame_envelope,
    encode_personal,
    group_topic,
    inbox_topic,
    new_channel_name,
    server_of,
    user_topic,
    validate_name,
    validate_server_id,
)

# Server ids (and the tokens the library generates) keep the strict alphabet.
NAME_ALPHABET = string.ascii_letters + string.digits + "_.@+-"
names = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=MAX_SERVER_ID_LENGTH)

# Group, user and connection names: any text without control characters, line separators or
# lone surrogates, not starting or ending with whitespace.
FORBIDDEN = {"Cc", "Cs", "Zl", "Zp"}
free_names = st.text(
    alphabet=st.characters(exclude_categories=tuple(FORBIDDEN)), min_size=1, max_size=MAX_NAME_LENGTH
).filter(lambda s: not s[0].isspace() and not s[-1].isspace())


def follows_the_rule(value: str) -> bool:
    return (
        1 <= len(value) <= MAX_NAME_LENGTH
        and not any(unicodedata.category(ch) in FORBIDDEN for ch in value)
        and not value[0].isspace()
        and not value[-1].isspace()
    )


# --- validate_name ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        "a",
        "room-1",
        "user@example.com",
        "a.b_c+d",
        "0",
        "A" * MAX_NAME_LENGTH,
        NAME_ALPHABET,
        # What people type: spaces, accents, other scripts, emoji.
        "My Room",
        "Carol Smith",
        "Café",
        "Zoë's room (2)",
        "東京",
        "\uff41",  # fullwidth letter a
        "\u0661",  # arabic-indic digit one
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a family emoji: zero-width joiners inside
        # What a key layout must survive: separators, glob characters, look-alikes of keys.
        "a:b",
        "group:x",
        "*",
        "room*",
        "a|b",
        "a!b",
        "a/b",
        "100%",
        "a\\b",
        "[x]{y}?",
        "prefix:group:other",
    ],
)
def test_valid_names_are_returned_unchanged(value: str) -> None:
    assert validate_name("group", value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        " a",
        "a ",
        "\u3000room",  # ideographic space
        "room\u00a0",  # no-break space
        "a\tb",
        "a\n",
        "a\rb",
        "a\x00",
        "a\x1b[31m",  # ANSI escape
        "a\x7f",
        "a\x85b",  # C1 next line
        "a\u2028b",  # line separator
        "a\u2029b",  # paragraph separator
        "a\ud800b",  # lone surrogate: not encodable
        "A" * (MAX_NAME_LENGTH + 1),
    ],
)
def test_invalid_names_raise_validation_error(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_name("group", value)
    assert info.value.error_code == "INVALID_NAME"
    assert info.value.details["kind"] == "group"


@pytest.mark.parametrize("value", [None, 1, 1.5, b"room", ["room"], {"a": 1}, object()])
def test_non_string_names_raise_validation_error(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        validate_name("user", value)
    assert info.value.error_code == "INVALID_NAME"
    assert info.value.details["kind"] == "user"


@given(free_names)
def test_any_name_of_allowed_characters_is_valid(value: str) -> None:
    assert validate_name("group", value) == value


@given(st.text(max_size=MAX_NAME_LENGTH + 20))
def test_validate_name_accepts_exactly_the_rule(value: str) -> None:
    if follows_the_rule(value):
        assert validate_name("group", value) == value
    else:
        with pytest.raises(ValidationError):
            validate_name("group", value)


def test_validate_server_id_raises_plain_value_error() -> None:
    assert validate_server_id("srv-1") == "srv-1"
    # Server ids stay strict: they prefix channel names and are parsed out of them.
    for bad in ["", "srv:1", "srv!1", "srv 1", "srv|1", "sérver", "a" * (MAX_SERVER_ID_LENGTH + 1)]:
        with pytest.raises(ValueError) as info:
            validate_server_id(bad)
        assert not isinstance(info.value, ValidationError)


# --- topics and channel names -------------------------------------------------------------------
def test_topics() -> None:
    assert group_topic("room") == "group:room"
    assert user_topic("alice") == "user:alice"
    assert inbox_topic("srv") == "inbox:srv"
    assert broadcast_topic() == BROADCAST_TOPIC == "broadcast"
    # topic kinds never collide: each kind has its own prefix, and the name is what follows it
    assert len({group_topic("x"), user_topic("x"), inbox_topic("x"), broadcast_topic()}) == 4


def test_new_channel_name_embeds_server_and_is_unique() -> None:
    made = {new_channel_name("srv-1") for _ in range(200)}
    assert len(made) == 200
    for name in made:
        assert name.startswith("srv-1!")
        assert server_of(name) == "srv-1"
        token = name.split("!", 1)[1]
        assert validate_name("connection", token) == token


def test_new_channel_name_with_explicit_connection_id() -> None:
    assert new_channel_name("srv", "conn-1") == "srv!conn-1"
    # A custom connection id follows the name rule: it becomes the token after the server id.
    assert new_channel_name("srv", "Carol's phone: tab 2") == "srv!Carol's phone: tab 2"
    assert server_of(new_channel_name("srv", "a!b|c")) == "srv"
    for bad in ["", "a\nb", " padded", "x" * (MAX_NAME_LENGTH + 1)]:
        with pytest.raises(ValidationError):
            new_channel_name("srv", bad)


@given(server=names, token=free_names)
def test_server_of_inverts_new_channel_name(server: str, token: str) -> None:
    assert server_of(new_channel_name(server, token)) == server


@pytest.mark.parametrize(
    "value",
    # The part before the first '!' must be a server id: names may hold '!' and spaces, ids never.
    ["", "srv", "!token", "srv!", "!", "srv:token", "my room!token", "srv:1!token", "sérver!token"],
)
def test_server_of_rejects_non_channel_names(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        server_of(value)
    assert info.value.error_code == "INVALID_CHANNEL_NAME"


@pytest.mark.parametrize("value", [None, 42, b"srv!tok", ["srv!tok"]])
def test_server_of_rejects_non_strings_with_validation_error(value: object) -> None:
    with pytest.raises(ValidationError):
        server_of(value)  # type: ignore[arg-type]


def test_server_of_splits_on_first_separator() -> None:
    assert server_of("srv!a!b") == "srv"


# --- envelopes ----------------------------------------------------------------------------------
def test_text_envelope_round_trip() -> None:
    data = encode_frame_envelope('{"type":"chat","text":"héllo ✓"}')
    assert data[:1] == b"t"
    assert decode_envelope(data) == Envelope(frame='{"type":"chat","text":"héllo ✓"}')


def test_binary_envelope_round_trip() -> None:
    payload = bytes(range(256))
    data = encode_frame_envelope(payload)
    assert data[:1] == b"b"
    env = decode_envelope(data)
    assert env.frame == payload and isinstance(env.frame, bytes)
    assert env.exclude == frozenset() and env.channel_name is None and env.control is None


def test_empty_frames_round_trip_with_their_kind() -> None:
    assert decode_envelope(encode_frame_envelope("")).frame == ""
    assert decode_envelope(encode_frame_envelope(b"")).frame == b""


def test_text_and_binary_are_distinguished() -> None:
    assert decode_envelope(encode_frame_envelope("abc")).frame == "abc"
    assert decode_envelope(encode_frame_envelope(b"abc")).frame == b"abc"
    assert isinstance(decode_envelope(encode_frame_envelope(b"abc")).frame, bytes)


@pytest.mark.parametrize("frame", ["text frame", b"\x00binary\xff"])
def test_except_envelope_round_trip(frame: str | bytes) -> None:
    exclude = {"srv!a", "srv!b", "other!c"}
    data = encode_frame_envelope(frame, exclude)
    assert data[:1] == b"x"
    env = decode_envelope(data)
    assert env.frame == frame
    assert type(env.frame) is type(frame)
    assert env.exclude == frozenset(exclude)
    assert env.channel_name is None and env.control is None


def test_empty_exclude_is_a_plain_envelope() -> None:
    assert encode_frame_envelope("x", set()) == encode_frame_envelope("x") == b"tx"


@pytest.mark.parametrize("frame", ["hello", b"\x01\x02\n\n"])
def test_personal_envelope_round_trip(frame: str | bytes) -> None:
    data = encode_personal("srv!conn1", frame)
    assert data[:1] == b"p"
    env = decode_envelope(data)
    assert env == Envelope(frame=frame, channel_name="srv!conn1")
    assert type(env.frame) is type(frame)


def test_control_envelope_round_trip() -> None:
    command: dict[str, object] = {"op": "disconnect", "channel": "srv!x", "code": 1000, "n": [1, None]}
    data = encode_control(command)
    assert data[:1] == b"c"
    env = decode_envelope(data)
    assert env == Envelope(control=command)
    assert env.frame is None


frames = st.one_of(st.text(), st.binary())
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
channel_names = st.builds(lambda s, t: f"{s}!{t}", names, names)


@given(frame=frames, exclude=st.frozensets(st.text(), max_size=5))
def test_frame_envelope_round_trip_property(frame: str | bytes, exclude: frozenset[str]) -> None:
    env = decode_envelope(encode_frame_envelope(frame, exclude))
    assert env.frame == frame
    assert type(env.frame) is type(frame)
    assert env.exclude == exclude
    assert env.channel_name is None and env.control is None


@given(channel=channel_names, frame=frames)
def test_personal_envelope_round_trip_property(channel: str, frame: str | bytes) -> None:
    env = decode_envelope(encode_personal(channel, frame))
    assert env.channel_name == channel
    assert env.frame == frame
    assert type(env.frame) is type(frame)
    assert env.exclude == frozenset()


@given(command=st.dictionaries(st.text(), json_values, max_size=6))
def test_control_envelope_round_trip_property(command: dict[str, object]) -> None:
    env = decode_envelope(encode_control(command))
    assert env.control == command
    assert env.frame is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"?",
        b"z123",
        b"\xff",
        b"t\xff\xfe",  # invalid UTF-8 in a text frame
        b"x",
        b"x\x00\x00",
        b"x\x00\x00\x00\x05[1,2",  # truncated header
        b"x\x00\x00\x00\x03[1]t",  # names that are not strings
        b"x\x00\x00\x00\x02{}t",  # header that is not a list
        b"x\x00\x00\x00\x02[]",  # no frame after the header
        b"x\x00\x00\x00\x02[]qabc",  # unknown frame kind
        b"x\xff\xff\xff\xff[]",  # header size beyond the data
        b"p",
        b"psrv!a",  # no newline
        b"psrv!a\n",  # no frame
        b"psrv!a\nqxyz",
        b"p\xff\nthello",  # channel name not UTF-8
        b"c",
        b"c[1,2]",
        b'c"text"',
        b"cnull",
        b"c{bad json",
        b'c{"a":1}trailing',
        b"c\xff",
    ],
)
def test_malformed_envelopes_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_envelope(data)


@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes_returns_or_raises_value_error(data: bytes) -> None:
    try:
        env = decode_envelope(data)
    except (ValueError, UnicodeDecodeError):
        return
    assert isinstance(env, Envelope)
    assert (env.frame is None) != (env.control is None)


prefixed = st.tuples(st.sampled_from(b"tbxpc"), st.binary(max_size=200)).map(lambda p: bytes([p[0]]) + p[1])
header_like = st.builds(
    lambda header, rest: b"x" + len(header).to_bytes(4, "big") + header + rest,
    st.one_of(json_values.map(orjson.dumps), st.binary(max_size=40)),
    st.binary(max_size=40),
)


@given(st.one_of(prefixed, header_like))
def test_decode_kind_prefixed_bytes_returns_or_raises_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        decode_envelope(data)
