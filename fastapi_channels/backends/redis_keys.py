"""Names of every Redis key and pub/sub channel the Redis backend uses, under one prefix.

Pure string building, kept apart so the layout is readable in one place::

    <p>alive:<server>            liveness key, TTL REDIS_REGISTRY_EXPIRY
    <p>servers                   zset server -> liveness deadline (ms); how dead servers are found
    <p>srv:<server>:conns        hash channel -> user id ("" if anonymous): the server's connections
    <p>srv:<server>:members      set "group|channel": the server's group memberships
    <p>users:<user>              hash server -> the user's connection count there (the slots)
    <p>group:<group>             set of the group's channel names, TTL REDIS_GROUP_EXPIRY
    <p>gsrv:<group>              hash server -> the group's member count there, same TTL
    <p>epoch                     hash id, born, lost: the incarnation of all of the above
    <p>groups                    zset group -> expiry deadline (ms): the cluster's group count
    <p><topic>                   pub/sub channels: group:<g>, user:<u>, inbox:<server>, broadcast
    <p>probe:<server>            pub/sub channel of the server's deafness self-check

Counts are kept per server so that every check on a connect, join or send path costs
O(servers), and a dead server's share is one field to drop. Every variable part is a
validated name (no '|', ':' or '*'), so keys cannot collide or reach outside the prefix.
"""

from __future__ import annotations

__all__ = ["RedisKeys"]


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

    def alive_of(self, server_id: str) -> str:
        return f"{self.prefix}alive:{server_id}"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}users:{user_id}"

    def group(self, group: str) -> str:
        return f"{self.prefix}group:{group}"

    def group_servers(self, group: str) -> str:
        return f"{self.prefix}gsrv:{group}"

    def channel(self, topic: str) -> str:
        return self.prefix + topic

    @staticmethod
    def membership(group: str, channel_name: str) -> str:
        return f"{group}|{channel_name}"
