"""Where each topic's state lives: the partitions of the key space.

On one Redis, or behind Sentinel, there is one partition: the prefix itself. On a Redis
Cluster the state is split over REDIS_CLUSTER_PARTITIONS partitions, each its own hash tag and
so its own slot, so the load spreads over the shards while every script still touches one
slot and stays atomic:

- partition 0, the home, `{<prefix>}`: connections, users (the per-user and total limits),
  inboxes and broadcast, and the groups that hash to it;
- partition i > 0, `{<prefix>#<n>}`: the groups that hash to it, with their history and their
  pub/sub channel.

Each partition keeps the rest of the cluster-state machinery of its own (an epoch, the servers
zset the send scripts read liveness from, each server's memberships for the reaper), so a send,
a join, a reap or a write-back still runs in one partition.

The tags are chosen so that partition i's slot lies in the i-th of K equal slot ranges (the
home keeps its range, wherever `{<prefix>}` falls): on a cluster whose slots were spread evenly
over K masters (`redis-cli --cluster create` does that), each master holds one partition. The
choice depends on nothing but the prefix and K, so every server and emitter agrees on it; K
itself is recorded in the home partition and a process started with another K is refused.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Final

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from fastapi_channels.backends.redis_keys import key_part

__all__ = ["DEFAULT_PARTITIONS", "MAX_PARTITIONS", "Layout", "partition_tags"]

DEFAULT_PARTITIONS: Final = 3
"""REDIS_CLUSTER_PARTITIONS's default: the smallest Redis Cluster has three masters."""
MAX_PARTITIONS: Final = 64
"""Each partition costs every server one pub/sub connection and one heartbeat call a tick."""


def partition_tags(prefix: str, count: int) -> tuple[str, ...]:
    """The hash tag of each of `count` partitions: `prefix` for the home, then for partition
    i > 0 the first `prefix#<n>` whose slot falls in the i-th free range of slots."""
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"between 1 and {MAX_PARTITIONS} partitions, not {count}")
    tags = [prefix]
    span = REDIS_CLUSTER_HASH_SLOTS / count
    home_range = int(key_slot(prefix.encode()) // span)
    ranges = [r for r in range(count) if r != home_range]
    n = 0
    for wanted in ranges:
        while True:
            n += 1
            tag = f"{prefix}#{n}"
            if int(key_slot(tag.encode()) // span) == wanted:
                tags.append(tag)
                break
    return tuple(tags)


@dataclass(frozen=True, slots=True)
class Layout:
    """The key prefix of each partition, and which partition a topic belongs to."""

    prefixes: tuple[str, ...]

    @classmethod
    def single(cls, prefix: str) -> Layout:
        """One Redis (or Sentinel): everything under the prefix as it is."""
        return cls((prefix,))

    @classmethod
    def cluster(cls, prefix: str, partitions: int) -> Layout:
        """A cluster: `partitions` hash tags made from the prefix."""
        return cls(tuple("{" + tag + "}" for tag in partition_tags(prefix, partitions)))

    @property
    def home(self) -> str:
        return self.prefixes[0]

    def __len__(self) -> int:
        return len(self.prefixes)

    def of_group(self, group: str) -> int:
        """The partition of a group's members, history and channel (stable: crc32 of its key part)."""
        if len(self.prefixes) == 1:
            return 0
        return zlib.crc32(key_part(group).encode()) % len(self.prefixes)

    def of_topic(self, topic: str) -> int:
        """A group topic lives with its group; users, inboxes and broadcast at home."""
        kind, _, name = topic.partition(":")
        return self.of_group(name) if kind == "group" else 0
