"""Building Redis clients from the settings: the one place that knows REDIS_MODE.

Every process that talks to the cluster's Redis (a server's backend and its pub/sub reader,
the emitters, an app's own client for the shared rate limit) gets its client here. In every
mode a client bounds its connections and makes callers wait for a free one, and never retries
on its own: a retried PUBLISH could deliver twice, so a failure surfaces to the caller as an
error instead.

`standalone`: one Redis at REDIS_URL. `sentinel`: every new connection asks the sentinels
(redis-py's own Sentinel client) which server is the master now, so after a failover the
next connection, and the pub/sub reader's next reconnect, reach the promoted replica.
REDIS_URL then gives the master connections their password, user name, db and TLS
(rediss://); its host and port are not used. The sentinels take REDIS_SENTINEL_PASSWORD
(their own `requirepass`), none when it is empty.

`cluster`: REDIS_URL names any node of a Redis Cluster; redis-py's RedisCluster finds the
rest and follows MOVED and ASK redirections (a redirected command had not run, so following
one is no retry). Every key of ours carries the hash tag of its partition (`redis_layout`),
so each script's keys live in one slot, and topics travel over sharded pub/sub (SPUBLISH) in
that slot too. A partition's pub/sub reader subscribes on its slot's master (`slot_pubsub`).

Not for choosing *what* to send: the backend and `redis_publish` do that.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from fastapi_channels.redact import redact_url

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from fastapi_channels.config import WSConfig

__all__ = ["RedisTarget", "async_client", "slot_pubsub", "sync_client"]

MIGRATION_PATIENCE = 5.0
"""Seconds a command may keep meeting TRYAGAIN (its slot half moved to another master) before
its caller gets the error; a resharding tool moves a slot's keys in well under that."""

SENTINEL_TIMEOUT = 2.0
"""Seconds to connect to, or wait for an answer from, one sentinel. A sentinel that does not
answer is skipped for the next one, so this bounds what a dead one costs each new connection."""


@dataclass(frozen=True, slots=True, repr=False)
class RedisTarget:
    """Where the cluster's Redis is and how to reach it (what WSConfig says, as data).

    Its repr is `describe()`'s text: REDIS_URL and the sentinels' password may hold secrets.
    """

    url: str = "redis://localhost:6379/0"
    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_password: str = ""

    @classmethod
    def from_config(cls, config: WSConfig) -> RedisTarget:
        return cls(
            url=config.REDIS_URL,
            mode=config.REDIS_MODE,
            sentinels=tuple(config.REDIS_SENTINELS),
            master=config.REDIS_SENTINEL_MASTER,
            sentinel_password=config.REDIS_SENTINEL_PASSWORD.get_secret_value(),
        )

    def __repr__(self) -> str:
        return f"RedisTarget({self.mode}: {self.describe()})"

    def describe(self) -> str:
        """What to name in an error or a log line: never a password."""
        if self.mode == "sentinel":
            hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"the master {self.master!r} of the sentinels {hosts}"
        if self.mode == "cluster":
            return f"the Redis Cluster of {redact_url(self.url)}"
        return redact_url(self.url)

    @property
    def sharded(self) -> bool:
        """Whether topics travel over sharded pub/sub (SPUBLISH, SSUBSCRIBE): a cluster's."""
        return self.mode == "cluster"

    def _master_options(self) -> dict[str, Any]:
        """REDIS_URL's password, user name, db, TLS and query options, without its host."""
        from redis.asyncio.connection import parse_url

        options: dict[str, Any] = dict(parse_url(self.url))
        options.pop("host", None)
        options.pop("port", None)
        if options.pop("connection_class", None) is not None:
            options["ssl"] = True  # only rediss:// sets one here (unix:// is refused in this mode)
        return options

    def _sentinel_options(self, retry: object) -> dict[str, Any]:
        options: dict[str, Any] = {
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "socket_timeout": SENTINEL_TIMEOUT,
            "retry": retry,
        }
        if self.sentinel_password:
            options["password"] = self.sentinel_password
        return options


# redis is an optional extra: it is imported when a client is built, never by importing this.


def _no_master(name: str) -> str:
    # redis-py's own message lists every sentinel client's repr: long, and no help to a reader.
    return f"no sentinel names a master {name!r} that is up (sentinels unreachable, or a failover under way)"


@cache
def _async_sentinel_pool() -> type[Any]:
    """redis-py's sentinel pool, blocking when full like the standalone pool; closing it closes
    the connections to the sentinels too (the client owns this pool, nothing else owns those)."""
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool

    class AsyncSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
        async def get_master_address(self) -> Any:
            try:
                return await super().get_master_address()  # type: ignore[no-untyped-call]
            except MasterNotFoundError:
                raise MasterNotFoundError(_no_master(self.service_name)) from None

        async def disconnect(self, inuse_connections: bool = True) -> None:
            try:
                await super().disconnect(inuse_connections)
            finally:
                # A full close (a master switch closes only the idle connections) closes the
                # sentinels' too, even when one of the master's failed to close (a dead master).
                if inuse_connections:
                    closes = [sentinel.aclose() for sentinel in self.sentinel_manager.sentinels]
                    failures = await asyncio.gather(*closes, return_exceptions=True)
                    first = next((f for f in failures if isinstance(f, BaseException)), None)
                    if first is not None:
                        raise first

    return AsyncSentinelPool


