"""ClusterState: what the servers of a cluster know of each other, kept in Redis by Lua scripts.

Connection slots, group memberships, liveness and the epoch of that state. Every script on
a connect, join or send path costs O(servers) at most, never O(members): counts are kept per
server as they change. This server's own entries are mirrored here so they can be written
back, under the same limits, when Redis loses them.

Not for pub/sub: `redis_reader` listens, the backend publishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from fastapi_channels.backends.base import Admission
from fastapi_channels.backends.redis_keys import RedisKeys, key_part

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["ClusterState"]

logger = logging.getLogger(__name__)

_SCRIPTS = (
    "add_connection",
    "remove_connection",
    "count_connections",
    "sum_live",
    "live_servers",
    "group_add",
    "group_discard",
    "count_groups",
    "heartbeat",
    "reap",
    "refresh_groups",
    "publish",
    "publish_history",
    "read_history",
)
_REAP_BATCH = 500
_REAP_ROUNDS_PER_TICK = 20
_REFRESH_CHUNK = 500
_REASSERT_CHUNK = 500
MAX_PENDING_REMOVALS = 100_000
_T = TypeVar("_T")
_ADMISSION = {
    0: Admission.ACCEPTED,
    1: Admission.USER_LIMIT,
    2: Admission.TOTAL_LIMIT,
    3: Admission.UNVERIFIED,
}


def load_script(name: str, *, sharded: bool = False) -> str:
    """A script's source, with the shared helpers (`_lib.lua`) in front of it. `sharded`: it
    publishes with SPUBLISH (a cluster's sharded pub/sub, in the slot of the script's keys)."""
    folder = resources.files("fastapi_channels.backends") / "scripts"
    source = (folder / "_lib.lua").read_text() + (folder / f"{name}.lua").read_text()
    return source.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',") if sharded else source


class ClusterState:
    """The cluster-state scripts of one server, and the mirror of its own entries."""

    def __init__(
        self,
        keys: RedisKeys,
        *,
        registry_expiry: int,
        group_expiry: int,
        resync_window: float,
        check_writer: bool = False,
        sharded: bool = False,
    ) -> None:
        """`check_writer`: have the heartbeat check that the Redis process serving the state is
        the one that wrote it (Sentinel or a cluster: a promoted replica may lack the last
        writes). `sharded`: the send scripts publish with SPUBLISH (a cluster)."""
        self.keys = keys
        self.check_writer = check_writer
        self.sharded = sharded
        self.registry_expiry = registry_expiry
        self.group_expiry = group_expiry
        self.resync_window_ms = int(resync_window * 1000)
        self.epoch = ""  # the epoch of the state this server last wrote or read
        self.epoch_changes = 0
        self.epoch_changed_at = 0.0  # monotonic time this server last learned Redis lost the state
        self.rewrites = 0
        self.trusted = True  # False while Redis's state may still be being written back
        self.rewrite_needed = False  # set when Redis lost this server's state; cleared by a write-back
        # Removals Redis did not confirm (it failed mid-call): retried by the keeper, so a
        # released slot or membership never stays counted. Key: ("conn", channel) or
        # ("member", group, channel); value: the user id of a connection.
        self.pending_removals: dict[tuple[str, ...], str] = {}
        self.removal_retries = 0
        self.limits: tuple[int, int] = (2**31, 2**31)  # per user, total: set by add_connection
        self.conns: dict[str, str] = {}  # channel -> user id ("" if anonymous)
        self.memberships: set[tuple[str, str]] = set()
        # Adds under way (their script may have run before the mirror holds them): a write-back
        # never takes them for leftovers.
        self._adding: dict[str, int] = {}
        self._joining: dict[tuple[str, str], int] = {}
        self.pruned = 0  # leftovers a write-back removed (entries Redis held and this server did not)
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._last_group_refresh = 0.0

    def bind(self, client: Redis) -> None:
        self._client = client
        self._scripts = {
            name: client.register_script(load_script(name, sharded=self.sharded)) for name in _SCRIPTS
        }

    @property
    def client(self) -> Redis:
        assert self._client is not None, "ClusterState.bind() first"
        return self._client

    def script(self, name: str) -> AsyncScript:
        return self._scripts[name]

    def epoch_args(self) -> list[Any]:
        """The arguments every epoch-aware script takes: known epoch, a fresh id, the window."""
        return [self.epoch, uuid.uuid4().hex[:16], self.resync_window_ms]

    def learn_epoch(self, epoch: bytes | str) -> bool:
        """Record the epoch a script answered with; True when it is not the one we knew."""
        value = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        changed = bool(self.epoch) and value != self.epoch
        if changed:
            self.epoch_changes += 1
            self.epoch_changed_at = time.monotonic()
            if self.conns or self.memberships:
                self.rewrite_needed = True
            logger.error("Redis lost the cluster state (epoch %s -> %s)", self.epoch, value)
        self.epoch = value
        return changed

    # --- connections ---------------------------------------------------------------------------
    async def add_connection(
        self, channel_name: str, user_id: str | None, *, max_per_user: int, max_total: int
    ) -> Admission:
        self.limits = (max_per_user, max_total)
        with _under_way(self._adding, channel_name):
            admission = await self._admit(channel_name, user_id or "", "new")
            if admission is Admission.ACCEPTED:
                self.conns[channel_name] = user_id or ""
                # A new connection with this name: the old one's leftover is replaced by the script.
                self.pending_removals.pop(("conn", channel_name), None)
        return admission

    def _admit_call(self, channel_name: str, user: str, mode: str) -> tuple[list[Any], list[Any]]:
        keys = self.keys
        max_per_user, max_total = self.limits
        return (
            [keys.servers, keys.user(user) if user else keys.conns, keys.conns, keys.epoch],
            [
                keys.server_id,
                channel_name,
                key_part(user),  # stored in the connection hash; scripts build `users:<user>` from it
                max_per_user,
                max_total,
                keys.prefix,
                *self.epoch_args(),
                mode,
            ],
        )

    async def _admit(self, channel_name: str, user: str, mode: str) -> Admission:
        code, epoch = await self._scripts["add_connection"](*self._admit_call(channel_name, user, mode))
        self.learn_epoch(epoch)
        return _ADMISSION[int(code)]

    async def remove_connection(self, channel_name: str, user_id: str | None) -> None:
        user = user_id or ""
        self.conns.pop(channel_name, None)
        try:
            await self._remove_connection(channel_name, user)
        except Exception:
            self._remember(("conn", channel_name), user)
            raise

    async def _remove_connection(self, channel_name: str, user: str) -> None:
        keys = self.keys
        await self._scripts["remove_connection"](
            keys=[keys.user(user) if user else keys.conns, keys.conns],
            args=[channel_name, user, keys.server_id],
        )

    def _remember(self, removal: tuple[str, ...], user: str = "") -> None:
        if len(self.pending_removals) >= MAX_PENDING_REMOVALS:
            logger.error(
                "%d removals wait for Redis already: %r is left behind", len(self.pending_removals), removal
            )
            return
        self.pending_removals[removal] = user

    async def retry_removals(self) -> None:
        """Apply the removals Redis did not confirm (the keeper calls this every tick)."""
        for removal, user in list(self.pending_removals.items()):
            if removal[0] == "conn":
                await self._remove_connection(removal[1], user)
            else:
                await self._group_discard(removal[1], removal[2])
            self.pending_removals.pop(removal, None)
            self.removal_retries += 1

    async def count_connections(self) -> int:
        return int(
            await self._scripts["count_connections"](keys=[self.keys.servers], args=[self.keys.prefix])
        )

    async def count_user_connections(self, user_id: str) -> int:
        return int(await self._scripts["sum_live"](keys=[self.keys.user(user_id)], args=[self.keys.prefix]))

    # --- groups --------------------------------------------------------------------------------
    async def group_add(
        self,
        group: str,
        channel_name: str,
        *,
        max_groups: int,
        count_others: Callable[[], Awaitable[int]] | None = None,
    ) -> bool:
        """`count_others` counts the groups of the other partitions (a cluster): asked only
        when the group is new here, so joining a group that exists stays one call."""
        self.pending_removals.pop(("member", group, channel_name), None)
        with _under_way(self._joining, (group, channel_name)):
            added = await self._group_add(group, channel_name, max_groups, -1 if count_others else 0)
            if added < 0 and count_others is not None:
                added = await self._group_add(group, channel_name, max_groups, await count_others())
            if added > 0:
                self.memberships.add((group, channel_name))
        return added > 0

    def _group_add_call(
        self, group: str, channel_name: str, max_groups: int, others: int = 0
    ) -> tuple[list[Any], list[Any]]:
        keys = self.keys
        return (
            [keys.group(group), keys.groups, keys.members, keys.group_servers(group)],
            [
                key_part(group),  # the groups zset holds escaped names, as reap.lua finds them
                channel_name,
                max_groups,
                self.group_expiry,
                keys.membership(group, channel_name),
                keys.server_id,
                others,
            ],
        )

    async def _group_add(self, group: str, channel_name: str, max_groups: int, others: int) -> int:
        """1 added, 0 refused (max_groups), -1 a new group and `others` was -1 (count them)."""
        call = self._group_add_call(group, channel_name, max_groups, others)
        return int(await self._scripts["group_add"](*call))

    async def group_discard(self, group: str, channel_name: str) -> None:
        self.memberships.discard((group, channel_name))
        try:
            await self._group_discard(group, channel_name)
        except Exception:
            self._remember(("member", group, channel_name))
            raise

    async def _group_discard(self, group: str, channel_name: str) -> None:
        keys = self.keys
        await self._scripts["group_discard"](
            keys=[keys.group(group), keys.groups, keys.members, keys.group_servers(group)],
            args=[key_part(group), channel_name, keys.membership(group, channel_name), keys.server_id],
        )

    async def group_members(self, group: str) -> set[str]:
        # Listing is O(members) by nature: done here, so Redis only answers two cheap reads.
        members = await self.client.smembers(self.keys.group(group))
        if not members:
            return set()
        live = {
            s.decode()
            for s in await self._scripts["live_servers"](keys=[self.keys.servers], args=[self.keys.prefix])
        }
        names = {m.decode() if isinstance(m, bytes) else str(m) for m in members}
        return {name for name in names if name.partition("!")[0] in live}

    async def group_size(self, group: str) -> int:
        return int(
            await self._scripts["sum_live"](keys=[self.keys.group_servers(group)], args=[self.keys.prefix])
        )

    async def count_groups(self) -> int:
        return int(await self._scripts["count_groups"](keys=[self.keys.groups]))

    # --- liveness, reaping, writing back ---------------------------------------------------------
    async def heartbeat(self) -> bool:
        """Refresh liveness; True when this server's state had to be written back."""
        keys = self.keys
        existed, epoch, trusted = await self._scripts["heartbeat"](
            keys=[keys.alive, keys.servers, keys.epoch],
            args=[
                self.registry_expiry,
                keys.server_id,
                *self.epoch_args(),
                "1" if self.check_writer else "0",
            ],
        )
        self.trusted = bool(int(trusted))
        self.learn_epoch(epoch)
        if not existed and (self.conns or self.memberships):
            self.rewrite_needed = True
        return self.rewrite_needed

    async def rewrite(self) -> list[tuple[str, Admission]]:
        """Write this server's connections and memberships back, under the limits, and remove
        what Redis holds of this server's that the server does not.

        Returns the connections that no longer fit (their user is at the limit on other
        servers, which wrote their state back first): the caller closes them.
        """
        self.rewrites += 1
        logger.warning(
            "writing %d connections and %d memberships back to Redis", len(self.conns), len(self.memberships)
        )
        await self._prune()
        refused: list[tuple[str, Admission]] = []
        conns = list(self.conns.items())
        for start in range(0, len(conns), _REASSERT_CHUNK):
            chunk = conns[start : start + _REASSERT_CHUNK]
            calls = [self._admit_call(channel, user, "reassert") for channel, user in chunk]
            answers = await self._batch("add_connection", calls)
            for (channel, _), (code, epoch) in zip(chunk, answers, strict=True):
                self.learn_epoch(epoch)
                admission = _ADMISSION[int(code)]
                if admission is not Admission.ACCEPTED:
                    refused.append((channel, admission))
        dropped = {channel for channel, _ in refused}
        for channel in dropped:
            self.conns.pop(channel, None)
        memberships = [m for m in self.memberships if m[1] not in dropped]
        for start in range(0, len(memberships), _REASSERT_CHUNK):
            # Memberships held before the loss are kept whatever MAX_TOTAL_GROUPS says.
            await self._batch(
                "group_add",
                [
                    self._group_add_call(group, channel, 2**31)
                    for group, channel in memberships[start : start + _REASSERT_CHUNK]
                ],
            )
        # A connection closed (or a membership dropped) while this ran was just written back:
        # remove it again, so the last word is the one that matches this server.
        for channel, user in conns:
            if channel not in self.conns and channel not in dropped:
                await self.remove_connection(channel, user)
        for group, channel in memberships:
            if (group, channel) not in self.memberships:
                await self.group_discard(group, channel)
        self.rewrite_needed = False
        return refused

    async def _batch(self, name: str, calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
        """Run one script for many (keys, args), in one round trip where Redis allows it.

        One Redis: a pipeline. A cluster client refuses EVALSHA in a pipeline, so there the
        calls go concurrently, as many at a time as the client has connections.
        """
        script = self._scripts[name]
        if self.sharded:
            return list(await asyncio.gather(*(script(keys=keys, args=args) for keys, args in calls)))
        async with self.client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())

    async def _prune(self) -> None:
        """Remove this server's entries that Redis holds and this server does not.

        An emptied Redis holds none; a replica promoted by Sentinel may: a close or a leave the
        old master confirmed and never passed on. Left there, it would hold a user's slot, or
        make every send to the group a false shortfall, for the server's whole life.
        """
        keys = self.keys
        client = self.client
        conns = [
            (_text(channel), unquote(_text(user)))  # the hash holds the user as a key part
            async for channel, user in client.hscan_iter(keys.conns, count=_REASSERT_CHUNK)
        ]
        for channel, user in conns:
            if channel not in self.conns and channel not in self._adding:
                await self._remove_connection(channel, user)
                self.pruned += 1
        entries = [_text(entry) async for entry in client.sscan_iter(keys.members, count=_REASSERT_CHUNK)]
        for entry in entries:
            part, _, channel = entry.partition("|")
            membership = (unquote(part), channel)
            if membership not in self.memberships and membership not in self._joining:
                await self._group_discard(*membership)
                self.pruned += 1

    async def reap(self) -> None:
        reap = self._scripts["reap"]
        for _ in range(_REAP_ROUNDS_PER_TICK):
            if not await reap(
                keys=[self.keys.servers, self.keys.groups], args=[self.keys.prefix, _REAP_BATCH]
            ):
                return

    async def refresh_groups_if_due(self) -> None:
        now = time.monotonic()
        # A quarter: due at every tick when ticks are a third of the life (a late tick then
        # still finds it due, where a third would let it slip to the tick after).
        if now - self._last_group_refresh >= max(0.5, self.group_expiry / 4):
            await self.refresh_groups()
            self._last_group_refresh = now

    async def refresh_groups(self) -> None:
        """Push back the expiry of every group this server has members in. A group that had
        expired already (the keeper was late: a stalled loop, a slow Redis) gets this server's
        memberships written back, or its sends would be owed to nobody here."""
        groups = sorted({key_part(group) for group, _ in self.memberships})
        script = self._scripts["refresh_groups"]
        gone: set[str] = set()
        for start in range(0, len(groups), _REFRESH_CHUNK):
            chunk = groups[start : start + _REFRESH_CHUNK]
            answer = await script(
                keys=[self.keys.groups],
                args=[self.keys.prefix, self.group_expiry, self.keys.server_id, *chunk],
            )
            gone.update(_text(part) for part in answer)
        if not gone:
            return
        memberships = [(group, channel) for group, channel in self.memberships if key_part(group) in gone]
        logger.warning(
            "%d groups expired in Redis with members here (the refresh came late): writing %d "
            "memberships back",
            len(gone),
            len(memberships),
        )
        for start in range(0, len(memberships), _REASSERT_CHUNK):
            # Held already: written back whatever MAX_TOTAL_GROUPS says, as after a loss.
            batch = memberships[start : start + _REASSERT_CHUNK]
            await self._batch(
                "group_add", [self._group_add_call(group, channel, 2**31) for group, channel in batch]
            )
        # A leave while this ran may have been written back: remove it again (as `rewrite`).
        for group, channel in memberships:
            if (group, channel) not in self.memberships:
                await self.group_discard(group, channel)

    async def retire(self) -> None:
        """Leave nothing behind: mark this server dead now and reap its entries."""
        keys = self.keys
        await self.client.delete(keys.alive)
        await self.client.zadd(keys.servers, {keys.server_id: 0})
        for _ in range(1000):
            if not await self._scripts["reap"](
                keys=[keys.servers, keys.groups], args=[keys.prefix, _REAP_BATCH]
            ):
                break
        await self.client.zrem(keys.servers, keys.server_id)

    def clear(self) -> None:
        self.conns.clear()
        self.memberships.clear()
        self.epoch = ""


@contextmanager
def _under_way(counts: dict[_T, int], item: _T) -> Iterator[None]:
    """Count `item` as under way for the block (two adds of one name may overlap)."""
    counts[item] = counts.get(item, 0) + 1
    try:
        yield
    finally:
        left = counts[item] - 1
        if left:
            counts[item] = left
        else:
            del counts[item]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
