"""ConnectionManager: the façade an app, a REST handler or a background job talks to.

It encodes each send once, publishes it on one topic, and fans out what arrives on its
subscribed topics to local connections (see DESIGN §3). Every cluster send knows whether it
reached every server with members of its target: a shortfall is counted, logged, passed to
`on_delivery_shortfall` hooks and, with WS_STRICT_DELIVERY, raised as DeliveryError.
It owns the background tasks (heartbeat sweeper, stats logger, control worker), created on
the loop that runs `start_tasks()`, so one manager can serve successive event loops.
Methods marked *local* look at this server only; *cluster-wide* ones ask the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.websockets import WebSocket, WebSocketState

from fastapi_channels import routing
from fastapi_channels.backends.base import Admission, BaseBackend, Delivery
from fastapi_channels.backends.memory import MemoryBackend
from fastapi_channels.config import WSConfig
from fastapi_channels.connection import Connection, InboundLimit, WriteCoalescer
from fastapi_channels.control import RemoteCalls, reply_for
from fastapi_channels.exceptions import (
    AuthorizationError,
    BackendError,
    BaseError,
    CloseCode,
    ConnectionError,
    DeliveryError,
    InvalidHandshakeName,
    ValidationError,
)
from fastapi_channels.framing import encode_frame
from fastapi_channels.health import Health
from fastapi_channels.health import judge as judge_health
from fastapi_channels.heartbeat import plan, sweep_period
from fastapi_channels.history import HistoryPage, HistoryPolicy, JoinResult, split_positioned_body
from fastapi_channels.messages import to_frame
from fastapi_channels.ordering import EchoBarrier
from fastapi_channels.recovery import HistoryGroups, parse_position
from fastapi_channels.registry import ConnectionRegistry
from fastapi_channels.serializers import get_serializer
from fastapi_channels.stats import Counters

__all__ = ["ConnectionManager", "DeliveryShortfall", "get_manager"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

JoinAuthorizer = Callable[[Connection, str], "bool | Awaitable[bool]"]
"""Decides whether a connection may join a group; runs on the server that owns the connection."""

_default_manager: ConnectionManager | None = None

CONTROL_QUEUE_SIZE = 10_000
"""Control commands from other servers waiting to run here; beyond it they are dropped and
logged (their callers time out with REMOTE_TIMEOUT)."""

TASK_RESTARTS_PER_MINUTE = 5
"""A background loop that dies is logged and restarted, at most this often."""


@dataclass(frozen=True, slots=True)
class DeliveryShortfall:
    """A cluster send that reached fewer servers than had members of its topic.

    `expected` is None when it could not be known (Redis lost its state and the servers are
    still writing theirs back). Members on the servers not reached missed the message.
    """

    topic: str
    reached: int
    expected: int | None


ShortfallHook = Callable[[DeliveryShortfall], Any]


class _Claim:
    """A channel name in use on this server: from the start of its connect to the end of its
    release, so a reused connection id never touches its predecessor's state."""

    __slots__ = ("_released", "connection", "is_released")

    def __init__(self) -> None:
        self.connection: Connection | None = None  # set once admitted
        self.is_released = False
        # Made only when a connect waits for this claim: an asyncio.Event on every
        # connection would cost a deque (about 760 bytes) for a rare wait.
        self._released: asyncio.Future[None] | None = None

    def release(self) -> None:
        self.is_released = True
        if self._released is not None and not self._released.done():
            self._released.set_result(None)

    async def wait_released(self) -> None:
        if self.is_released:
            return
        if self._released is None:
            self._released = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._released)  # a waiter's timeout must not cancel it for others


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
        self.strict_delivery = self.config.WS_STRICT_DELIVERY
        self._inbox = routing.inbox_topic(self.server_id)
        self._started = False
        self._stopping = False
        # Loop-bound objects (locks, queues, tasks) are made by start_tasks() on its own loop.
        self._start_lock: asyncio.Lock | None = None
        self._start_lock_loop: asyncio.AbstractEventLoop | None = None
        self._control: asyncio.Queue[dict[str, Any]] | None = None
        self._subscribed: set[str] = set()
        self._admitting: dict[str, int] = {}  # user id -> connects in flight (their topic is wanted)
        self._claims: dict[str, _Claim] = {}
        self._joins: dict[tuple[str, str], asyncio.Future[JoinResult]] = {}  # joins in flight
        self._fast_channels: set[str] = set()  # local connections on the fast path
        self.authorize_join = authorize_join
        self._coalescer = WriteCoalescer(self.counters.outbound_wait)
        self._inbound = InboundLimit(self.config.WS_MAX_MESSAGE_SIZE, self._refuse_oversized)
        self._calls = RemoteCalls()
        self._echoes = EchoBarrier()
        self._ordered = not self.backend.delivers_synchronously
        self._echo_timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._extra_loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}
        self._restarts: dict[str, list[float]] = {}
        self._backend_hooks: list[Callable[[str, BaseException | None], Any]] = []
        self._shortfall_hooks: list[ShortfallHook] = []
        self._history_hooks: list[Callable[[str], Any]] = []
        self.history_policy = HistoryPolicy(
            list(self.config.WS_HISTORY_GROUPS), self.config.WS_HISTORY_SIZE, self.config.WS_HISTORY_TTL
        )
        self._history = HistoryGroups(
            self.history_policy,
            self.backend,
            self.registry,
            self.counters,
            fast_path=lambda: bool(self._fast_channels),
            on_lost=self._history_lost,
            hold_limit=self.config.WS_OUTBOUND_QUEUE_MESSAGES,
        )
        self._hook_tasks: set[asyncio.Task[Any]] = set()
        self.backend.add_event_listener(self._on_backend_event)
        self.backend.set_eviction_handler(self._evicted)
        if _default_manager is None:
            _default_manager = self

    @property
    def ws_config(self) -> WSConfig:
        return self.config

    # --- lifecycle -----------------------------------------------------------------------------
    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._start_lock is None or self._start_lock_loop is not loop:
            self._start_lock, self._start_lock_loop = asyncio.Lock(), loop
        return self._start_lock

    async def start_tasks(self) -> None:
        """Connect the backend, subscribe this server's inbox and broadcast, start the sweepers."""
        async with self._lock():
            if self._started:
                return
            self._control = asyncio.Queue(maxsize=CONTROL_QUEUE_SIZE)
            self._calls = RemoteCalls()
            self._echoes = EchoBarrier()
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
            self._tasks = []
            self._spawn("control", self._control_worker)
            if self.config.WS_ENABLE_HEARTBEAT:
                self._spawn("heartbeat", self._heartbeat_loop)
            if self.config.LOG_STATS:
                self._spawn("stats", self._stats_loop)
            for name, body in self._extra_loops.items():
                self._spawn(name, body)
            self.started_at = time.time()
            logger.info("fastapi-channels %s started on the %s backend", self.server_id, self.backend.name)

    def add_background_task(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `body()` as one more background loop of this manager, e.g. a metrics exporter.

        Started by `start_tasks` (at once if already started), cancelled by `stop_tasks`, and
        logged and restarted like the manager's own loops if it dies. One loop per name.
        """
        if name in self._extra_loops:
            raise ValueError(f"a background task named {name!r} exists already")
        self._extra_loops[name] = body
        if self._started and not self._stopping:
            self._spawn(name, body)

    def _spawn(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a background loop; if it dies it is logged and restarted (a bounded number of times)."""
        task = asyncio.get_running_loop().create_task(body(), name=f"fastapi-channels-{name}")
        self._tasks.append(task)

        def done(finished: asyncio.Task[None]) -> None:
            if finished in self._tasks:
                self._tasks.remove(finished)
            if finished.cancelled() or not self._started or self._stopping:
                return
            error = finished.exception()
            now = time.monotonic()
            recent = [t for t in self._restarts.get(name, []) if now - t < 60] + [now]
            self._restarts[name] = recent
            if len(recent) > TASK_RESTARTS_PER_MINUTE:
                logger.critical("background task %s keeps dying; not restarting it", name, exc_info=error)
                return
            logger.error("background task %s died; restarting it", name, exc_info=error)
            self._spawn(name, body)

        task.add_done_callback(done)

    async def stop_tasks(self, timeout: float = 10.0) -> None:
        """Close every connection with 1001, end every background task, release backend state."""
        async with self._lock():
            if not self._started:
                return
            self._stopping = True
            try:
                closers = [c.close(CloseCode.GOING_AWAY, "server shutting down") for c in list(self.registry)]
                if closers:
                    _, pending = await asyncio.wait(closers, timeout=timeout)
                    # Past the timeout a close skips what it still waits for (its hook, its
                    # flush) and only unregisters and sends 1001, each bounded; a second
                    # cancel ends it where it is. Then nothing of it outlives the backend.
                    for wait in (self.config.WS_CLOSE_TIMEOUT + 1.0, 1.0):
                        for closer in pending:
                            closer.cancel()
                        if pending:
                            _, pending = await asyncio.wait(pending, timeout=wait)
                    for connection in list(self.registry):  # closes that ended before unregistering
                        self._forget_now(connection)
                tasks, self._tasks = self._tasks, []
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.wait(tasks, timeout=max(timeout, 1.0))
                self._calls.fail_all(BackendError("the server stopped", error_code="SERVER_SHUTTING_DOWN"))
                self._echoes.forget_all()
                self._history.stop()
                if self._echo_timer is not None:
                    self._echo_timer.cancel()
                    self._echo_timer = None
                self._subscribed.clear()
                await self.backend.stop()
            finally:
                self._started = False
                self._stopping = False
            logger.info("fastapi-channels %s stopped", self.server_id)

    def on_backend_event(self, hook: Callable[[str, BaseException | None], Any]) -> None:
        """Call `hook(event, error)` when the backend is "lost" and when it has "recovered".

        Messages published to this server's topics during an outage may be lost: the senders
        are told (a delivery shortfall), and after "recovered" an app can tell its clients to
        resync (e.g. reload recent history). `hook` may be a plain or async function.
        """
        self._backend_hooks.append(hook)

    def enable_history(self, *patterns: str) -> None:
        """Make the groups matching these glob patterns history groups (as WS_HISTORY_GROUPS)."""
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError("a history pattern is a non-empty string, e.g. 'room.*'")
            self.history_policy.add(pattern)

    def on_history_lost(self, hook: Callable[[str], Any]) -> None:
        """Call `hook(group)` when this server finds a local history group's history lost (a new
        epoch: Redis lost it, or it expired): its clients cannot recover and should resync."""
        self._history_hooks.append(hook)

    def _history_lost(self, group: str) -> None:
        logger.warning("the history of group %s was lost (new epoch): its clients should resync", group)
        self._call_hooks(self._history_hooks, group)

    def on_delivery_shortfall(self, hook: ShortfallHook) -> None:
        """Call `hook(shortfall)` (a `DeliveryShortfall`) for every send of this server that did
        not reach every server with members of its target. Plain or async function."""
        self._shortfall_hooks.append(hook)

    def _call_hooks(self, hooks: Iterable[Callable[..., Any]], *args: Any) -> None:
        for hook in tuple(hooks):
            try:
                result = hook(*args)
            except Exception:
                logger.exception("hook %r failed", hook)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._hook_tasks.add(task)
                task.add_done_callback(self._hook_done)

    def _hook_done(self, task: asyncio.Task[Any]) -> None:
        self._hook_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("async hook failed", exc_info=task.exception())

    def _on_backend_event(self, event: str, error: BaseException | None) -> None:
        if event == "lost":
            self.counters.backend_outages += 1
            # Nothing published before the loss will come back through the reader.
            self._echoes.forget_all()
        elif event == "recovered":
            # History groups missed what was published meanwhile: read it back from the store.
            self._history.resync()
        self._call_hooks(self._backend_hooks, event, error)

    # --- connections ---------------------------------------------------------------------------
    async def connect(
        self,
        websocket: WebSocket,
        user_id: str | None = None,
        connection_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        subprotocol: str | None = None,
    ) -> Connection:
        """Accept `websocket` (with `subprotocol`, if given) and register it, or refuse it with
        ConnectionError.

        Over a limit the socket is accepted and closed with 1013 (the client sees the code);
        a bad origin, user id or connection id is refused at the handshake (HTTP 403). Raised out of the
        endpoint, Starlette turns the error into that close without logging a traceback.
        A `connection_id` whose connection is open here is refused (DUPLICATE_CONNECTION_ID,
        1013); one whose connection is closing is reused once that one has released everything.
        """
        self._check_origin(websocket)
        if user_id is not None:
            user_id = self._handshake_name("user", str(user_id))
        if connection_id is not None:
            connection_id = self._handshake_name("connection", connection_id)
        if not self._started:
            await self.start_tasks()
        if self._stopping:
            await self._refuse(websocket)
            raise ConnectionError(
                "server is shutting down", error_code="SERVER_SHUTTING_DOWN", ws_code=CloseCode.GOING_AWAY
            )
        channel_name = routing.new_channel_name(self.server_id, connection_id)
        claim = await self._claim(websocket, channel_name)
        try:
            connection = await self._admit(websocket, channel_name, user_id, metadata, claim, subprotocol)
        except BaseException:
            if claim.connection is None:
                self._unclaim(channel_name, claim)
            raise
        self.counters.connections_opened += 1
        return connection

    async def _claim(self, websocket: WebSocket, channel_name: str) -> _Claim:
        """Reserve `channel_name` for a connect, waiting for a predecessor that is closing."""
        for _ in range(3):
            held = self._claims.get(channel_name)
            if held is None:
                claim = self._claims[channel_name] = _Claim()
                return claim
            previous = held.connection
            if previous is None or previous.is_open:
                break  # being admitted, or open: the id is in use
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.wait_released(), 2 * self.config.WS_CLOSE_TIMEOUT + 1)
        self.counters.connections_refused += 1
        await self._refuse(websocket)
        raise ConnectionError(
            "connection id already in use", error_code="DUPLICATE_CONNECTION_ID", retryable=True
        )

    def _unclaim(self, channel_name: str, claim: _Claim) -> None:
        if self._claims.get(channel_name) is claim:
            del self._claims[channel_name]
        claim.release()

    async def _admit(
        self,
        websocket: WebSocket,
        channel_name: str,
        user_id: str | None,
        metadata: dict[str, Any] | None,
        claim: _Claim,
        subprotocol: str | None,
    ) -> Connection:
        config = self.config
        user_topic = routing.user_topic(user_id) if user_id is not None else None
        if user_id is not None:
            self._admitting[user_id] = self._admitting.get(user_id, 0) + 1
        try:
            # Take the slot first, then listen: the servers that listen to a user are always
            # among those counted for it, so a send that misses one is seen as a shortfall
            # (at worst a false alarm while this connect is between the two steps).
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
            await self._drop_admitting(user_id)
            self.counters.connections_refused += 1
            await self._refuse(websocket)
            raise ConnectionError(
                "the backend is unavailable",
                error_code="BACKEND_UNAVAILABLE",
                user_id=user_id,
                component="manager",
            ) from exc
        except BaseException:
            await self._drop_admitting(user_id)
            raise
        if admission is not Admission.ACCEPTED:
            await self._drop_admitting(user_id)
            self.counters.connections_refused += 1
            await self._refuse(websocket)
            raise self._refusal(admission, user_id)
        if user_topic is not None:
            try:
                await self._reconcile(user_topic)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await self.backend.remove_connection(channel_name, user_id)
                await self._drop_admitting(user_id)
                if not isinstance(exc, BaseError):
                    raise
                self.counters.connections_refused += 1
                await self._refuse(websocket)
                raise ConnectionError(
                    "the backend is unavailable",
                    error_code="BACKEND_UNAVAILABLE",
                    user_id=user_id,
                    component="manager",
                ) from exc
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
            inbound=self._inbound,
        )
        try:
            if websocket.application_state is WebSocketState.CONNECTING:
                await websocket.accept(subprotocol=subprotocol)
        except BaseException:
            await self._drop_admitting(user_id)
            with contextlib.suppress(Exception):
                await self.backend.remove_connection(channel_name, user_id)
            raise
        if self._stopping or not self._started:
            # stop_tasks began while this connect was admitted: it closes what the registry
            # holds, so a connection registered from now on would outlive the stop, open and
            # counted nowhere. Refused as a connect during the stop is (1001).
            await self._drop_admitting(user_id)
            with contextlib.suppress(Exception):
                await self.backend.remove_connection(channel_name, user_id)
            self.counters.connections_refused += 1
            raise ConnectionError(
                "server is shutting down", error_code="SERVER_SHUTTING_DOWN", ws_code=CloseCode.GOING_AWAY
            )
        # No await from the check above to here: stop_tasks either saw it stopping, or closes it.
        self.registry.add(connection)
        claim.connection = connection
        if user_id is not None:
            self._admitting[user_id] -= 1
            if not self._admitting[user_id]:
                del self._admitting[user_id]
        connection.start()
        if connection.uses_fast_path:
            self._fast_channels.add(channel_name)
            if self.config.WS_ENABLE_HEARTBEAT:
                connection.hand_keepalive_to_heartbeat()
        return connection

    async def _drop_admitting(self, user_id: str | None) -> None:
        if user_id is None:
            return
        left = self._admitting.get(user_id, 0) - 1
        if left > 0:
            self._admitting[user_id] = left
        else:
            self._admitting.pop(user_id, None)
        with contextlib.suppress(Exception):
            await self._reconcile(routing.user_topic(user_id))

    def _refusal(self, admission: Admission, user_id: str | None) -> ConnectionError:
        config = self.config
        if admission is Admission.UNVERIFIED:
            return ConnectionError(
                "the cluster state is being rebuilt after a backend outage",
                error_code="BACKEND_UNAVAILABLE",
                user_id=user_id,
                component="manager",
            )
        scope, limit = (
            ("user", config.MAX_CONNECTIONS_PER_CLIENT)
            if admission is Admission.USER_LIMIT
            else ("total", config.MAX_TOTAL_CONNECTIONS)
        )
        return ConnectionError(
            f"connection limit reached ({scope}: {limit})",
            error_code="CONNECTION_LIMIT_EXCEEDED",
            details={"scope": scope, "limit": limit},
            user_id=user_id,
            component="manager",
        )

    def _evicted(self, channel_name: str, admission: Admission) -> None:
        """The backend could not write this connection back under the limits: close it."""
        connection = self.registry.get(channel_name)
        if connection is not None:
            connection.close(CloseCode.TRY_AGAIN_LATER, "CONNECTION_LIMIT_EXCEEDED", flush=False)

    def _handshake_name(self, kind: str, name: object) -> str:
        """`name` if it keeps the name rule; else the handshake is refused (HTTP 403) with
        a ValidationError (INVALID_NAME), before anything is accepted or registered."""
        try:
            return routing.validate_name(kind, name)
        except ValidationError as exc:
            self.counters.connections_refused += 1
            raise InvalidHandshakeName(exc.message, details=exc.details, retryable=False) from None

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
        self, connection_id: str | Connection, code: int = CloseCode.NORMAL_CLOSURE, reason: str = ""
    ) -> None:
        """Close a connection (on whichever server owns it), leaving all its groups. Idempotent.

        Given the `Connection` itself (a local one), only that connection is closed: once it has
        let go of its id, a new connection may hold the same id (a reconnect with a custom
        `connection_id`), and a cleanup that looks it up by id would close the newcomer.

        For a connection on another server it returns once the owner has closed it, or at once
        when that server is gone (its connections with it). An owner that is alive but not
        listening raises ConnectionError(CONNECTION_NOT_FOUND, retryable): the connection may
        still be open.
        """
        if isinstance(connection_id, Connection):
            given = connection_id
            connection_id = given.channel_name
            if self.registry.get(connection_id) is not given:  # it let go of its id already
                given.close(code, reason)
                with contextlib.suppress(TimeoutError):
                    await given.wait_closed(timeout=2 * self.config.WS_CLOSE_TIMEOUT + 1)
                return
        connection = self.registry.get(connection_id)
        if connection is not None:
            if connection.is_open:  # a kick; a client that closed itself can be sent nothing
                # What was sent before (this server's group send still on its way back from
                # Redis, a personal frame held behind it, another server's send to one of its
                # groups, its user or everyone) reaches the client before the close: one
                # fence per partition.
                await self._own_sends_back()
                topics = [routing.group_topic(group) for group in connection.groups]
                topics.append(routing.broadcast_topic())  # the home partition: user, inbox, everyone
                await self.backend.fence(*topics)
            connection.close(code, reason)
            with contextlib.suppress(TimeoutError):
                await connection.wait_closed(timeout=2 * self.config.WS_CLOSE_TIMEOUT + 1)
            return
        owner = self._owner(connection_id)
        if owner is not None and owner != self.server_id:
            try:
                await self._request(
                    owner, {"op": "disconnect", "channel": connection_id, "code": int(code), "reason": reason}
                )
            except ConnectionError as exc:
                if exc.retryable:  # the owner is alive (or may be) and did not hear it
                    raise
                # The owner is gone, and its connections with it: disconnect is idempotent.

    async def _forget(self, connection: Connection) -> None:
        """Called once per connection when it has closed: drop it from every index and the cluster."""
        name = connection.channel_name
        if self.registry.get(name) is not connection:
            return
        removal = self.registry.remove(name)
        if removal is None:
            return
        self.counters.connections_closed += 1
        self._fast_channels.discard(name)
        try:
            await self._release(name, connection.user_id, removal.left_groups)
        finally:
            claim = self._claims.get(name)
            if claim is not None and claim.connection is connection:
                self._unclaim(name, claim)

    def _forget_now(self, connection: Connection) -> None:
        """`_forget` without its backend calls, for a close that `stop_tasks` had to end before
        it unregistered: the backend is stopping, and it releases this server's state whole."""
        name = connection.channel_name
        if self.registry.get(name) is connection and self.registry.remove(name) is not None:
            logger.warning("connection %s did not finish closing before the stop: dropped", name)
            self.counters.connections_closed += 1
            self._fast_channels.discard(name)
            claim = self._claims.get(name)
            if claim is not None and claim.connection is connection:
                self._unclaim(name, claim)

    async def _release(self, channel_name: str, user_id: str | None, groups: list[str]) -> None:
        """Stop listening, then uncount, step by step: one step failing never skips the others,
        and what Redis did not confirm is retried by the backend (the slot is never held)."""
        steps: list[Awaitable[None]] = []
        for group in groups:
            steps.append(self._reconcile(routing.group_topic(group)))
            steps.append(self.backend.group_discard(group, channel_name))
        if user_id is not None:
            steps.append(self._reconcile(routing.user_topic(user_id)))
        steps.append(self.backend.remove_connection(channel_name, user_id))
        for step in steps:
            try:
                await step
            except Exception as exc:
                logger.warning("releasing %s: a step failed (retried later): %s", channel_name, exc)

    def get_connection(self, connection_id: str) -> Connection | None:
        """*Local*: the connection with this channel name, if this server owns it."""
        return self.registry.get(connection_id)

    async def get_user_connections(self, user_id: str) -> list[Connection]:
        """*Local*: this server's connections of a user (a coroutine, as in the spec's API).

        Only the `Connection` objects this server owns: a user's connections on other servers
        are counted by `count_user_connections` and reached by `send_to_user`.
        """
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
    async def join_group(self, connection_id: str, group: str, since: Any = None) -> JoinResult:
        """Add a connection (owned by any server) to a group.

        Returns once a message published to the group afterwards is sure to reach it; for a
        connection on another server, once its owner did the join (its refusal is raised here).
        For a history group, `since=(epoch, offset)` (the client's last message) first replays
        exactly what came after it, if the group still holds all of it, then live messages:
        the result says whether it did (`recovered`), how many (`replayed`), and the group's
        position. Without `since` the join starts live and reports the starting position.
        """
        routing.validate_name("group", group)
        position = parse_position(since) if since is not None else None
        connection = self.registry.get(connection_id)
        if connection is None:
            command: dict[str, Any] = {"op": "join", "channel": connection_id, "group": group}
            if position is not None:
                command["since"] = list(position)
            answer = await self._remote(connection_id, command)
            return JoinResult(**answer) if isinstance(answer, dict) else JoinResult()
        return await self._join(connection, group, position)

    async def _join(
        self, connection: Connection, group: str, position: tuple[str, int] | None, deadline: float = 0.0
    ) -> JoinResult:
        key = (connection.channel_name, group)
        running = self._joins.get(key)
        if running is not None:
            # A second join of the same connection and group returns with the first, never
            # before its subscription is confirmed (and fails if it fails).
            return await asyncio.shield(running)
        future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        self._joins[key] = future
        try:
            result = await self._join_local(connection, group, position, deadline)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a second caller may never come
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._joins[key]

    async def _join_local(
        self, connection: Connection, group: str, position: tuple[str, int] | None, deadline: float
    ) -> JoinResult:
        connection_id = connection.channel_name
        history = self.history_policy.applies(group)
        if group in connection.groups:
            return await self._history.replay(connection, group, None) if history else JoinResult()
        if not connection.is_open:
            raise _closed_during_join(connection_id)
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
            if self.registry.get(connection_id) is not connection or not connection.is_open:
                raise _closed_during_join(connection_id)  # closed while the authorizer ran
        if deadline and time.time() > deadline:
            # A remote caller already gave up (REMOTE_TIMEOUT): do not do it behind its back.
            raise BackendError("the caller's deadline passed", error_code="REMOTE_TIMEOUT")
        topic = routing.group_topic(group)
        # Count first, then listen: the servers that listen to a group are always among those
        # counted for it, so a send that misses one is seen as a shortfall (at worst a false
        # alarm while this join is between the two steps).
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
        if self.registry.get(connection_id) is not connection:
            # Closed while the backend answered: its cleanup ran without this entry.
            with contextlib.suppress(Exception):
                await self.backend.group_discard(group, connection_id)
            raise _closed_during_join(connection_id)
        if history:
            self._history.prepare(group)
            if position is not None:
                # Live frames wait for the replay from here on: none missed, none twice.
                self._history.hold_for_replay(connection, group)
        self.registry.join(connection_id, group)
        try:
            await self._reconcile(topic)
        except BaseException:
            self._history.drop_hold(connection, group)
            await self._undo_join(connection, group)
            raise
        if self.registry.get(connection_id) is not connection or group not in connection.groups:
            # Closed (or left) while the subscription was confirmed: its cleanup ran already.
            self._history.drop_hold(connection, group)
            if self.registry.get(connection_id) is not connection:
                raise _closed_during_join(connection_id)
            return JoinResult()  # joined, then a leave that came meanwhile took it out again
        if not history:
            return JoinResult()
        try:
            return await self._backend_call(self._history.replay(connection, group, position))
        except BaseError as exc:
            # Joined, but the store did not answer: the client is told it was not recovered.
            logger.warning("history of %s unreadable at join: %s", group, exc.error_code)
            return JoinResult()

    async def history(self, group: str, since: Any = None, limit: int = 100) -> HistoryPage:
        """*Cluster-wide*: a history group's retained messages after `since` ((epoch, offset);
        all retained ones when None or of another epoch), oldest first, as members got them,
        and the group's current epoch and offset. ValidationError for a group without history."""
        routing.validate_name("group", group)
        if not self.history_policy.applies(group):
            raise ValidationError(
                f"group {group!r} keeps no history (see WS_HISTORY_GROUPS)",
                error_code="NOT_A_HISTORY_GROUP",
                details={"group": group},
            )
        position = parse_position(since) if since is not None else None
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValidationError("limit must be an integer >= 0", error_code="INVALID_LIMIT")
        return await self._backend_call(self._history.page(group, position, limit))

    async def _undo_join(self, connection: Connection, group: str) -> None:
        if self.registry.get(connection.channel_name) is connection:
            self.registry.leave(connection.channel_name, group)
        with contextlib.suppress(Exception):
            await self._reconcile(routing.group_topic(group))
        with contextlib.suppress(Exception):  # a failed discard is retried by the backend
            await self.backend.group_discard(group, connection.channel_name)

    async def leave_group(self, connection_id: str, group: str) -> None:
        """Remove a connection (owned by any server) from a group. Idempotent.

        For a connection on another server it returns once the owner did the leave.
        """
        routing.validate_name("group", group)
        connection = self.registry.get(connection_id)
        if connection is None:
            await self._remote(connection_id, {"op": "leave", "channel": connection_id, "group": group})
            return
        if group not in connection.groups:
            return
        # A send made to the group before this leave reaches the member first: on Redis it
        # comes back through the reader after the call returned, this server's own sends and
        # any other server's alike (a fence through the group's partition: one round trip).
        # On the memory backend a send was queued before it returned: nothing waits there.
        await self._own_sends_back()
        await self.backend.fence(routing.group_topic(group))
        if group not in connection.groups or self.registry.get(connection_id) is not connection:
            return  # it left, or closed, meanwhile
        emptied = self.registry.leave(connection_id, group)
        # Stop listening first, then uncount (see join): a send in between is a false alarm,
        # never a silent loss. A discard Redis did not confirm is retried by the backend.
        try:
            if emptied:
                await self._reconcile(routing.group_topic(group))
        finally:
            await self._backend_call(self.backend.group_discard(group, connection_id))

    # --- sending -------------------------------------------------------------------------------
    def encode(self, message: Any) -> str | bytes:
        """The frame every recipient of `message` gets: built once per send."""
        return to_frame(message, self.serializer)

    async def _own_sends_back(self) -> None:
        """Until this server's cluster sends issued so far have come back through its reader
        and been queued to their local members (or can no longer: the topic was dropped, the
        reader lost its connection, or the barrier's max_wait passed). At once when none is
        on its way, and always on the memory backend."""
        if not self._ordered:
            return
        passed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def release() -> None:
            if not passed.done():
                passed.set_result(None)

        if self._echoes.defer(release):
            await passed

    def _refuse_oversized(self, connection: Connection, size: int) -> None:
        """A client message over WS_MAX_MESSAGE_SIZE that the server let through: the app never
        reads it; the client gets MESSAGE_TOO_LARGE, as from `ValidationMiddleware`."""
        limit = self.config.WS_MAX_MESSAGE_SIZE
        error = ValidationError(
            f"message of {size} bytes exceeds the limit of {limit}",
            error_code="MESSAGE_TOO_LARGE",
            ws_code=CloseCode.MESSAGE_TOO_BIG,
            details={"size": size, "max_message_size": limit},
            connection_id=connection.channel_name,
            user_id=connection.user_id,
            component="manager",
        )
        self.send_local(connection, self.encode(error.to_response().to_dict()))

    def send_local(self, connection: Connection, frame: str | bytes) -> bool:
        """Queue an encoded frame on a local connection, after this server's cluster sends
        still on their way back (one order per sender); False when the connection refused it."""
        if self._ordered and self._echoes.defer(lambda: connection.enqueue(frame)):
            return connection.is_open
        return connection.enqueue(frame)

    async def send_personal(self, connection_id: str, message: Any) -> bool:
        """Send to one connection by channel name, on whichever server owns it.

        True when the frame was queued here or reached the owner's server; False when the
        connection is gone (here, or registered on no server: nothing is published then), or
        here refused the frame.
        """
        frame = self.encode(message)
        connection = self.registry.get(connection_id)
        if connection is not None:
            return self.send_local(connection, frame)
        owner = self._owner(connection_id)
        if owner is None or owner == self.server_id:
            return False
        delivery = await self._publish(
            routing.inbox_topic(owner),
            routing.encode_personal(connection_id, frame),
            to_connection=connection_id,
            shortfall_raises=False,
        )
        return delivery.reached > 0

    async def send_to_group(self, group: str, message: Any, *, history: bool = True) -> None:
        """Send to every member of a group on every server: one publish whatever its size.

        To a history group the message is stored and numbered (`offset`, `epoch` added to
        it); `history=False` sends an ephemeral one (e.g. typing) that is neither.
        """
        group = routing.validate_name("group", group)
        await self._send_group(group, message, frozenset(), history)

    async def _send_group(self, group: str, message: Any, exclude: frozenset[str], history: bool) -> None:
        topic = routing.group_topic(group)
        if history and self.history_policy.applies(group):
            # Positions go into a JSON object: a str message (sent verbatim, even if it looks
            # like JSON) or a bytes one cannot carry them.
            raw = isinstance(message, str | bytes | bytearray | memoryview)
            frame = b"" if raw else self.encode(message)
            body = split_positioned_body(frame, group)
            await self._publish(topic, b"", store=(group, body, exclude))
            return
        await self._publish(topic, routing.encode_frame_envelope(self.encode(message), exclude))

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
        """Send to a group minus the listed channel names (typically the sender).

        To a history group it is stored and numbered like any other message: the excluded
        connection sees a gap at that offset, and a replay after it re-joins includes it.

        `exclude_connection_id=` is the spec's name for one channel name to skip; pass it or
        `exclude` (one channel name or several), not both.
        """
        names = routing.excluded_channels(exclude, exclude_connection_id)
        await self._send_group(routing.validate_name("group", group), message, frozenset(names), history)

    async def send_to_user(self, user_id: str, message: Any) -> int:
        """Send to every connection of a user on every server; returns how many it addressed."""
        user_id = routing.validate_name("user", str(user_id))
        frame = self.encode(message)
        envelope = routing.encode_frame_envelope(frame)
        topic = routing.user_topic(user_id)
        delivery = await self._publish(topic, envelope, to_user=user_id)
        return delivery.connections

    async def broadcast(self, message: Any) -> None:
        """Send to every connection on every server."""
        frame = self.encode(message)
        await self._publish(routing.BROADCAST_TOPIC, routing.encode_frame_envelope(frame))

    async def _publish(
        self,
        topic: str,
        envelope: bytes,
        *,
        to_user: str | None = None,
        to_connection: str | None = None,
        shortfall_raises: bool = True,
        store: tuple[str, str, frozenset[str]] | None = None,
    ) -> Delivery:
        """Publish one envelope, counted, in order with local sends, checked for a shortfall.

        With `store` (group, JSON object text, excluded channels) the message goes to the
        group's history in the same backend operation, and `envelope` is ignored.
        """
        tag = b""
        seq = 0
        if self._ordered and topic in self._subscribed and self.backend.listening(topic):
            # Our own members get it back through the reader: number it so local sends wait.
            seq = self._echoes.issue(topic, time.monotonic())
            tag = routing.tag_envelope(b"", self.server_id, seq)
            self._arm_echo_timer()
        publish: Awaitable[Delivery]
        if store is not None:
            group, body, exclude = store
            policy = self.history_policy
            publish = self._stored(
                self.backend.publish_history(
                    topic, group, tag, routing.exclusion_header(exclude), body, policy.size, policy.ttl
                )
            )
        elif to_user is not None:
            publish = self.backend.publish_to_user(topic, to_user, tag + envelope)
        elif to_connection is not None:
            publish = self.backend.publish_personal(topic, to_connection, tag + envelope)
        else:
            publish = self.backend.publish(topic, tag + envelope)
        try:
            delivery = await self._backend_call(publish)
        except BaseError:
            self.counters.publish_failures += 1
            if seq:
                self._echoes.cancel(seq)
            raise
        self.counters.messages_published += 1
        if not delivery.complete:
            self._shortfall(topic, delivery, raises=shortfall_raises)
        return delivery

    @staticmethod
    async def _stored(publish: Awaitable[tuple[Delivery, int, str]]) -> Delivery:
        delivery, _, _ = await publish
        return delivery

    def _shortfall(self, topic: str, delivery: Delivery, *, raises: bool) -> None:
        self.counters.delivery_shortfalls += 1
        logger.warning(
            "delivery shortfall on %s: reached %d of %s servers with members",
            topic,
            delivery.reached,
            "an unknown number of" if delivery.expected is None else delivery.expected,
        )
        self._call_hooks(self._shortfall_hooks, DeliveryShortfall(topic, delivery.reached, delivery.expected))
        if self.strict_delivery and raises:
            raise DeliveryError(
                f"{topic} reached {delivery.reached} of "
                f"{'?' if delivery.expected is None else delivery.expected} servers with members",
                details={"topic": topic, "reached": delivery.reached, "expected": delivery.expected},
                component="manager",
            )

    def _arm_echo_timer(self) -> None:
        if self._echo_timer is None:
            self._echo_timer = asyncio.get_running_loop().call_later(
                self._echoes.max_wait, self._expire_echoes
            )

    def _expire_echoes(self) -> None:
        self._echo_timer = None
        self._echoes.expire(time.monotonic())
        if not self._echoes.idle:
            self._arm_echo_timer()

    async def _backend_call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except BaseError:
            raise
        except Exception as exc:
            raise BackendError(
                f"backend call failed: {type(exc).__name__}: {exc}", component="backend"
            ) from exc

    # --- receiving from the backend ------------------------------------------------------------
    def _on_backend_message(self, topic: str, payload: bytes) -> None:
        """Fan a topic's envelope out to local connections: one non-blocking enqueue each."""
        try:
            envelope = routing.decode_envelope(payload)
        except (ValueError, UnicodeDecodeError):
            self.counters.backend_messages_invalid += 1
            logger.warning("dropped a malformed envelope on %s", topic)
            return
        try:
            self._fan_out(topic, envelope)
        finally:
            if envelope.origin == self.server_id and envelope.seq:
                self._echoes.echoed(envelope.seq)

    def _fan_out(self, topic: str, envelope: routing.Envelope) -> None:
        frame = envelope.frame
        if frame is None:
            if envelope.control is not None and topic == self._inbox:
                self._on_control(envelope.control)
            return
        if envelope.channel_name is not None:
            connection = self.registry.get(envelope.channel_name)
            if connection is not None:
                connection.enqueue(frame)
            return
        if topic.startswith("group:"):
            position = envelope.position
            if position is not None:
                self._history.on_frame(topic[6:], position[0], position[1], frame, envelope.exclude)
                return
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

    # --- commands between servers ----------------------------------------------------------------
    def _on_control(self, command: dict[str, Any]) -> None:
        if command.get("op") == "reply":
            self._calls.settle(command)
            return
        queue = self._control
        if queue is None:
            return
        try:
            queue.put_nowait(command)
        except asyncio.QueueFull:
            logger.error("control queue full (%d): dropped %r", CONTROL_QUEUE_SIZE, command.get("op"))

    async def _control_worker(self) -> None:
        queue = self._control
        assert queue is not None
        while True:
            command = await queue.get()
            error: BaseError | None = None
            result: dict[str, Any] | None = None
            try:
                result = await self._run_control(command)
            except BaseError as exc:
                error = exc
                logger.info("control %s refused: %s", command.get("op"), exc.error_code)
            except Exception:
                logger.exception("control %r failed", command.get("op"))
                error = BackendError("the owner failed to run the command", error_code="REMOTE_FAILED")
            reply_to = command.get("reply_to")
            if isinstance(reply_to, str) and reply_to:
                try:
                    await self._publish(
                        routing.inbox_topic(reply_to),
                        routing.encode_control(reply_for(command, error, result)),
                        shortfall_raises=False,
                    )
                except BaseError as exc:
                    logger.warning("could not answer %s: %s", reply_to, exc.error_code)

    async def _run_control(self, command: dict[str, Any]) -> dict[str, Any] | None:
        op = command.get("op")
        channel = command.get("channel")
        deadline = command.get("deadline")
        deadline = float(deadline) if isinstance(deadline, int | float) else 0.0
        if deadline and time.time() > deadline:
            raise BackendError("the caller's deadline passed", error_code="REMOTE_TIMEOUT")
        if not isinstance(channel, str) or channel not in self.registry:
            raise ConnectionError(
                "no such connection",
                error_code="CONNECTION_NOT_FOUND",
                retryable=False,
                connection_id=str(channel)[:200],
            )
        group = command.get("group")
        if op == "join" and isinstance(group, str):
            since = command.get("since")
            position = parse_position(since) if since is not None else None
            connection = self.registry.get(channel)
            assert connection is not None
            routing.validate_name("group", group)
            joined = await self._join(connection, group, position, deadline)
            return dataclasses.asdict(joined)
        if op == "leave" and isinstance(group, str):
            await self.leave_group(channel, group)
        elif op == "disconnect":
            code = command.get("code")
            reason = command.get("reason")
            await self.disconnect(
                channel,
                code if isinstance(code, int) else CloseCode.NORMAL_CLOSURE,
                reason if isinstance(reason, str) else "",
            )
        else:
            raise BackendError(f"unknown control command {str(op)[:40]!r}", error_code="REMOTE_FAILED")
        return None

    async def _remote(self, connection_id: str, command: dict[str, Any]) -> dict[str, Any] | None:
        owner = self._owner(connection_id)
        if owner is None or owner == self.server_id:
            raise ConnectionError(
                "no such connection",
                error_code="CONNECTION_NOT_FOUND",
                retryable=False,
                connection_id=connection_id,
            )
        return await self._request(owner, command)

    async def _request(self, owner: str, command: dict[str, Any]) -> dict[str, Any] | None:
        """Ask `owner` to run `command` and wait for its answer (or WS_REMOTE_TIMEOUT)."""
        call_id, answer = self._calls.open(command, self.server_id)
        # The owner will not start it after this (wall clocks of servers agree well enough).
        command["deadline"] = time.time() + self.config.WS_REMOTE_TIMEOUT
        try:
            delivery = await self._publish(
                routing.inbox_topic(owner), routing.encode_control(command), shortfall_raises=False
            )
            if delivery.reached == 0:
                # Nobody listens on that inbox: the owner is gone (or deaf, and then told so).
                raise ConnectionError(
                    f"the server owning {command.get('channel')!r} is not reachable",
                    error_code="CONNECTION_NOT_FOUND",
                    retryable=delivery.expected != 0,
                    details={"server": owner},
                )
            try:
                return await asyncio.wait_for(answer, self.config.WS_REMOTE_TIMEOUT)
            except TimeoutError:
                self.counters.remote_timeouts += 1
                raise BackendError(
                    f"server {owner!r} did not answer {command.get('op')!r} within "
                    f"{self.config.WS_REMOTE_TIMEOUT:g}s",
                    error_code="REMOTE_TIMEOUT",
                    details={"server": owner},
                    component="manager",
                ) from None
        finally:
            self._calls.close(call_id)

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
            user = topic[5:]
            return self.registry.has_user(user) or user in self._admitting
        return self._started and topic in (self._inbox, routing.BROADCAST_TOPIC)

    async def _reconcile(self, topic: str) -> None:
        """Make the backend subscription of `topic` match what the registry needs right now.

        No lock: the decision and the backend's record of it happen together, before any
        await, so a join and a leave racing on one group end in the state the registry has
        last; a subscribe returns once confirmed, or once the topic is no longer wanted.
        """
        if self._wants(topic):
            self._subscribed.add(topic)
            await self.backend.subscribe(topic)
        elif topic in self._subscribed:
            self._subscribed.discard(topic)
            self._echoes.forget_topic(topic)
            if topic.startswith("group:"):
                self._history.forget(topic[6:])
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

    # --- statistics and health -----------------------------------------------------------------
    def health(self) -> Health:
        """*Local*: live (this event loop answered) and ready to take new clients: started, not
        shutting down, the backend connected and this server's inbox and broadcast confirmed.
        See `fastapi_channels.health` for the routes a load balancer probes."""
        started = self._started
        return judge_health(
            started=started,
            stopping=self._stopping,
            ever_started=self.started_at is not None,
            backend=self.backend.not_ready() if started else None,
            confirmed=started
            and self.backend.listening(self._inbox)
            and self.backend.listening(routing.BROADCAST_TOPIC),
        )

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


def _closed_during_join(connection_id: str) -> ConnectionError:
    """A join of a connection that closed before the join was done: the caller is told."""
    return ConnectionError(
        "connection closed before the join was done",
        error_code="CONNECTION_CLOSED",
        retryable=False,
        connection_id=connection_id,
    )