@cache
def _sync_sentinel_pool() -> type[Any]:
    """The blocking counterpart of `_async_sentinel_pool`, for the SyncEmitter."""
    from redis import BlockingConnectionPool
    from redis.sentinel import MasterNotFoundError, SentinelConnectionPool

    class SyncSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
        def get_master_address(self) -> Any:
            try:
                return super().get_master_address()  # type: ignore[no-untyped-call]
            except MasterNotFoundError:
                raise MasterNotFoundError(_no_master(self.service_name)) from None

        def disconnect(self, inuse_connections: bool = True) -> None:
            try:
                super().disconnect(inuse_connections)
            finally:
                if inuse_connections:
                    for sentinel in self.sentinel_manager.sentinels:
                        sentinel.close()

    return SyncSentinelPool


def async_client(
    target: RedisTarget,
    *,
    max_connections: int,
    timeout: float = 10,
    socket_connect_timeout: float = 5,
    socket_timeout: float | None = 10,
    **options: Any,
) -> redis.asyncio.Redis:
    """An asyncio client with a bounded blocking pool (`timeout`: seconds a caller waits for a
    free connection); `options` go to every connection (e.g. decode_responses=True)."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff

    settings: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": socket_connect_timeout,
        "socket_timeout": socket_timeout,
        **options,
    }
    if target.mode == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py: untyped
            list(target.sentinels), sentinel_kwargs=target._sentinel_options(Retry(NoBackoff(), 0))
        )
        # REDIS_URL's query options win over these, as they do in `from_url` (standalone).
        client: redis.asyncio.Redis = sentinel.master_for(
            target.master,
            connection_pool_class=_async_sentinel_pool(),
            **{**settings, **target._master_options()},
        )
        return client
    if target.mode == "cluster":
        return _async_cluster_client(target, settings)  # type: ignore[no-any-return]
    pool = redis.asyncio.BlockingConnectionPool.from_url(target.url, **settings)
    return redis.asyncio.Redis.from_pool(pool)  # the client owns and closes the pool


@cache
def _waiting_cluster() -> type[Any]:
    """redis-py's asyncio RedisCluster, with callers waiting for a free connection.

    RedisCluster caps each node's connections and fails a command at once past the cap
    (MaxConnectionsError); the standalone pool makes the caller wait instead. Commands wait
    here for one of `max_connections` slots, up to `timeout` seconds, so a burst queues as it
    does on one Redis, and no node ever holds more connections than that.
    """
    from redis.asyncio import RedisCluster
    from redis.exceptions import AskError, ClusterError, MovedError, TryAgainError
    from redis.exceptions import ConnectionError as RedisConnectionError

    class WaitingCluster(RedisCluster):
        def __init__(self, *args: Any, wait_timeout: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._wait_timeout = wait_timeout
            self._free = asyncio.Semaphore(kwargs["max_connections"])

        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            try:
                async with asyncio.timeout(self._wait_timeout):
                    await self._free.acquire()
            except TimeoutError:
                raise RedisConnectionError(
                    f"no free Redis connection within {self._wait_timeout:g}s"
                ) from None
            try:
                return await self._through_a_migration(args, kwargs)
            finally:
                self._free.release()

        async def _through_a_migration(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            """While a slot moves, a script whose keys are split between the two masters gets
            TRYAGAIN until the last batch has moved; redis-py gives up after 16 redirections
            (about 0.4 s) with "TTL exhausted". Only redirections and TRYAGAIN lead there
            (a connection error ends the attempt at once), so the command never ran and
            sending it again is safe: for up to MIGRATION_PATIENCE seconds.

            A command whose keys have all moved is sent to the importing master after an
            ASKING. redis-py 8.1's asyncio client sends that ASKING on one pooled connection
            and the command on the next free one, which is another whenever the node has two
            idle: the command bounces back (MOVED) until "TTL exhausted". So after the
            first exhaustion the command goes on one connection of its own, ASKING included.
            """
            loop = asyncio.get_running_loop()
            deadline = loop.time() + MIGRATION_PATIENCE
            while True:
                try:
                    return await super().execute_command(*args, **kwargs)
                except ClusterError as exc:
                    if "TTL exhausted" not in str(exc) or loop.time() > deadline:
                        raise
                if not kwargs:
                    try:
                        return await self._on_one_connection(args)
                    except (AskError, MovedError, TryAgainError):
                        pass  # still moving (or just moved): the next round finds out
                await asyncio.sleep(0.05)

        async def _on_one_connection(self, args: tuple[Any, ...]) -> Any:
            """Send `args` to the master of its slot; if that answers ASK, send ASKING and
            then `args` to the importing master on one connection."""
            slot = await self._determine_slot(*args)
            owner = self.nodes_manager.get_node_from_slot(slot)
            direct: Any = node_client(owner, owner.host, int(owner.port))
            async with direct:
                try:
                    return await direct.execute_command(*args)
                except AskError as ask:
                    host, port = ask.host, int(ask.port)
            importing: Any = node_client(owner, host, port, single_connection_client=True)
            async with importing:
                await importing.execute_command("ASKING")
                return await importing.execute_command(*args)

    return WaitingCluster


def _async_cluster_client(target: RedisTarget, settings: dict[str, Any]) -> Any:
    """A RedisCluster where a Redis is expected: every command and script call the library
    makes has the same signature on both (typed Any, as RedisCluster is no Redis subclass)."""
    from redis.asyncio.connection import parse_url

    options = {**settings, **dict(parse_url(target.url))}
    wait_timeout = options.pop("timeout")
    if options.pop("connection_class", None) is not None:
        options["ssl"] = True  # rediss://
    options.pop("db", None)  # a cluster has only db 0 (REDIS_URL's /0 is accepted)
    return _waiting_cluster()(
        wait_timeout=wait_timeout,
        # A MOVED updates the slot it names; redis-py's periodic full refresh on MOVED closes
        # every node's connections under the commands in flight, so it is off. A lost node
        # still makes the next command refresh the whole map.
        reinitialize_steps=0,
        **options,
    )


@cache
def _redis_parameters() -> frozenset[str]:
    """What a standalone asyncio Redis takes: a cluster node's connection settings hold more
    (its own bookkeeping), which a plain client refuses."""
    import inspect

    import redis.asyncio

    return frozenset(inspect.signature(redis.asyncio.Redis.__init__).parameters)


async def slot_pubsub(cluster: Any, key: str) -> redis.asyncio.client.PubSub:
    """A pub/sub connection to the master serving `key`'s slot: sharded pub/sub is per
    shard, and SSUBSCRIBE there hears every SPUBLISH to a channel of that slot.

    The slot map is asked of the nodes each time (CLUSTER SLOTS, one node after another until
    one answers), not taken from the client's cache: after a failover this is how the reader
    finds the promoted replica, without making the shared client drop the connections its
    commands are using. The connection takes the client's settings (password, TLS, timeouts).
    """
    from redis.crc import key_slot
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError

    if not cluster.nodes_manager.nodes_cache:
        await cluster.initialize()
    slot = key_slot(key.encode())
    nodes = list(cluster.nodes_manager.nodes_cache.values())
    failure: BaseException | None = None
    for node in nodes:
        try:
            slots = await cluster.execute_command("CLUSTER SLOTS", target_nodes=node)
        except (RedisError, OSError) as exc:
            failure = exc
            continue
        master = next((shard["primary"] for (low, high), shard in slots.items() if low <= slot <= high), None)
        if master is None:
            failure = RedisError(f"no master serves slot {slot} (a failover under way?)")
            continue
        return node_client(node, master[0], int(master[1])).pubsub()
    raise RedisConnectionError(f"no node of the cluster answered CLUSTER SLOTS: {failure}")


def node_client(node: Any, host: str, port: int, **extra: Any) -> redis.asyncio.Redis:
    """A plain client of one cluster node at host:port, with the settings of `node` (one of
    the cluster client's: password, TLS, timeouts), without retries."""
    import redis.asyncio
    from redis.asyncio.connection import SSLConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    accepted = _redis_parameters()
    options = {
        key: value
        for key, value in node.connection_kwargs.items()
        if key in accepted and key not in {"host", "port", "retry"}
    }
    if issubclass(node.connection_class, SSLConnection):
        options["ssl"] = True
    return redis.asyncio.Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), **options, **extra)


