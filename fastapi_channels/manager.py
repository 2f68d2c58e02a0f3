"""ConnectionManager: the façade an app, a REST handler or a background job talks to.

It encodes each send once, publishes it on one topic, and fans out what arrives on its
subscribed topics to local connections (see DESIGN §3). It owns the background tasks
(heartbeat sweeper, stats logger, control worker) and starts and stops them with the app's
lifespan. Methods marked *local* look at this server only; *cluster-wide* ones ask the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from starlette.websockets import WebSocket, WebSocketState

from fastapi_channels import routing
from fastapi_channels.backends.base import Admission, BaseBackend
from fastapi_channels.backends.memory import MemoryBackend
from fastapi_channels.config import WSConfig
from fastapi_channels.connection import Connection, WriteCoalescer
from fastapi_channels.exceptions import (
    AuthorizationError,
    BackendError,
    BaseError,
    CloseCode,
    ConnectionError,
)
from fastapi_channels.framing import encode_frame
from fastapi_channels.heartbeat import plan, sweep_period
from fastapi_channels.messages import to_frame
from fastapi_channels.registry import ConnectionRegistry
from fastapi_channels.serializers import get_serializer
from fastapi_channels.stats import Counters

__all__ = ["ConnectionManager", "get_manager"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

JoinAuthorizer = Callable[[Connection, str], "bool | Awaitable[bool]"]
"""Decides whether a connection may join a group; runs on the server that owns the connection."""

_default_manager: ConnectionManager | None = None

CONTROL_QUEUE_SIZE = 10_000
"""Control commands from other servers waiting to run here; beyond it they are dropped and logged."""


def get_manager() -> ConnectionManager:
    """The first ConnectionManager created in this process."""
    if _default_manager is None:
        raise RuntimeError(
            "no ConnectionManager exists yet: create one (ConnectionManager(ws_config=WSConfig())) "
            "when your app starts, before calling get_manager()"
        )
    return _default_manager


def _make_backend(config: WSConfig) -> BaseBackend:
    if config.BACKEND_TYPE == "memory":
        return MemoryBackend()
    from fastapi_channels.backends.redis import RedisBackend

    return RedisBackend.from_config(config)


class ConnectionManager:
    """Connections, groups and sends for one server; the same API on every backend."""

    def __init__(
        self,
        ws_config: WSConfig | None = None,
        *,
        backend: BaseBackend | None = None,
        authorize_join: JoinAuthorizer | None = None,
    ) -> None:
        global _default_manager
        self.config = ws_config if ws_config is not None else WSConfig()
        self.server_id = self.config.SERVER_INSTANCE_ID
        self.backend = backend if backend is not None else _make_backend(self.config)
        self.registry: ConnectionRegistry[Connection] = ConnectionRegistry()
        self.serializer = get_serializer(self.config.WS_SERIALIZER, allow_pickle=self.config.WS_ALLOW_PICKLE)
        self.counters = Counters()
        self.started_at: float | None = None
        self._inbox = routing.inbox_topic(self.server_id)
        self._started = False
        self._stopping = False
        self._start_lock = asyncio.Lock()
        self._subscription_lock = asyncio.Lock()
        self._subscribed: set[str] = set()
        self._fast_channels: set[str] = set()  # local connections on the fast path
        self.authorize_join = authorize_join
        self._coalescer = WriteCoalescer()
        self._tasks: list[asyncio.Task[None]] = []
        self._control: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=CONTROL_QUEUE_SIZE)
        self._backend_hooks: list[Callable[[str, BaseException | None], Any]] = []
        self._hook_tasks: set[asyncio.Task[Any]] = set()
        self.backend.add_event_listener(self._on_backend_event)
        if _default_manager is None:
            _default_manager = self

    @property
    def ws_config(self) -> WSConfig:
        return self.config

    # --- lifecycle -----------------------------------------------------------------------------
    async def start_tasks(self) -> None:
        """Connect the backend, subscribe this server's inbox and broadcast, start the sweepers."""
        async with self._start_lock:
            if self._started:
                return
            await self.backend.start(self.server_id, self._on_backend_message)
            self._started = True
            try:
                await self._reconcile(self._inbox)
                await self._reconcile(routing.BROADCAST_TOPIC)
            except BaseException:
                self._started = False
                self._subscribed.clear()
                await self.backend.stop()
                raise
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._control_worker(), name="fastapi-channels-control")]
            if self.config.WS_ENABLE_HEARTBEAT:
                self._tasks.append(
                    loop.create_task(self._heartbeat_loop(), name="fastapi-channels-heartbeat")
                )
            if self.config.LOG_STATS:
                self._tasks.append(loop.create_task(self._stats_loop(), name="fastapi-channels-stats"))
            self.started_at = time.time()
            logger.info("fastapi-channels %s started on the %s backend", self.server_id, self.backend.name)

    async def stop_tasks(self, timeout: float = 10.0) -> None:
        """Close every connection with 1001, end every background task, release backend state."""
        async with self._start_lock:
            if not self._started:
                return
            self._stopping = True
            try:
                closers = [c.close(CloseCode.GOING_AWAY, "server shutting down") for c in list(self.registry)]
                if closers:
                    _, pending = await asyncio.wait(closers, timeout=timeout)
                    for closer in pending:
                        closer.cancel()
                    if pending:
                        await asyncio.wait(pending, timeout=1.0)
                for task in self._tasks:
                    task.cancel()
                if self._tasks:
                    await asyncio.wait(self._tasks, timeout=max(timeout, 1.0))
                self._tasks = []
                self._subscribed.clear()
                await self.backend.stop()
            finally:
                self._started = False
                self._stopping = False
            logger.info("fastapi-channels %s stopped", self.server_id)

    def on_backend_event(self, hook: Callable[[str, BaseException | None], Any]) -> None:
        """Call `hook(event, error)` when the backend is "lost" and when it has "recovered".

        Messages published during an outage may be lost; after "recovered" an app can tell its
        clients to resync (e.g. reload recent history). `hook` may be a plain or async function.
        """
        self._backend_hooks.append(hook)

    def _on_backend_event(self, event: str, error: BaseException | None) -> None:
        if event == "lost":
            self.counters.backend_outages += 1
        for hook in tuple(self._backend_hooks):
            try:
                result = hook(event, error)
            except Exception:
                logger.exception("backend event hook failed")
                continue
            if asyncio.iscoroutine(result):
                task = asyncio.get_running_loop().create_task(result)
                self._hook_tasks.add(task)
                task.add_done_callback(self._hook_tasks.discard)

    # --- connections ---------------------------------------------------------------------------
    async def connect(
        self,
        websocket: WebSocket,
        user_id: str | None = None,
        connection_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Connection:
        """Accept `websocket` and register it, or refuse it with ConnectionError.

        Over a limit the socket is accepted and closed with 1013 (the client sees the code);
        a bad origin or user id is refused at the handshake (HTTP 403). Raised out of the
        endpoint, Starlette turns the error into that close without logging a traceback.
        """
        self._check_origin(websocket)
        if user_id is not None:
            try:
                user_id = routing.validate_name("user", str(user_id))
            except BaseError as exc:
                raise ConnectionError(
                    exc.message,
                    error_code="INVALID_USER_ID",
                    ws_code=CloseCode.POLICY_VIOLATION,
                    retryable=False,
                ) from None
        if not self._started:
            await self.start_tasks()
        if self._stopping:
            await self._refuse(websocket)
            raise ConnectionError(
                "server is shutting down", error_code="SERVER_SHUTTING_DOWN", ws_code=CloseCode.GOING_AWAY
            )
        channel_name = routing.new_channel_name(self.server_id, connection_id)
        if channel_name in self.registry:
            raise ConnectionError(
                "connection id already in use", error_code="DUPLICATE_CONNECTION_ID", retryable=False
            )
        config = self.config
        try:
            admission = await self._backend_call(
                self.backend.add_connection(
                    channel_name,
                    user_id,
                    max_per_user=config.MAX_CONNECTIONS_PER_CLIENT,
                    max_total=config.MAX_TOTAL_CONNECTIONS,
                )
            )
        except BackendError as exc:
            # Limits cannot be checked while the broker is down: refuse, and say "try again later".
            self.counters.connections_refused += 1
            await self._refuse(websocket)
            raise ConnectionError(
                "the backend is unavailable",
                error_code="BACKEND_UNAVAILABLE",
                user_id=user_id,
                component="manager",
            ) from exc
        if admission is not Admission.ACCEPTED:
            self.counters.connections_refused += 1
            scope, limit = (
                ("user", config.MAX_CONNECTIONS_PER_CLIENT)
                if admission is Admission.USER_LIMIT
                else ("total", config.MAX_TOTAL_CONNECTIONS)
            )
            await self._refuse(websocket)
            raise ConnectionError(
                f"connection limit reached ({scope}: {limit})",
                error_code="CONNECTION_LIMIT_EXCEEDED",
                details={"scope": scope, "limit": limit},
                user_id=user_id,
                component="manager",
            )
        connection = Connection(
            websocket,
            channel_name,
            user_id,
            metadata,
            counters=self.counters,
            on_closed=self._forget,
            coalescer=self._coalescer,
            max_messages=config.WS_OUTBOUND_QUEUE_MESSAGES,
            max_bytes=config.WS_OUTBOUND_QUEUE_BYTES,
            policy=config.WS_SLOW_CONSUMER_POLICY,
            close_timeout=config.WS_CLOSE_TIMEOUT,
        )
        try:
            if websocket.application_state is WebSocketState.CONNECTING:
                await websocket.accept()
            self.registry.add(connection)
            connection.start()
            if connection.uses_fast_path:
                self._fast_channels.add(channel_name)
            if user_id is not None:
                await self._reconcile(routing.user_topic(user_id))
        except BaseException:
            self._fast_channels.discard(channel_name)
            if self.registry.remove(channel_name) is None:
                await self.backend.remove_connection(channel_name, user_id)
            else:
                await self._release(channel_name, user_id, [])
            connection.close(CloseCode.INTERNAL_ERROR, flush=False)
            raise
        self.counters.connections_opened += 1
        return connection

    def _check_origin(self, websocket: WebSocket) -> None:
        allowed = self.config.WS_ALLOWED_ORIGINS
        if not allowed or "*" in allowed:
            return
        origin = (websocket.headers.get("origin") or "").rstrip("/")
        if origin not in allowed:
            # Cross-site WebSocket hijacking: a page of another site opening our socket with
            # the user's cookies. Refused before accept, so the browser sees a failed handshake.
            self.counters.connections_refused += 1
            raise ConnectionError(
                "origin not allowed",
                error_code="ORIGIN_NOT_ALLOWED",
                ws_code=CloseCode.POLICY_VIOLATION,
                retryable=False,
                details={"origin": origin[:200]},
            )

    async def _refuse(self, websocket: WebSocket) -> None:
        # Accept first so the close code (sent by Starlette when the ConnectionError leaves the
        # endpoint, or by the app) reaches the client instead of an opaque HTTP 403.
        if websocket.application_state is WebSocketState.CONNECTING:
            with contextlib.suppress(Exception):
                await websocket.accept()

    async def disconnect(
        self, connection_id: str, code: int = CloseCode.NORMAL_CLOSURE, reason: str = ""
    ) -> None:
        """Close a connection (on whichever server owns it), leaving all its groups. Idempotent."""
        connection = self.registry.get(connection_id)
        if connection is not None:
            connection.close(code, reason)
            with contextlib.suppress(TimeoutError):
                await connection.wait_closed(timeout=2 * self.config.WS_CLOSE_TIMEOUT + 1)
            return
        owner = self._owner(connection_id)
        if owner is not None and owner != self.server_id:
            await self._send_control(owner, {"op": "disconnect", "channel": connection_id, "code": int(code)})

    async def _forget(self, connection: Connection) -> None:
        """Called once per connection when it has closed: drop it from every index and the cluster."""
        removal = self.registry.remove(connection.channel_name)
        if removal is None:
            return
        self.counters.connections_closed += 1
        self._fast_channels.discard(connection.channel_name)
        await self._release(connection.channel_name, connection.user_id, removal.left_groups)

    async def _release(self, channel_name: str, user_id: str | None, groups: list[str]) -> None:
        try:
            for group in groups:
                await self.backend.group_discard(group, channel_name)
                await self._reconcile(routing.group_topic(group))
            if user_id is not None:
                await self._reconcile(routing.user_topic(user_id))
            await self.backend.remove_connection(channel_name, user_id)
        except Exception:
            # The backend's own expiry reclaims what could not be released now.
            logger.warning("could not release %s in the backend", channel_name, exc_info=True)

    def get_connection(self, connection_id: str) -> Connection | None:
        """*Local*: the connection with this channel name, if this server owns it."""
        return self.registry.get(connection_id)

    def get_user_connections(self, user_id: str) -> list[Connection]:
        """*Local*: this server's connections of a user."""
        return list(self.registry.user_connections(user_id))

    def get_group_connections(self, group: str) -> list[Connection]:
        """*Local*: this server's members of a group."""
        return list(self.registry.group_members(group))

    async def count_user_connections(self, user_id: str) -> int:
        """*Cluster-wide*: connections of a user on every server."""
        return await self._backend_call(
            self.backend.count_user_connections(routing.validate_name("user", user_id))
        )

    async def count_connections(self) -> int:
        """*Cluster-wide*: connections on every server."""
        return await self._backend_call(self.backend.count_connections())

    async def group_members(self, group: str) -> set[str]:
        """*Cluster-wide*: channel names of a group's members on every server."""
        return await self._backend_call(self.backend.group_members(routing.validate_name("group", group)))

    async def group_size(self, group: str) -> int:
        """*Cluster-wide*: member count of a group."""
        return await self._backend_call(self.backend.group_size(routing.validate_name("group", group)))

    async def count_groups(self) -> int:
        """*Cluster-wide*: groups with at least one member."""
        return await self._backend_call(self.backend.count_groups())

    # --- groups --------------------------------------------------------------------------------
    async def join_group(self, connection_id: str, group: str) -> None:
        """Add a connection (owned by any server) to a group."""
        routing.validate_name("group", group)
        connection = self.registry.get(connection_id)
        if connection is None:
            await self._remote(connection_id, {"op": "join", "channel": connection_id, "group": group})
            return
        if group in connection.groups:
            return
        if not connection.is_open:
            raise ConnectionError("connection is closing", error_code="CONNECTION_CLOSED", retryable=False)
        if self.authorize_join is not None:
            allowed = self.authorize_join(connection, group)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                raise AuthorizationError(
                    f"not allowed to join {group!r}",
                    error_code="JOIN_FORBIDDEN",
                    details={"group": group},
                    user_id=connection.user_id,
                    connection_id=connection_id,
                )
        added = await self._backend_call(
            self.backend.group_add(group, connection_id, max_groups=self.config.MAX_TOTAL_GROUPS)
        )
        if not added:
            raise ConnectionError(
                f"group limit reached ({self.config.MAX_TOTAL_GROUPS})",
                error_code="GROUP_LIMIT_EXCEEDED",
                details={"limit": self.config.MAX_TOTAL_GROUPS},
                connection_id=connection_id,
            )
        if connection_id not in self.registry:
            # Closed while the backend answered: its cleanup has already run without this group.
            await self.backend.group_discard(group, connection_id)
            return
        self.registry.join(connection_id, group)
        await self._reconcile(routing.group_topic(group))

    async def leave_group(self, connection_id: str, group: str) -> None:
        """Remove a connection (owned by any server) from a group. Idempotent."""
        routing.validate_name("group", group)
        connection = self.registry.get(connection_id)
        if connection is None:
            await self._remote(connection_id, {"op": "leave", "channel": connection_id, "group": group})
            return
        if group not in connection.groups:
            return
        emptied = self.registry.leave(connection_id, group)
        await self._backend_call(self.backend.group_discard(group, connection_id))
        if emptied:
            await self._reconcile(routing.group_topic(group))

    # --- sending -------------------------------------------------------------------------------
    def encode(self, message: Any) -> str | bytes:
        """The frame every recipient of `message` gets: built once per send."""
        return to_frame(message, self.serializer)

    async def send_personal(self, connection_id: str, message: Any) -> bool:
        """Send to one connection by channel name, on whichever server owns it.

        True when the frame was queued here or handed to the owner's inbox; False when the
        connection is this server's and is gone or refused the frame.
        """
        frame = self.encode(message)
        connection = self.registry.get(connection_id)
        if connection is not None:
            return connection.enqueue(frame)
        owner = self._owner(connection_id)
        if owner is None or owner == self.server_id:
            return False
        await self._publish(routing.inbox_topic(owner), routing.encode_personal(connection_id, frame))
        return True

    async def send_to_group(self, group: str, message: Any) -> None:
        """Send to every member of a group on every server: one publish whatever its size."""
        frame = self.encode(message)
        await self._publish(
            routing.group_topic(routing.validate_name("group", group)), routing.encode_frame_envelope(frame)
        )

    send_group = send_to_group

    async def send_group_except(self, group: str, message: Any, exclude: str | Iterable[str]) -> None:
        """Send to a group minus the listed channel names (typically the sender)."""
        names = frozenset((exclude,) if isinstance(exclude, str) else exclude)
        frame = self.encode(message)
        await self._publish(
            routing.group_topic(routing.validate_name("group", group)),
            routing.encode_frame_envelope(frame, names),
        )

    async def send_to_user(self, user_id: str, message: Any) -> int:
        """Send to every connection of a user on every server; returns how many it addressed."""
        user_id = routing.validate_name("user", str(user_id))
        frame = self.encode(message)
        envelope = routing.encode_frame_envelope(frame)
        return await self._counted(
            self.backend.publish_to_user(routing.user_topic(user_id), user_id, envelope)
        )

    async def broadcast(self, message: Any) -> None:
        """Send to every connection on every server."""
        frame = self.encode(message)
        await self._publish(routing.BROADCAST_TOPIC, routing.encode_frame_envelope(frame))

    async def _publish(self, topic: str, envelope: bytes) -> None:
        await self._counted(self.backend.publish(topic, envelope))

    async def _counted(self, publish: Awaitable[T]) -> T:
        """Run a publish, counting it or its failure; a broker failure becomes BackendError."""
        try:
            result = await self._backend_call(publish)
        except BaseError:
            self.counters.publish_failures += 1
            raise
        self.counters.messages_published += 1
        return result

    async def _backend_call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except BaseError:
            raise
        except Exception as exc:
            raise BackendError(f"backend call failed: {exc!r}", component="backend") from exc

    # --- receiving from the backend ------------------------------------------------------------
    def _on_backend_message(self, topic: str, payload: bytes) -> None:
        """Fan a topic's envelope out to local connections: one non-blocking enqueue each."""
        try:
            envelope = routing.decode_envelope(payload)
        except (ValueError, UnicodeDecodeError):
            self.counters.backend_messages_invalid += 1
            logger.warning("dropped a malformed envelope on %s", topic)
            return
        frame = envelope.frame
        if frame is None:
            if envelope.control is not None and topic == self._inbox:
                self._queue_control(envelope.control)
            return
        if envelope.channel_name is not None:
            connection = self.registry.get(envelope.channel_name)
            if connection is not None:
                connection.enqueue(frame)
            return
        if topic.startswith("group:"):
            targets: Iterable[Connection] = self.registry.group_members(topic[6:])
        elif topic.startswith("user:"):
            targets = self.registry.user_connections(topic[5:])
        elif topic == routing.BROADCAST_TOPIC:
            targets = self.registry.connections()
        else:
            return
        # Framed once for every fast-path recipient (see fastapi_channels.fastpath).
        wire = encode_frame(frame) if self._fast_channels else None
        exclude = envelope.exclude
        if exclude:
            for connection in targets:
                if connection.channel_name not in exclude:
                    connection.enqueue(frame, wire)
        else:
            for connection in targets:
                connection.enqueue(frame, wire)

    def _queue_control(self, command: dict[str, Any]) -> None:
        try:
            self._control.put_nowait(command)
        except asyncio.QueueFull:
            logger.error("control queue full (%d): dropped %r", CONTROL_QUEUE_SIZE, command.get("op"))

    async def _control_worker(self) -> None:
        while True:
            command = await self._control.get()
            try:
                await self._run_control(command)
            except BaseError as exc:
                logger.info("control %s refused: %s", command.get("op"), exc.error_code)
            except Exception:
                logger.exception("control %r failed", command.get("op"))

    async def _run_control(self, command: dict[str, Any]) -> None:
        op = command.get("op")
        channel = command.get("channel")
        if not isinstance(channel, str) or channel not in self.registry:
            return
        group = command.get("group")
        if op == "join" and isinstance(group, str):
            await self.join_group(channel, group)
        elif op == "leave" and isinstance(group, str):
            await self.leave_group(channel, group)
        elif op == "disconnect":
            code = command.get("code")
            await self.disconnect(channel, code if isinstance(code, int) else CloseCode.NORMAL_CLOSURE)

    async def _remote(self, connection_id: str, command: dict[str, Any]) -> None:
        owner = self._owner(connection_id)
        if owner is None or owner == self.server_id:
            raise ConnectionError(
                "no such connection",
                error_code="CONNECTION_NOT_FOUND",
                retryable=False,
                connection_id=connection_id,
            )
        await self._send_control(owner, command)

    async def _send_control(self, owner: str, command: dict[str, Any]) -> None:
        await self._publish(routing.inbox_topic(owner), routing.encode_control(command))

    @staticmethod
    def _owner(connection_id: str) -> str | None:
        try:
            return routing.server_of(connection_id)
        except BaseError:
            return None

    # --- subscriptions -------------------------------------------------------------------------
    def _wants(self, topic: str) -> bool:
        """Whether this server needs `topic` now: it has a member, a user, or it is its own."""
        if topic.startswith("group:"):
            return self.registry.has_group(topic[6:])
        if topic.startswith("user:"):
            return self.registry.has_user(topic[5:])
        return self._started and topic in (self._inbox, routing.BROADCAST_TOPIC)

    async def _reconcile(self, topic: str) -> None:
        """Make the backend subscription of `topic` match what the registry needs right now.

        Serialised, and decided after the lock is held, so a join and a leave racing on the
        same group always end in the state the registry has last.
        """
        async with self._subscription_lock:
            want = self._wants(topic)
            if want and topic not in self._subscribed:
                await self.backend.subscribe(topic)
                self._subscribed.add(topic)
            elif not want and topic in self._subscribed:
                self._subscribed.discard(topic)
                await self.backend.unsubscribe(topic)

    @property
    def subscribed_topics(self) -> frozenset[str]:
        """*Local*: the topics this server listens to (grows with groups and users, not connections)."""
        return frozenset(self._subscribed)

    # --- background loops ----------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        interval = self.config.WS_HEARTBEAT_INTERVAL
        timeout = self.config.WS_HEARTBEAT_TIMEOUT
        period = sweep_period(interval, timeout)
        while True:
            await asyncio.sleep(period)
            try:
                self.heartbeat_sweep(time.monotonic())
            except Exception:
                logger.exception("heartbeat sweep failed")

    def heartbeat_sweep(self, now: float) -> None:
        """One pass of the sweeper: ping idle connections, close silent ones (4000)."""
        decisions = plan(
            list(self.registry), now, self.config.WS_HEARTBEAT_INTERVAL, self.config.WS_HEARTBEAT_TIMEOUT
        )
        if decisions.ping:
            frame = self.encode({"type": "ping", "timestamp": time.time()})
            wire = encode_frame(frame) if self._fast_channels else None
            for connection in decisions.ping:
                connection.last_ping = now
                connection.enqueue(frame, wire)
            self.counters.heartbeat_pings += len(decisions.ping)
        for connection in decisions.expire:
            self.counters.heartbeat_closes += 1
            logger.info("closing %s: no frame for %.1fs", connection.channel_name, now - connection.last_seen)
            connection.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", flush=False)

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.WS_STATS_INTERVAL)
            stats = self.get_stats()
            logger.info(
                "stats connections=%d users=%d groups=%d sent=%d dropped=%d slow_closes=%d hb_closes=%d",
                stats["connections"],
                stats["users"],
                stats["groups"],
                stats["messages_sent"],
                stats["messages_dropped"],
                stats["slow_consumer_closes"],
                stats["heartbeat_closes"],
            )

    # --- statistics ----------------------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """*Local*: this server's connections, users, groups and counters since start."""
        return {
            "server_id": self.server_id,
            "backend": self.backend.name,
            "started": self._started,
            "uptime_seconds": 0.0 if self.started_at is None else round(time.time() - self.started_at, 3),
            "connections": len(self.registry),
            "users": self.registry.user_count(),
            "groups": self.registry.group_count(),
            "subscriptions": len(self._subscribed),
            "buffered_messages": sum(c.buffered_messages for c in self.registry),
            **self.counters.as_dict(),
        }
