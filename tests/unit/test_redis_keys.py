"""The Redis key layout: every name is escaped inside it, so keys stay unambiguous and safe.

Group and user names may hold any text without control characters (`routing.validate_name`):
':' '|' '*' '%' spaces, other scripts. Inside a key or a pub/sub channel each name is
percent-escaped to `A-Z a-z 0-9 _ . @ + - %`, so no name can look like a separator, a glob
pattern or another name's key; names already made of those characters (minus '%') keep their
keys as they were.
"""

from __future__ import annotations

import re
import string
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapi_channels.backends.redis_keys import RedisKeys, key_part
from fastapi_channels.routing import MAX_NAME_LENGTH, group_topic, inbox_topic, user_topic

PREFIX = "ws:"
SERVER = "server-0123456789ab"
KEYS = RedisKeys(PREFIX, SERVER)

SAFE_PART = re.compile(r"[A-Za-z0-9_.@+\-%]+")
FORBIDDEN = ("Cc", "Cs", "Zl", "Zp")
names = st.text(
    alphabet=st.characters(exclude_categories=FORBIDDEN), min_size=1, max_size=MAX_NAME_LENGTH
).filter(lambda s: not s[0].isspace() and not s[-1].isspace())

STRICT = string.ascii_letters + string.digits + "_.@+-"


def name_keys(name: str) -> list[str]:
    """Every key and channel the layout builds from a group or user name."""
    return [
        KEYS.group(name),
        KEYS.group_servers(name),
        KEYS.user(name),
        KEYS.channel(group_topic(name)),
        KEYS.channel(user_topic(name)),
    ]


@given(st.text(alphabet=STRICT, min_size=1, max_size=MAX_NAME_LENGTH))
def test_names_of_the_strict_alphabet_keep_their_keys(name: str) -> None:
    assert key_part(name) == name
    assert KEYS.group(name) == f"{PREFIX}group:{name}"
    assert KEYS.user(name) == f"{PREFIX}users:{name}"
    assert KEYS.channel(group_topic(name)) == f"{PREFIX}group:{name}"
    assert KEYS.membership(name, f"{SERVER}!tok") == f"{name}|{SERVER}!tok"


@given(names)
def test_a_name_is_escaped_to_safe_characters_and_comes_back(name: str) -> None:
    part = key_part(name)
    assert SAFE_PART.fullmatch(part), part
    assert unquote(part, errors="strict") == name  # one name, one spelling: injective
    for key in name_keys(name):
        assert key.startswith(PREFIX)
        kind, sep, rest = key[len(PREFIX) :].partition(":")
        assert sep and kind in {"group", "gsrv", "users", "user"}, key
        assert rest == part, key


@given(names, names)
def test_different_names_never_share_a_key(first: str, second: str) -> None:
    if first != second:
        assert not set(name_keys(first)) & set(name_keys(second))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("a b", "a%20b"),  # a name and its escaped spelling
        ("100%", "100%25"),
        ("x:y", "x%3Ay"),
        ("room*", "room%2A"),
        ("Café", "Caf%C3%A9"),
    ],
)
def test_a_name_and_its_escaped_spelling_get_different_keys(first: str, second: str) -> None:
    assert not set(name_keys(first)) & set(name_keys(second))


def test_names_that_collide_under_naive_concatenation_get_different_keys() -> None:
    # "<group>|<channel>": a '|' inside the group name would move the split.
    assert KEYS.membership("a|b", f"{SERVER}!c") != KEYS.membership("a", f"b|{SERVER}!c")
    # "<kind>:<name>": a user named like a group's key, or a group named like a user's key.
    assert KEYS.user("x") != KEYS.user("users:x") and KEYS.group("x") != KEYS.group("group:x")
    assert KEYS.channel(group_topic("user:x")) != KEYS.channel(user_topic("x"))
    assert KEYS.channel(group_topic("a")) != KEYS.channel(group_topic("a:b"))


@given(group=names, token=names)
def test_a_membership_entry_splits_at_its_first_bar_as_reap_lua_does(group: str, token: str) -> None:
    channel = f"{SERVER}!{token}"
    entry = KEYS.membership(group, channel)
    # reap.lua: string.match(entry, '^(.-)|(.*)$')
    match = re.fullmatch(r"(.*?)\|(.*)", entry, flags=re.DOTALL)
    assert match is not None
    assert match.group(1) == key_part(group)
    assert match.group(2) == channel


def test_server_keys_and_fixed_channels_are_unchanged() -> None:
    assert KEYS.alive == f"{PREFIX}alive:{SERVER}"
    assert KEYS.conns == f"{PREFIX}srv:{SERVER}:conns"
    assert KEYS.members == f"{PREFIX}srv:{SERVER}:members"
    assert KEYS.channel(inbox_topic(SERVER)) == f"{PREFIX}inbox:{SERVER}"
    assert KEYS.channel("broadcast") == f"{PREFIX}broadcast"
