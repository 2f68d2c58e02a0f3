"""Building Redis clients from the settings: the one place that knows REDIS_MODE.

Every process that talks to the cluster's Redis (a server's backend and its pub/sub reader,
the emitters, an app's own client for the shared rate limit) gets its client here, so a mode
added later (cluster) changes one module. In both modes a client has a bounded pool that
makes callers wait for a free connection, and no automatic retries: a retried PUBLISH could
deliver twice, so a failure surfaces to the caller as an error instead.

`standalone`: one Redis at REDIS_URL. `sentinel`: every new connection asks the sentinels
(redis-py's own Sentinel client) which server is the master now, so after a failover the
next connection, and the pub/sub reader's next reconnect, reach the promoted replica.
REDIS_URL then gives the master connections their password, user name, db and TLS
(rediss://); its host and port are not used. The sentinels take REDIS_SENTINEL_PASSWORD
(their own `requirepass`), none when it is empty.

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

__all__ = ["RedisTarget", "async_client", "sync_client"]

SENTINEL_TIMEOUT = 2.0
"""Seconds to connect to, or wait for an answer from, one sentinel. A sentinel that does not
answer is skipped for the next one, so this bounds what a dead one costs each new connection."""


@dataclass(frozen=True, slots=True, repr=False)
class RedisTarget:
    """Where the cluster's Redis is and how to reach it (what WSConfig says, as data).

    Its repr is `describe()`'s text: REDIS_URL and the sentinels' password may hold secrets.
    """

    url: str = "redis://localhost:6379/0"
    mode: Literal["standalone", "sentinel"] = "standalone"
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
        return redact_url(self.url)

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
    pool = redis.asyncio.BlockingConnectionPool.from_url(target.url, **settings)
    return redis.asyncio.Redis.from_pool(pool)  # the client owns and closes the pool


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
    pool = redis.BlockingConnectionPool.from_url(target.url, **settings)
    return redis.Redis.from_pool(pool)
