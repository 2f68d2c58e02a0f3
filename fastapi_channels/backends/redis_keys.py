"""Names of every Redis key and pub/sub channel the Redis backend uses, under one prefix.

Pure string building, kept apart so the layout is readable in one place::

    <p>alive:<server>            liveness key, TTL REDIS_REGISTRY_EXPIRY
    <p>servers                   zset server -> liveness deadline (ms): what the scripts read
                                 liveness from (`is_alive`), and how dead servers are found
    <p>srv:<server>:conns        hash channel -> user id ("" if anonymous): the server's connections
    <p>srv:<server>:members      set "<group>|channel": the server's group memberships
    <p>users:<user>              hash server -> the user's connection count there (the slots)
    <p>group:<group>             set of the group's channel names, TTL REDIS_GROUP_EXPIRY
    <p>gsrv:<group>              hash server -> the group's member count there, same TTL
    <p>epoch                     hash id, born, lost, run: the incarnation of all of the above
                                 (run: the Redis process that wrote it, checked behind Sentinel)
    <p>hist:<group>              stream of a history group's positioned frames, ids <offset>-1
    <p>hpos:<group>              hash epoch, offset, cluster: a history group's position (and
                                 the cluster epoch it was written under)
    <p>groups                    zset <group> -> expiry deadline (ms): the cluster's group count
    <p><topic>                   pub/sub channels: group:<g>, user:<u>, inbox:<server>, broadcast
    <p>probe:<server>            pub/sub channel of the server's deafness self-check
    <p>partitions                on a cluster, in the home partition: how many partitions the
                                 servers split the state into (`redis_layout`), so a process
                                 started with another REDIS_CLUSTER_PARTITIONS is refused

On a cluster `<p>` is one hash tag per partition (`redis_layout`): a group's keys and channel
under its partition's, the rest under the home's.

Counts are kept per server so that every check on a connect, join or send path costs
O(servers), and a dead server's share is one field to drop.

Group and user names are any text without control characters (`routing.validate_name`):
':' '|' '*' '%', spaces, other scripts. Wherever one becomes part of a key, a pub/sub channel,
a membership entry or a member of the groups zset (`<group>`, `<user>`, `<g>`, `<u>` above),
it is written as `key_part(name)`: itself when made of `A-Z a-z 0-9 _ . @ + -` (so such
names keep the keys they always had), else percent-escaped UTF-8 (`Café` -> `Caf%C3%A9`,
`a|b` -> `a%7Cb`, `100%` -> `100%25`). The escaped form holds no separator, glob character
or space, and two names never share one (escaping is injective), so no name reaches outside
the prefix or another name's keys; the Lua scripts split a membership entry at its first
'|', which no escaped group holds. Server ids are strict already; channel names (set members
and hash fields, never parsed by a script) are stored as they are.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

__all__ = ["RedisKeys", "key_part", "pubsub_channel"]

_PLAIN: Final = re.compile(r"[A-Za-z0-9_.@+\-]*")


def key_part(name: str) -> str:
    """`name` as it is written inside a key or channel: unchanged when made of
    `A-Z a-z 0-9 _ . @ + -`, else percent-escaped UTF-8 (only those characters and '%')."""
    if _PLAIN.fullmatch(name) is not None:
        return name
    return quote(name, safe="@+").replace("~", "%7E")


def pubsub_channel(prefix: str, topic: str) -> str:
    """The pub/sub channel of a topic (`<kind>:<name>` or `broadcast`): the name escaped."""
    kind, sep, name = topic.partition(":")
    return f"{prefix}{kind}{sep}{key_part(name)}" if sep else prefix + topic


class RedisKeys:
    def __init__(self, prefix: str, server_id: str) -> None:
        self.prefix = prefix
        self.server_id = server_id
        self.alive = f"{prefix}alive:{server_id}"
        self.servers = f"{prefix}servers"
        self.conns = f"{prefix}srv:{server_id}:conns"
        self.members = f"{prefix}srv:{server_id}:members"
        self.groups = f"{prefix}groups"
        self.probe = f"{prefix}probe:{server_id}"
        self.epoch = f"{prefix}epoch"
        self.layout = f"{prefix}partitions"

    def conns_of(self, server_id: str) -> str:
        return f"{self.prefix}srv:{server_id}:conns"

    def alive_of(self, server_id: str) -> str:
        return f"{self.prefix}alive:{server_id}"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}users:{key_part(user_id)}"

    def group(self, group: str) -> str:
        return f"{self.prefix}group:{key_part(group)}"

    def group_servers(self, group: str) -> str:
        return f"{self.prefix}gsrv:{key_part(group)}"

    def history(self, group: str) -> str:
        """The stream of a history group's messages (ids `<offset>-1`), TTL WS_HISTORY_TTL."""
        return f"{self.prefix}hist:{key_part(group)}"

    def history_position(self, group: str) -> str:
        """A history group's epoch and last offset, TTL WS_HISTORY_TTL."""
        return f"{self.prefix}hpos:{key_part(group)}"

    def channel(self, topic: str) -> str:
        return pubsub_channel(self.prefix, topic)

    @staticmethod
    def membership(group: str, channel_name: str) -> str:
        """The entry of this server's memberships set; reap.lua splits it at its first '|'."""
        return f"{key_part(group)}|{channel_name}"
