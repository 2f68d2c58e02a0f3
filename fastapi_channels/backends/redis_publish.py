"""The `publish` script call, as data: who is owed a topic, the call's keys and arguments, its answer.

Pure (no I/O), so every process that sends on Redis builds the same call: a server's
RedisBackend and the emitters of workers and scripts (`fastapi_channels.emitter`). A send is
one call of `scripts/publish.lua` wherever it comes from, and its answer is judged for a
delivery shortfall the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from fastapi_channels.backends.base import Delivery
from fastapi_channels.backends.redis_keys import RedisKeys

__all__ = [
    "PUBLISH_HISTORY_SCRIPT",
    "PUBLISH_SCRIPT",
    "audience",
    "delivery_of",
    "epoch_args",
    "publish_call",
    "publish_history_call",
]

PUBLISH_SCRIPT = "publish"
"""The name `redis_state.load_script` loads the send script by."""
PUBLISH_HISTORY_SCRIPT = "publish_history"
"""The send script of history groups: stores, numbers and publishes in one call."""


def audience(keys: RedisKeys, topic: str) -> tuple[str, str]:
    """The key that says who should hear `topic`, and how publish.lua reads it."""
    kind, _, name = topic.partition(":")
    if kind == "group":
        return keys.group_servers(name), "counts"
    if kind == "user":
        return keys.user(name), "counts"
    if kind == "inbox":
        return keys.alive_of(name), "owner"
    return keys.servers, "servers"


def epoch_args(known: str, resync_window_ms: int) -> list[Any]:
    """The arguments every epoch-aware script takes: the epoch known, a fresh id, the window."""
    return [known, uuid.uuid4().hex[:16], resync_window_ms]


def publish_call(
    keys: RedisKeys, topic: str, payload: bytes, epoch: Sequence[Any], *, exact: bool, connection: str = ""
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of publish.lua for one send of `payload` on `topic`.

    `exact` counts the audience's live connections too (a user send returns that count).
    `connection`, on an inbox topic: the one connection the send is for; the script
    publishes nothing when its owner has no such connection registered.
    """
    key, kind = audience(keys, topic)
    call_keys = [keys.epoch, key, keys.servers]
    args = [keys.channel(topic), payload, kind, keys.prefix, *epoch, "1" if exact else "0"]
    if connection and kind == "owner":
        call_keys.append(keys.conns_of(topic.partition(":")[2]))
        args.append(connection)
    return call_keys, args


def publish_history_call(
    keys: RedisKeys,
    group: str,
    outer: bytes,
    inner: bytes,
    body: str,
    epoch: Sequence[Any],
    *,
    size: int,
    ttl: int,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of publish_history.lua: store `body` (a JSON object's text) as the group's
    next message and publish it, `outer` before its positions and `inner` after them."""
    topic = "group:" + group
    key, kind = audience(keys, topic)
    return (
        [keys.epoch, key, keys.history(group), keys.history_position(group), keys.servers],
        [
            keys.channel(topic),
            outer,
            inner,
            body,
            kind,
            keys.prefix,
            *epoch,
            size,
            ttl,
            uuid.uuid4().hex[:16],
        ],
    )


def delivery_of(answer: Sequence[Any]) -> tuple[Delivery, str]:
    """The answer of either script, `{reached, expected, connections, epoch, ...}`, as a
    Delivery and the cluster epoch."""
    reached, expected, connections, epoch = answer[:4]
    owed = int(expected)
    value = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
    return Delivery(int(reached), None if owed < 0 else owed, int(connections)), value