def sync_client(
    target: RedisTarget,
    *,
    max_connections: int,
    timeout: float = 10,
    socket_connect_timeout: float = 5,
    socket_timeout: float | None = 10,
    **options: Any,
) -> redis.Redis:
    """The blocking counterpart of `async_client` (thread-safe; it survives a fork)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    settings: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": socket_connect_timeout,
        "socket_timeout": socket_timeout,
        **options,
    }
    if target.mode == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py: untyped
            list(target.sentinels), sentinel_kwargs=target._sentinel_options(Retry(NoBackoff(), 0))
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.master,
            connection_pool_class=_sync_sentinel_pool(),
            **{**settings, **target._master_options()},
        )
        return client
    if target.mode == "cluster":
        from redis.connection import parse_url

        options = {**settings, **dict(parse_url(target.url))}  # type: ignore[no-untyped-call]
        options.pop("timeout")  # no pool to wait for: a SyncEmitter's threads are few
        options.pop("db", None)
        if options.pop("connection_class", None) is not None:
            options["ssl"] = True
        cluster: Any = redis.RedisCluster(reinitialize_steps=0, **options)  # Redis's commands, as above
        return cluster  # type: ignore[no-any-return]
    pool = redis.BlockingConnectionPool.from_url(target.url, **settings)
    return redis.Redis.from_pool(pool)
