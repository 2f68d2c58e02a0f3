"""RedisBackend: many server processes sharing one Redis behave like one server.

One pub/sub connection per process and per partition (`redis_layout`: one on one Redis, one
per hash tag on a cluster) carries every topic this server needs there (its groups, users,
inbox, broadcast): `redis_reader` owns it, `redis_partition` keeps it with that partition's
state. A send is one script call whatever the
group's size, and it answers how many servers got the message against how many have
members of its topic, so a send that reached fewer is never a silent success. Cluster state
(slots, memberships, liveness, its epoch) lives in `redis_state`'s scripts; a killed server's
entries are reaped by the survivors once its liveness key expires.

Failure handling is part of the design: the reader reconnects at once and then with a short
backoff, subscribes every wanted topic again and writes this server's state back (under the
limits) when Redis lost it; a probe through its own channel catches a subscription that went
deaf without an error; outages are reported to a listener.
Needs Redis >= 6.2: one server, or a master behind Redis Sentinel, or Redis >= 7 in a cluster
(`redis_connect` builds the client; after a failover the reader's reconnect reaches the new
master).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from fastapi_channels import routing
from fastapi_channels.backends.base import Admission, BaseBackend, Delivery, MessageHandler
from fastapi_channels.backends.redis_connect import RedisTarget, async_client
from fastapi_channels.backends.redis_keys import RedisKeys
from fastapi_channels.backends.redis_layout import DEFAULT_PARTITIONS, Layout
from fastapi_channels.backends.redis_partition import Partition
from fastapi_channels.backends.redis_publish import delivery_of, publish_call, publish_history_call
from fastapi_channels.backends.redis_reader import PubSubReader
from fastapi_channels.backends.redis_state import ClusterState
from fastapi_channels.exceptions import BackendError
from fastapi_channels.history import HistoryEntry, HistoryRead
from fastapi_channels.redact import redact_url

if TYPE_CHECKING:
    from fastapi_channels.config import WSConfig

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

RESYNC_WINDOW = 2.0
"""Seconds after Redis lost its data during which every server is expected to have written
its state back; until then sends cannot be verified and new connections wait."""
REDIS_POOL_SIZE = 32
"""Connections to Redis per server for commands (the pub/sub reader has one more of its own)."""


class RedisBackend(BaseBackend):
    name = "redis"

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "ws:",
        registry_expiry: int = 30,
        group_expiry: int = 86400,
        reconnect_attempts: int = 5,
        reconnect_delay: float = 5.0,
        self_check_interval: float | None = None,
        resync_window: float = RESYNC_WINDOW,
        target: RedisTarget | None = None,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> None:
        """`target` says how to reach Redis (a sentinel-managed master, a cluster, ...); without
        it, the one Redis at `url`. `partitions`: how many slots a cluster's state is split
        over (`redis_layout`); one Redis has one."""
        super().__init__()
        self.target = target if target is not None else RedisTarget(url)
        self.url = self.target.url
        self.layout = Layout.cluster(prefix, partitions) if self.target.sharded else Layout.single(prefix)
        self.prefix = self.layout.home
        self.registry_expiry = registry_expiry
        self.group_expiry = group_expiry
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay = reconnect_delay
        self.resync_window = resync_window
        # The keeper's period: liveness and group refresh, reaping and the deafness probe (a
        # third of either life at most, so each is refreshed twice or more before it ends).
        self.tick = (
            self_check_interval
            if self_check_interval is not None
            else max(0.5, min(2.0, registry_expiry / 3, group_expiry / 3))
        )
        self.server_id = ""
        self._client: Redis | None = None
        self._handler: MessageHandler | None = None
        self.partitions = self._new_partitions("")
        self._keeper: asyncio.Task[None] | None = None
        self._down: set[int] = set()  # partitions whose reader is not confirmed since it was lost
        self.outages = 0
        self.misconfigured: str | None = None  # another partition count met while running

    def _new_partitions(self, server_id: str) -> list[Partition]:
        return [
            Partition(
                index,
                RedisKeys(prefix, server_id),
                registry_expiry=self.registry_expiry,
                group_expiry=self.group_expiry,
                resync_window=self.resync_window,
                tick=self.tick,
                # Behind Sentinel or in a cluster a promoted replica may lack the old master's
                # last writes: the heartbeat then finds another Redis process under the state
                # and treats it as lost.
                check_writer=self.target.mode != "standalone",
                sharded=self.target.sharded,
                # Groups only: a reader there is opened at the first join into one of them.
                lazy=index > 0,
            )
            for index, prefix in enumerate(self.layout.prefixes)
        ]

    @classmethod
    def from_config(cls, config: WSConfig) -> RedisBackend:
        return cls(
            config.REDIS_URL,
            prefix=config.REDIS_CHANNEL_PREFIX,
            registry_expiry=config.REDIS_REGISTRY_EXPIRY,
            group_expiry=config.REDIS_GROUP_EXPIRY,
            reconnect_attempts=config.WS_RECONNECT_MAX_ATTEMPTS,
            reconnect_delay=config.WS_RECONNECT_DELAY,
            target=RedisTarget.from_config(config),
            partitions=config.REDIS_CLUSTER_PARTITIONS,
        )

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise BackendError("the Redis backend is not started", error_code="BACKEND_NOT_STARTED")
        return self._client

    # The home partition's parts: all there is on one Redis.
    @property
    def home(self) -> Partition:
        return self.partitions[0]

    @property
    def keys(self) -> RedisKeys:
        return self.home.keys

    @property
    def state(self) -> ClusterState:
        return self.home.state

    @property
    def reader(self) -> PubSubReader | None:
        return self.home.reader

    @property
    def state_rewrites(self) -> int:
        return sum(partition.state.rewrites for partition in self.partitions)

    @property
    def deaf_repairs(self) -> int:
        return sum(partition.deaf_repairs for partition in self.partitions)

    @property
    def pubsub_lag(self) -> float | None:  # type: ignore[override]
        """The slowest partition's last probe round trip."""
        lags = [p.pubsub_lag for p in self.partitions if p.pubsub_lag is not None]
        return max(lags) if lags else None

    def _partition_of(self, topic: str) -> Partition:
        return self.partitions[self.layout.of_topic(topic)]

    def _group_partition(self, group: str) -> Partition:
        return self.partitions[self.layout.of_group(group)]

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, server_id: str, on_message: MessageHandler) -> None:
        self.server_id = server_id
        self.partitions = self._new_partitions(server_id)
        self._down.clear()
        self._handler = on_message
        # A bounded pool that makes callers wait for a free connection (up to 10 s) instead of
        # failing when a burst of connects or closes all need Redis at once. No automatic
        # retries: a retried PUBLISH could deliver twice; failures surface as BackendError.
        # Everything here is created on the running loop, so a backend can be started again on
        # another loop after stop().
        # In sentinel mode every new connection (the reader's too) asks the sentinels for the
        # master, so connections made after a failover reach the promoted replica.
        self._client = async_client(
            self.target,
            max_connections=REDIS_POOL_SIZE,
            timeout=10,
            socket_connect_timeout=5,
            socket_timeout=10,
        )
        try:
            await self._connect_with_retries()
            await self._check_layout()
            for partition in self.partitions:
                await partition.start(self._client, self._deliver, self._on_reader_event)
        except BaseException:
            for partition in self.partitions:
                await partition.stop()
            await self._close_client()
            raise
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep_loop(), name="fastapi-channels-redis-keeper"
        )

    async def _check_layout(self) -> None:
        """On a cluster, record how many partitions the state is split into, or refuse to
        start with another count than the servers already running: a group would be looked
        for in the wrong slot, and a send to it would reach nobody without a shortfall."""
        if len(self.layout) == 1 and not self.target.sharded:
            return
        count = str(len(self.layout))
        # It lives while servers do (REDIS_REGISTRY_EXPIRY after the last one stopped), so the
        # count can be changed by stopping them all.
        answer = await self.client.set(self.keys.layout, count, nx=True, get=True, ex=self.registry_expiry)
        recorded = None if answer is None else _text(answer)  # type: ignore[arg-type]
        if recorded == count:
            await self.client.expire(self.keys.layout, self.registry_expiry)
        elif recorded is not None:
            raise BackendError(
                f"the servers on {self.target.describe()} split their state into {recorded} "
                f"partitions, this one into {count}: set REDIS_CLUSTER_PARTITIONS={recorded} "
                "(to change it, stop every server: the record expires REDIS_REGISTRY_EXPIRY s "
                "after the last)",
                error_code="BACKEND_MISCONFIGURED",
                retryable=False,
            )

    async def _connect_with_retries(self) -> None:
        # WS_RECONNECT_MAX_ATTEMPTS counts every attempt, the first included (0 still makes one).
        attempts = max(1, self.reconnect_attempts)
        shown = self.target.describe()
        for attempt in range(1, attempts + 1):
            try:
                await self.client.ping()
            except Exception as exc:
                mismatch = await self._topology_mismatch(reachable=False)
                if mismatch is not None:
                    raise BackendError(mismatch, error_code="BACKEND_MISCONFIGURED", retryable=False) from exc
                if attempt == attempts:
                    raise BackendError(
                        f"Redis at {shown} unreachable after {attempts} attempts: {type(exc).__name__}",
                        error_code="BACKEND_UNAVAILABLE",
                        component="redis",
                    ) from exc
                logger.warning(
                    "Redis at %s unreachable (attempt %d/%d): %s; retrying in %.1fs",
                    shown,
                    attempt,
                    attempts,
                    type(exc).__name__,
                    self.reconnect_delay,
                )
                await asyncio.sleep(self.reconnect_delay)
            else:
                mismatch = await self._topology_mismatch(reachable=True)
                if mismatch is not None:
                    raise BackendError(mismatch, error_code="BACKEND_MISCONFIGURED", retryable=False)
                return

    async def _topology_mismatch(self, *, reachable: bool) -> str | None:
        """Why the Redis at REDIS_URL does not fit REDIS_MODE, as Redis itself says (INFO
        cluster), else None. A cluster node taken for one Redis would answer MOVED to most
        keys; one Redis taken for a cluster refuses the cluster client at once. Either is a
        setting to fix, not an outage to retry."""
        if self.target.mode == "cluster":
            if reachable:
                return None
            plain = async_client(RedisTarget(self.target.url), max_connections=1, timeout=2)
            try:
                enabled = (await plain.info("cluster")).get("cluster_enabled")
            except Exception:
                return None  # unreachable: an outage after all
            finally:
                await plain.aclose()
            if enabled == 0:
                return (
                    f"REDIS_MODE=cluster, but {redact_url(self.target.url)} is not a Redis Cluster "
                    "node (cluster mode is not enabled): set REDIS_MODE=standalone"
                )
            return None
        if reachable and (await self.client.info("cluster")).get("cluster_enabled") == 1:
            return f"{self.target.describe()} is a Redis Cluster node: set REDIS_MODE=cluster"
        return None

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keeper
        self._keeper = None
        for partition in self.partitions:
            await partition.stop()
        if self._client is not None:
            for partition in self.partitions:
                await partition.retire()
        await self._close_client()
        for partition in self.partitions:
            partition.state.clear()
        self._handler = None

    async def _close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    # --- topics --------------------------------------------------------------------------------
    def publish_call(
        self, topic: str, payload: bytes, *, exact: bool, connection: str = ""
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of a send's `publish` call: in the topic's partition (an emitter's
        is the same, `redis_publish.publish_call` on the same layout)."""
        partition = self._partition_of(topic)
        epoch = partition.state.epoch_args()
        return publish_call(partition.keys, topic, payload, epoch, exact=exact, connection=connection)

    async def _publish(self, topic: str, payload: bytes, *, exact: bool, connection: str = "") -> Delivery:
        partition = self._partition_of(topic)
        state = partition.state
        keys, args = self.publish_call(topic, payload, exact=exact, connection=connection)
        answer = await state.script("publish")(keys=keys, args=args)
        delivery, epoch = delivery_of(answer)
        if state.learn_epoch(epoch):
            partition.schedule_rewrite(self._evict)
        return delivery

    async def publish(self, topic: str, payload: bytes) -> Delivery:
        return await self._publish(topic, payload, exact=False)

    async def publish_personal(self, topic: str, channel_name: str, payload: bytes) -> Delivery:
        return await self._publish(topic, payload, exact=False, connection=channel_name)

    async def publish_history(
        self, topic: str, group: str, outer: bytes, inner: bytes, body: str, size: int, ttl: int
    ) -> tuple[Delivery, int, str]:
        partition = self._group_partition(group)
        state = partition.state
        keys, args = publish_history_call(
            partition.keys, group, outer, inner, body, state.epoch_args(), size=size, ttl=ttl
        )
        answer = await state.script("publish_history")(keys=keys, args=args)
        delivery, epoch = delivery_of(answer)
        if state.learn_epoch(epoch):
            partition.schedule_rewrite(self._evict)
        return delivery, int(answer[4]), _text(answer[5])

    async def read_history(self, group: str, after: int, limit: int, size: int, ttl: int) -> HistoryRead:
        partition = self._group_partition(group)
        keys = partition.keys
        answer = await partition.state.script("read_history")(
            keys=[keys.history(group), keys.history_position(group), keys.epoch], args=[after, limit, size]
        )
        epoch, offset, first, *flat = answer
        if not epoch:
            return HistoryRead(None, 0, 1, [])
        entries = [
            HistoryEntry(int(flat[i]), _text(flat[i + 1]), _exclusions(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]
        return HistoryRead(_text(epoch), int(offset), int(first), entries)

    async def publish_to_user(self, user_topic: str, user_id: str, payload: bytes) -> Delivery:
        return await self._publish(user_topic, payload, exact=True)

    async def subscribe(self, topic: str) -> None:
        await self._partition_of(topic).listener().subscribe(topic)

    def listening(self, topic: str) -> bool:
        reader = self._partition_of(topic).reader
        return reader is not None and reader.listening(topic)

    async def fence(self, *topics: str) -> None:
        """A token through this server's own probe channel on each partition of these topics
        (side by side): Redis hands this server's connection there every message published
        before it first."""
        partitions = {id(p): p for p in map(self._partition_of, topics)}.values()
        await asyncio.gather(*(partition.fence() for partition in partitions))

    def not_ready(self) -> str | None:
        """`backend_stopped`, `backend_connecting`, `backend_down`, or `backend_resyncing` while
        the servers write their state back after Redis lost it (new connections are refused).
        On a cluster, any partition's: a client may join a group of any of them."""
        for partition in self.partitions:
            reason = partition.not_ready()
            if reason is not None:
                return reason
        return "backend_misconfigured" if self.misconfigured else None

    async def unsubscribe(self, topic: str) -> None:
        reader = self._partition_of(topic).reader
        if reader is not None:
            await reader.unsubscribe(topic)

    def _deliver(self, topic: str, payload: bytes) -> None:
        handler = self._handler
        if handler is not None:
            handler(topic, payload)

    # --- outages -------------------------------------------------------------------------------
    def _on_reader_event(self, index: int, event: str, error: BaseException | None) -> None:
        """A reader lost or got back its subscriptions. The listener hears one outage from the
        first partition lost to the last one back: what it missed may be in any of them."""
        partition = self.partitions[index]
        if event == "lost":
            partition.on_lost()
            if index in self._down:
                return
            self._down.add(index)
            if len(self._down) > 1:
                return
            self.outages += 1
        else:
            # Confirmed again: if Redis lost our state meanwhile, write it back now, not at the
            # keeper's next tick (the resync window is counting).
            partition.schedule_rewrite(self._evict, check=True)
            self._down.discard(index)
            if self._down:
                return
        self._emit(event, error)

    # --- keeper: liveness, reaping, group expiry, deafness probe -----------------------------------
    async def _keep_loop(self) -> None:
        """One keeper loop per partition, each on its own ticks: a shard that hangs (up to the
        socket timeout) must not hold back the liveness this server keeps in the others.
        Cancelling this task ends them all."""
        async with asyncio.TaskGroup() as keepers:
            for partition in self.partitions:
                keepers.create_task(
                    self._keep_partition(partition), name=f"fastapi-channels-keeper-{partition.index}"
                )

    async def _keep_partition(self, partition: Partition) -> None:
        this = asyncio.current_task()
        while True:
            await asyncio.sleep(self.tick)
            try:
                await partition.keep(self._evict)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("Redis keeper step failed: %s", exc)
            if this is not None and this.cancelling():
                # A cancellation that arrived during a cluster command can come back as a
                # normal return (seen with redis-py 8.1 while another shard hung): end anyway,
                # or stop() would wait for this loop for ever.
                raise asyncio.CancelledError
            if partition.index == 0:
                await self.keep_layout()

    async def keep_layout(self) -> None:
        """The keeper's check of the partition count, written again each tick: if the home
        lost it (a failover, a restart), a server started with another count is still
        refused; if one got in before that, this server says so and stops passing for ready."""
        try:
            await self._check_layout()
            self.misconfigured = None
        except BackendError as exc:
            if exc.error_code == "BACKEND_MISCONFIGURED":
                self.misconfigured = exc.message
                logger.error("%s", exc.message)
            else:
                logger.warning("Redis keeper step failed: %s", exc)
        except Exception as exc:
            logger.warning("Redis keeper step failed: %s", exc)

    # --- connections: at home ------------------------------------------------------------------
    async def add_connection(
        self, channel_name: str, user_id: str | None, *, max_per_user: int, max_total: int
    ) -> Admission:
        return await self.state.add_connection(
            channel_name, user_id, max_per_user=max_per_user, max_total=max_total
        )

    async def remove_connection(self, channel_name: str, user_id: str | None) -> None:
        await self.state.remove_connection(channel_name, user_id)

    async def count_connections(self) -> int:
        return await self.state.count_connections()

    async def count_user_connections(self, user_id: str) -> int:
        return await self.state.count_user_connections(user_id)

    # --- groups: in their partition ------------------------------------------------------------
    async def group_add(self, group: str, channel_name: str, *, max_groups: int) -> bool:
        partition = self._group_partition(group)
        count_others = None
        if len(self.partitions) > 1:

            async def count_others() -> int:
                # Not atomic with the add: groups being made at the same time in other
                # partitions can take the total past max_groups, by as many as they are.
                others = [p for p in self.partitions if p is not partition]
                return sum(await asyncio.gather(*(p.state.count_groups() for p in others)))

        return await partition.state.group_add(
            group, channel_name, max_groups=max_groups, count_others=count_others
        )

    async def group_discard(self, group: str, channel_name: str) -> None:
        await self._group_partition(group).state.group_discard(group, channel_name)

    async def group_members(self, group: str) -> set[str]:
        return await self._group_partition(group).state.group_members(group)

    async def group_size(self, group: str) -> int:
        return await self._group_partition(group).state.group_size(group)

    async def count_groups(self) -> int:
        counts = await asyncio.gather(*(p.state.count_groups() for p in self.partitions))
        return sum(counts)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _exclusions(header: bytes | str) -> frozenset[str]:
    data = header.encode() if isinstance(header, str) else header
    return routing.decode_envelope(data + b"t").exclude if data else frozenset()
