"""Emitter and SyncEmitter: reach a cluster's clients from a process that is not one of its servers.

A Celery task, a cron script, a Django or Flask view that shares the cluster's Redis sends
with these instead of starting a ConnectionManager (which would register itself as a
server). They are write-only: they register nothing, hold no liveness key, subscribe to
nothing, and build each send from the same pure parts a server uses (`routing` for names,
topics and envelopes, `messages.to_frame` with the configured serializer, `RedisKeys`, and
the `publish` and `publish_history` scripts through `backends.redis_publish`), so a send
costs the one script call a server's costs, is checked for a delivery shortfall the same
way, and a send to a history group is stored and numbered as a server's is.

`Emitter` is for asyncio code (one per event loop); `SyncEmitter` blocks, for threads,
Celery workers and scripts: it uses redis-py's synchronous client with the same script, so
it needs no event loop, no thread of its own, and survives a fork (redis-py's pool
reconnects in the child), which is how Celery's prefork workers start.

Not for receiving: an emitter has no inbox. That is also why its `join_group`,
`leave_group` and `disconnect` of a remote connection return once the owning server has
*received* the command, not once it acted (a server's own calls wait for the owner's answer).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from fastapi_channels import routing
from fastapi_channels.backends.redis_connect import RedisTarget, async_client, sync_client
from fastapi_channels.backends.redis_keys import RedisKeys
from fastapi_channels.backends.redis_layout import Layout
from fastapi_channels.backends.redis_publish import (
    PUBLISH_HISTORY_SCRIPT,
    PUBLISH_SCRIPT,
    delivery_of,
    epoch_args,
    publish_call,
    publish_history_call,
)
from fastapi_channels.config import WSConfig
from fastapi_channels.exceptions import BackendError, BaseError, CloseCode, ConnectionError, DeliveryError
from fastapi_channels.history import HistoryPolicy, split_positioned_body
from fastapi_channels.messages import to_frame
from fastapi_channels.serializers import get_serializer

if TYPE_CHECKING:
    from fastapi_channels.backends.base import Delivery

__all__ = ["Emitter", "EmitterCounters", "SyncEmitter"]

logger = logging.getLogger(__name__)

EMITTER_POOL_SIZE = 16
"""Connections to Redis one emitter may hold (a SyncEmitter shared by threads uses several)."""
RESYNC_WINDOW_MS = 2000
"""The servers' window for writing their state back after Redis lost it (RedisBackend's
RESYNC_WINDOW): sends in it cannot be verified and are reported as shortfalls."""
# Both emitters' pools (`redis_connect` builds them, for REDIS_MODE, without automatic retries:
# a retried publish could deliver twice; failures surface as BackendError).
_POOL_OPTIONS: dict[str, Any] = {
    "max_connections": EMITTER_POOL_SIZE,
    "timeout": 10,
    "socket_connect_timeout": 5,
    "socket_timeout": 10,
}

Kind = Literal["fanout", "personal", "control", "disconnect"]


@dataclass(slots=True)
class EmitterCounters:
    """Totals since the emitter was made (the same names as a server's counters)."""

    messages_published: int = 0
    publish_failures: int = 0
    delivery_shortfalls: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Send:
    """One publish an emitter call makes, and how its answer is read."""

    topic: str
    envelope: bytes
    kind: Kind
    exact: bool = False
    channel: str = ""  # personal, control and disconnect: the connection they are about
    store: tuple[str, str, frozenset[str]] | None = None  # history: group, JSON object text, excluded


class _Core:
    """What both emitters share: settings, encoding, the script call and the judging of answers."""

    def __init__(self, config: WSConfig | None) -> None:
        self.config = config if config is not None else WSConfig()
        if self.config.BACKEND_TYPE != "redis":
            raise ValueError(
                f"an emitter needs BACKEND_TYPE=redis (it is {self.config.BACKEND_TYPE!r}): with the "
                "memory backend the clients live in one server process and nothing outside it can "
                "reach them; send from that process with get_manager() instead"
            )
        self.url = self.config.REDIS_URL
        self.target = RedisTarget.from_config(self.config)
        prefix = self.config.REDIS_CHANNEL_PREFIX
        partitions = self.config.REDIS_CLUSTER_PARTITIONS
        # The servers' layout (`redis_layout`): a group's send goes to its partition's slot.
        self.layout = Layout.cluster(prefix, partitions) if self.target.sharded else Layout.single(prefix)
        self.partition_keys = [RedisKeys(p, "") for p in self.layout.prefixes]
        self.keys = self.partition_keys[0]
        self.layout_checked = not self.target.sharded
        self.serializer = get_serializer(self.config.WS_SERIALIZER, allow_pickle=self.config.WS_ALLOW_PICKLE)
        self.strict = self.config.WS_STRICT_DELIVERY
        self.history = HistoryPolicy(
            list(self.config.WS_HISTORY_GROUPS), self.config.WS_HISTORY_SIZE, self.config.WS_HISTORY_TTL
        )
        self.counters = EmitterCounters()
        self.epochs = [""] * len(self.layout)  # the cluster-state epoch last seen, per partition
        self.closed = False
        self._lock = threading.Lock()

    # --- what to publish -----------------------------------------------------------------------
    def encode(self, message: Any) -> str | bytes:
        return to_frame(message, self.serializer)

    def enable_history(self, patterns: tuple[str, ...]) -> None:
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError("a history pattern is a non-empty string, e.g. 'room.*'")
            self.history.add(pattern)

    def group(self, group: str, message: Any, exclude: frozenset[str], history: bool) -> _Send:
        frame = self.encode(message)
        topic = routing.group_topic(routing.validate_name("group", group))
        if history and self.history.applies(group):
            # Stored and numbered by the script, exactly as a server's send to it.
            return _Send(topic, b"", "fanout", store=(group, split_positioned_body(frame, group), exclude))
        return _Send(topic, routing.encode_frame_envelope(frame, exclude), "fanout")

    def user(self, user_id: str, message: Any) -> _Send:
        topic = routing.user_topic(routing.validate_name("user", str(user_id)))
        return _Send(topic, routing.encode_frame_envelope(self.encode(message)), "fanout", exact=True)

    def broadcast(self, message: Any) -> _Send:
        return _Send(routing.BROADCAST_TOPIC, routing.encode_frame_envelope(self.encode(message)), "fanout")

    def personal(self, connection_id: str, message: Any) -> _Send | None:
        frame = self.encode(message)
        owner = _owner(connection_id)
        if owner is None:
            return None
        envelope = routing.encode_personal(connection_id, frame)
        return _Send(routing.inbox_topic(owner), envelope, "personal", channel=connection_id)

    def control(self, connection_id: str, command: dict[str, object]) -> _Send:
        """A command for the owning server, without `reply_to`: the owner runs it and answers nobody."""
        owner = _owner(connection_id)
        if owner is None:
            raise _not_found(connection_id, None, retryable=False)
        kind: Kind = "disconnect" if command["op"] == "disconnect" else "control"
        return _Send(routing.inbox_topic(owner), routing.encode_control(command), kind, channel=connection_id)

    def judge_layout(self, recorded: bytes | str | None) -> None:
        """Check the servers' partition count (what they recorded at home, None before any
        server started) against ours: with another, a group's send would go to a slot where
        nobody counts its members and reach nobody without a shortfall."""
        if recorded is None:
            return  # no server yet: nobody to reach; asked again at the next send
        value = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
        if value != str(len(self.layout)):
            raise BackendError(
                f"the servers on {self.target.describe()} split their state into {value} partitions, "
                f"this emitter into {len(self.layout)}: set REDIS_CLUSTER_PARTITIONS={value}",
                error_code="BACKEND_MISCONFIGURED",
                component="emitter",
                retryable=False,
            )
        self.layout_checked = True

    def unknown_epochs(self, recorded: bytes | str | None) -> list[int]:
        """The partitions whose epoch this emitter has not met, once servers run (a count is
        recorded). Read with the layout: a first send to a partition then carries the epoch
        the servers wrote there, so a shard that lost its data since is a loss to the script
        (an unverified send), not a fresh start trusted at once."""
        if recorded is None:
            return []
        return [index for index, epoch in enumerate(self.epochs) if not epoch]

    def learn_epoch(self, index: int, epoch: bytes | str | None) -> None:
        if epoch is not None:
            with self._lock:
                if not self.epochs[index]:
                    self.epochs[index] = epoch.decode() if isinstance(epoch, bytes) else str(epoch)

    def nobody_counted(self, send: _Send, delivery: Delivery) -> bool:
        """A group send on a cluster that found no server with members. Either the group is
        empty, or the servers record another partition count than this emitter has met (they
        started again with another since it last checked): the caller checks the layout again,
        so such a send is refused rather than passed for delivered to nobody."""
        return self.target.sharded and send.topic.startswith("group:") and delivery.expected == 0

    def call(self, send: _Send) -> tuple[str, list[str], list[Any]]:
        """The script to run for `send`, with its KEYS and ARGV."""
        if self.closed:
            raise RuntimeError("this emitter is closed")
        index = self.layout.of_topic(send.topic)
        keys_here = self.partition_keys[index]
        epoch = epoch_args(self.epochs[index], RESYNC_WINDOW_MS)
        if send.store is not None:
            group, body, exclude = send.store
            history = self.history
            keys, args = publish_history_call(
                keys_here,
                group,
                b"",
                routing.exclusion_header(exclude),
                body,
                epoch,
                size=history.size,
                ttl=history.ttl,
            )
            return PUBLISH_HISTORY_SCRIPT, keys, args
        connection = send.channel if send.kind == "personal" else ""  # none registered: not sent
        keys, args = publish_call(
            keys_here, send.topic, send.envelope, epoch, exact=send.exact, connection=connection
        )
        return PUBLISH_SCRIPT, keys, args

    # --- what came of it -----------------------------------------------------------------------
    def failed(self, exc: Exception) -> BackendError:
        with self._lock:
            self.counters.publish_failures += 1
        shown = self.target.describe()
        # Only the type: a driver's message is not ours to vouch for, the URL is shown redacted.
        return BackendError(
            f"Redis at {shown} did not take the send: {type(exc).__name__}",
            error_code="BACKEND_UNAVAILABLE",
            component="emitter",
        )

    def judge(self, send: _Send, answer: Any) -> Delivery:
        delivery, epoch = delivery_of(answer)
        index = self.layout.of_topic(send.topic)
        with self._lock:
            self.counters.messages_published += 1
            known = self.epochs[index]
            if known and epoch != known:
                logger.warning("Redis lost the cluster state (epoch %s -> %s)", known, epoch)
            self.epochs[index] = epoch
            short = not delivery.complete
            if short:
                self.counters.delivery_shortfalls += 1
        if send.kind in ("control", "disconnect"):
            # Nobody heard it. A disconnect of a gone server's connection is done (its
            # connections went with it); otherwise the owner may be alive and deaf: an error.
            gone = delivery.expected == 0
            if delivery.reached == 0 and not (send.kind == "disconnect" and gone):
                raise _not_found(send.channel, delivery, retryable=not gone)
            return delivery
        if short:
            logger.warning(
                "delivery shortfall on %s: reached %d of %s servers with members",
                send.topic,
                delivery.reached,
                "an unknown number of" if delivery.expected is None else delivery.expected,
            )
            if self.strict and send.kind == "fanout":
                raise DeliveryError(
                    f"{send.topic} reached {delivery.reached} of "
                    f"{'?' if delivery.expected is None else delivery.expected} servers with members",
                    details={"topic": send.topic, "reached": delivery.reached, "expected": delivery.expected},
                    component="emitter",
                )
        return delivery


def _owner(connection_id: str) -> str | None:
    try:
        return routing.server_of(connection_id)
    except BaseError:
        return None


def _not_found(connection_id: str, delivery: Delivery | None, *, retryable: bool) -> ConnectionError:
    return ConnectionError(
        f"no server owning {connection_id[:200]!r} is reachable",
        error_code="CONNECTION_NOT_FOUND",
        retryable=retryable,
        connection_id=connection_id[:200],
        details={} if delivery is None else {"reached": delivery.reached},
    )


def _command(op: str, connection_id: str, **fields: object) -> dict[str, object]:
    return {"op": op, "channel": connection_id, **fields}


class Emitter:
    """Send to a cluster's clients from asyncio code that is not a server (one per event loop).

    ``async with Emitter() as emitter: await emitter.send_to_group("room", {...})``.
    Settings come from `ws_config` (or the environment): REDIS_URL (with REDIS_MODE and the
    sentinel settings), REDIS_CHANNEL_PREFIX, WS_SERIALIZER, WS_STRICT_DELIVERY. With
    BACKEND_TYPE=memory it raises ValueError.
    """

    def __init__(self, ws_config: WSConfig | None = None) -> None:
        from fastapi_channels.backends.redis_state import load_script

        self._core = _Core(ws_config)
        self._client = async_client(self._core.target, **_POOL_OPTIONS)
        self._scripts = {
            name: self._client.register_script(load_script(name, sharded=self._core.target.sharded))
            for name in (PUBLISH_SCRIPT, PUBLISH_HISTORY_SCRIPT)
        }

    @property
    def config(self) -> WSConfig:
        return self._core.config

    @property
    def counters(self) -> EmitterCounters:
        return self._core.counters

    async def __aenter__(self) -> Emitter:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections to Redis (idempotent); sending afterwards raises RuntimeError."""
        if not self._core.closed:
            self._core.closed = True
            await self._client.aclose()

    async def _send(self, send: _Send) -> Delivery:
        core = self._core
        if not core.layout_checked:
            await self._check_layout()
        script, keys, args = core.call(send)
        try:
            answer = await self._scripts[script](keys=keys, args=args)
        except Exception as exc:
            raise self._core.failed(exc) from exc
        delivery = core.judge(send, answer)
        if core.nobody_counted(send, delivery):
            await self._check_layout()  # the group is empty, or the servers split the state otherwise
        return delivery

    async def _check_layout(self) -> None:
        core = self._core
        try:
            recorded = await self._client.get(core.keys.layout)
            core.judge_layout(recorded)
            for index in core.unknown_epochs(recorded):
                core.learn_epoch(index, await self._client.hget(core.partition_keys[index].epoch, "id"))
        except BaseError:
            raise
        except Exception as exc:
            raise core.failed(exc) from exc

    def enable_history(self, *patterns: str) -> None:
        """Treat the groups matching these glob patterns as history groups (as WS_HISTORY_GROUPS
        and the servers' `enable_history`): give the emitter the same patterns as the servers."""
        self._core.enable_history(patterns)

    async def send_to_group(self, group: str, message: Any, *, history: bool = True) -> None:
        """Send to every member of a group on every server: one script call whatever its size.

        To a history group the message is stored and numbered, as a server's send;
        `history=False` sends an ephemeral one.
        """
        await self._send(self._core.group(group, message, frozenset(), history))

    send_group = send_to_group

    async def send_group_except(
        self,
        group: str,
        message: Any,
        exclude: str | Iterable[str] | None = None,
        *,
        exclude_connection_id: str | None = None,
        history: bool = True,
    ) -> None:
        """Send to a group minus the listed channel names."""
        names = routing.excluded_channels(exclude, exclude_connection_id)
        await self._send(self._core.group(group, message, names, history))

    async def send_to_user(self, user_id: str, message: Any) -> int:
        """Send to every connection of a user on every server; returns how many it addressed."""
        return (await self._send(self._core.user(user_id, message))).connections

    async def broadcast(self, message: Any) -> None:
        """Send to every connection on every server."""
        await self._send(self._core.broadcast(message))

    async def send_personal(self, connection_id: str, message: Any) -> bool:
        """Send to one connection by channel name; False when no server has it open (or its
        server is not listening)."""
        send = self._core.personal(connection_id, message)
        return send is not None and (await self._send(send)).reached > 0

    async def join_group(self, connection_id: str, group: str) -> None:
        """Ask the server owning `connection_id` to add it to `group`.

        Returns once that server received the command (it joins, or logs its refusal, e.g. an
        `authorize_join` that says no); ConnectionError(CONNECTION_NOT_FOUND) when no server
        owning that channel name is listening.
        """
        routing.validate_name("group", group)
        await self._send(self._core.control(connection_id, _command("join", connection_id, group=group)))

    async def leave_group(self, connection_id: str, group: str) -> None:
        """Ask the server owning `connection_id` to remove it from `group` (as `join_group`)."""
        routing.validate_name("group", group)
        await self._send(self._core.control(connection_id, _command("leave", connection_id, group=group)))

    async def disconnect(
        self, connection_id: str, code: int = CloseCode.NORMAL_CLOSURE, reason: str = ""
    ) -> None:
        """Ask the owning server to close a connection. Idempotent: a gone server is no error;
        one alive that does not hear it is (ConnectionError CONNECTION_NOT_FOUND, retryable)."""
        if _owner(connection_id) is None:
            return
        command = _command("disconnect", connection_id, code=int(code), reason=reason)
        await self._send(self._core.control(connection_id, command))


class SyncEmitter:
    """The blocking Emitter, for Celery tasks, Django or Flask views, scripts and threads.

    ``with SyncEmitter() as emitter: emitter.send_to_group("room", {...})``. One instance may
    be shared by threads and made at import time, before a worker forks. Same settings, same
    methods and same answers as `Emitter`, without `await`.
    """

    def __init__(self, ws_config: WSConfig | None = None) -> None:
        from fastapi_channels.backends.redis_state import load_script

        self._core = _Core(ws_config)
        self._client = sync_client(self._core.target, **_POOL_OPTIONS)
        self._scripts = {
            name: self._client.register_script(load_script(name, sharded=self._core.target.sharded))
            for name in (PUBLISH_SCRIPT, PUBLISH_HISTORY_SCRIPT)
        }

    @property
    def config(self) -> WSConfig:
        return self._core.config

    @property
    def counters(self) -> EmitterCounters:
        return self._core.counters

    def __enter__(self) -> SyncEmitter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections to Redis (idempotent); sending afterwards raises RuntimeError."""
        if not self._core.closed:
            self._core.closed = True
            self._client.close()

    def _send(self, send: _Send) -> Delivery:
        core = self._core
        if not core.layout_checked:
            self._check_layout()
        script, keys, args = core.call(send)
        try:
            answer = self._scripts[script](keys=keys, args=args)
        except Exception as exc:
            raise self._core.failed(exc) from exc
        delivery = core.judge(send, answer)
        if core.nobody_counted(send, delivery):
            self._check_layout()  # the group is empty, or the servers split the state otherwise
        return delivery

    def _check_layout(self) -> None:
        core = self._core
        try:
            recorded = self._client.get(core.keys.layout)
            core.judge_layout(recorded)
            for index in core.unknown_epochs(recorded):
                core.learn_epoch(index, self._client.hget(core.partition_keys[index].epoch, "id"))
        except BaseError:
            raise
        except Exception as exc:
            raise core.failed(exc) from exc

    def enable_history(self, *patterns: str) -> None:
        """Treat the groups matching these glob patterns as history groups (see `Emitter`)."""
        self._core.enable_history(patterns)

    def send_to_group(self, group: str, message: Any, *, history: bool = True) -> None:
        """Send to every member of a group on every server: one script call whatever its size."""
        self._send(self._core.group(group, message, frozenset(), history))

    send_group = send_to_group

    def send_group_except(
        self,
        group: str,
        message: Any,
        exclude: str | Iterable[str] | None = None,
        *,
        exclude_connection_id: str | None = None,
        history: bool = True,
    ) -> None:
        """Send to a group minus the listed channel names."""
        names = routing.excluded_channels(exclude, exclude_connection_id)
        self._send(self._core.group(group, message, names, history))

    def send_to_user(self, user_id: str, message: Any) -> int:
        """Send to every connection of a user on every server; returns how many it addressed."""
        return self._send(self._core.user(user_id, message)).connections

    def broadcast(self, message: Any) -> None:
        """Send to every connection on every server."""
        self._send(self._core.broadcast(message))

    def send_personal(self, connection_id: str, message: Any) -> bool:
        """Send to one connection by channel name; False when no server has it open (or its
        server is not listening)."""
        send = self._core.personal(connection_id, message)
        return send is not None and self._send(send).reached > 0

    def join_group(self, connection_id: str, group: str) -> None:
        """Ask the server owning `connection_id` to add it to `group` (see `Emitter.join_group`)."""
        routing.validate_name("group", group)
        self._send(self._core.control(connection_id, _command("join", connection_id, group=group)))

    def leave_group(self, connection_id: str, group: str) -> None:
        """Ask the server owning `connection_id` to remove it from `group`."""
        routing.validate_name("group", group)
        self._send(self._core.control(connection_id, _command("leave", connection_id, group=group)))

    def disconnect(self, connection_id: str, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Ask the owning server to close a connection. Idempotent: a gone server is no error;
        one alive that does not hear it is (ConnectionError CONNECTION_NOT_FOUND, retryable)."""
        if _owner(connection_id) is None:
            return
        self._send(
            self._core.control(
                connection_id, _command("disconnect", connection_id, code=int(code), reason=reason)
            )
        )
