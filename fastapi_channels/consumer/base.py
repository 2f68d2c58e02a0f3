"""BaseConsumer: the application's handler for one connection.

`handle_message` turns a client frame into a `Message`, answers heartbeats, runs the
middleware chain and hands the result to `receive`. Every failure becomes an error frame:
errors that keep the connection are answered and swallowed, so the endpoint's receive loop
goes on; errors that end it are answered and re-raised for the endpoint to close with
their `ws_code` (the README's endpoint does exactly that). An unexpected exception becomes
a SystemError frame whose error_id is in the server log next to the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
import pydantic

from fastapi_channels.exceptions import BaseError, CloseCode, MessageError, SystemError, ValidationError
from fastapi_channels.messages import Message

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from fastapi_channels.connection import Connection
    from fastapi_channels.endpoint import UserIdSource
    from fastapi_channels.history import JoinResult
    from fastapi_channels.manager import ConnectionManager
    from fastapi_channels.middleware.base import Middleware

__all__ = ["BaseConsumer"]

# Named as before the module became consumer/base.py, so logging configurations keep working.
logger = logging.getLogger("fastapi_channels.consumer")

HEARTBEAT_TYPES = frozenset({"ping", "pong"})
BINARY_TYPE = "binary"


class BaseConsumer:
    """Subclass it per endpoint; override `connect`, `receive` (or `on_<type>` methods), `on_disconnect`.

    `message_types` maps a message type to a pydantic model its `data` must satisfy; the
    validated model replaces `message.data` before `receive` sees it.
    """

    message_types: ClassVar[dict[str, type[pydantic.BaseModel]]] = {}
    subprotocols: ClassVar[tuple[str, ...]] = ()
    """Subprotocols this consumer speaks, by preference; `serve` picks one the client offered."""

    def __init__(
        self,
        connection: Connection,
        manager: ConnectionManager,
        middleware_stack: Middleware | None = None,
        **kwargs: Any,
    ) -> None:
        self.connection = connection
        self.manager = manager
        self.middleware_stack = middleware_stack
        # Extra keyword arguments (the README passes database=...) become attributes.
        for name, value in kwargs.items():
            setattr(self, name, value)
        self._disconnected = False
        # Whoever closes the connection (the client, the heartbeat, a slow-consumer policy,
        # a disconnect from any server), on_disconnect runs first, while it is still a member.
        connection.set_close_hook(self._run_on_disconnect)

    # --- serving a socket ----------------------------------------------------------------------
    @classmethod
    async def serve(
        cls,
        websocket: WebSocket,
        manager: ConnectionManager,
        *,
        user_id: str | None = None,
        connection_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        middleware: Middleware | None = None,
        **consumer_kwargs: Any,
    ) -> None:
        """Accept `websocket`, run a consumer of this class on it until it closes, clean up once.

        The whole endpoint in one line: ``await ChatConsumer.serve(websocket, manager,
        user_id=user_id, middleware=stack, database=db)`` (see `fastapi_channels.endpoint`).
        """
        from fastapi_channels.endpoint import serve_consumer

        await serve_consumer(
            cls,
            websocket,
            manager,
            user_id=user_id,
            connection_id=connection_id,
            metadata=metadata,
            middleware=middleware,
            **consumer_kwargs,
        )

    @classmethod
    def as_route(
        cls,
        manager: ConnectionManager,
        *,
        user_id: UserIdSource = None,
        middleware: Middleware | None = None,
        **consumer_kwargs: Any,
    ) -> Callable[[WebSocket], Awaitable[None]]:
        """An endpoint for ``app.add_api_websocket_route("/ws/{user_id}", Consumer.as_route(manager,
        user_id="user_id"))`` (FastAPI) or Starlette's ``WebSocketRoute``: `user_id` names a path
        parameter, or is a function of the socket."""
        from fastapi_channels.endpoint import websocket_route

        return websocket_route(cls, manager, user_id=user_id, middleware=middleware, **consumer_kwargs)

    @classmethod
    def select_subprotocol(cls, offered: Sequence[str]) -> str | None:
        """The subprotocol to accept: the first of `subprotocols` the client offered, else None."""
        return next((mine for mine in cls.subprotocols if mine in offered), None)

    @property
    def channel_name(self) -> str:
        return self.connection.channel_name

    @property
    def user_id(self) -> str | None:
        return self.connection.user_id

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(self.connection.groups)

    # --- hooks ---------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Called once after the connection is registered: send a welcome, join default groups."""

    async def receive(self, message: Message) -> None:
        """Handle a message that passed the middleware. The default calls `on_<type>(message)`."""
        name = "on_" + message.type.replace(".", "_").replace(":", "_").replace("-", "_")
        handler = None if name in _LIFECYCLE_HOOKS else getattr(self, name, None)
        if handler is None or not callable(handler):
            raise MessageError(
                f"unsupported message type {message.type!r}",
                error_code="UNKNOWN_MESSAGE_TYPE",
                details={"type": message.type},
                message_type=message.type,
            )
        await handler(message)

    async def on_disconnect(self, code: int) -> None:
        """Called once when the connection ends, before it leaves its groups."""

    # --- lifecycle -----------------------------------------------------------------------------
    async def disconnect(self, code: int = CloseCode.NORMAL_CLOSURE) -> None:
        """Run `on_disconnect` once, then leave every group, unregister and close. Safe to call twice."""
        try:
            await self._run_on_disconnect(code)
        finally:
            # This connection, not whichever holds its id now (a reconnect may reuse it).
            await self.manager.disconnect(self.connection, code)

    async def _run_on_disconnect(self, code: int) -> None:
        if self._disconnected:
            return
        self._disconnected = True
        try:
            await self.on_disconnect(code)
        except Exception:
            logger.exception("on_disconnect of %s failed", self.channel_name)

    # --- sending -------------------------------------------------------------------------------
    async def send(self, message: Any) -> bool:
        """Send to this connection (dict, Message, pydantic model, str or bytes); False if closed."""
        return self.manager.send_local(self.connection, self.manager.encode(message))

    async def send_json(self, data: Any) -> bool:
        return await self.send(data)

    async def send_text(self, text: str) -> bool:
        return self.manager.send_local(self.connection, text)

    async def send_bytes(self, data: bytes) -> bool:
        return self.manager.send_local(self.connection, bytes(data))

    async def join_group(self, group: str, since: Any = None) -> JoinResult:
        """Join `group`; for a history group, `since=(epoch, offset)` replays what was missed
        (see `ConnectionManager.join_group`)."""
        return await self.manager.join_group(self.channel_name, group, since)

    async def leave_group(self, group: str) -> None:
        await self.manager.leave_group(self.channel_name, group)

    async def send_to_group(self, group: str, message: Any, *, history: bool = True) -> None:
        await self.manager.send_to_group(group, message, history=history)

    async def send_to_group_except_sender(self, group: str, message: Any) -> None:
        await self.manager.send_group_except(group, message, self.channel_name)

    async def send_group_except(
        self,
        group: str,
        message: Any,
        exclude: str | Iterable[str] | None = None,
        exclude_connection_id: str | None = None,
    ) -> None:
        """Send to a group minus some channel names: this connection's own unless given
        (as `exclude`, or `exclude_connection_id` as in the spec's manager; README lists both
        in this order, so either may be passed by position)."""
        if exclude is None and exclude_connection_id is None:
            exclude = self.channel_name
        await self.manager.send_group_except(
            group, message, exclude, exclude_connection_id=exclude_connection_id
        )

    # --- incoming ------------------------------------------------------------------------------
    async def handle_message(self, json_str: str | None = None, binary: bytes | None = None) -> None:
        """Parse, check and dispatch one client frame; answer any failure with an error frame."""
        try:
            message = self._parse(json_str, binary)
            if message.type in HEARTBEAT_TYPES:
                if message.type == "ping":
                    await self.send({"type": "pong", "timestamp": message.created_at})
                return  # liveness was recorded when the frame arrived
            if self.middleware_stack is not None:
                processed = await self.middleware_stack(message, self.connection, self)
                if processed is None:
                    return
                message = processed
            self._validate_data(message)
            await self.receive(message)
        except BaseError as error:
            await self._answer(error)
            if error.should_disconnect():
                raise
        except Exception:
            internal = SystemError("internal error", component="consumer", connection_id=self.channel_name)
            logger.exception(
                "unexpected error in %s (error_id=%s)", type(self).__name__, internal.context.error_id
            )
            await self._answer(internal)

    async def handle_error(self, error: BaseError) -> None:
        """Answer an error that ended the endpoint's receive loop, then close with its `ws_code`.

        `handle_message` already answers the errors a connection survives, so an error that
        reaches the endpoint (the README's `except BaseError` branch) ends the loop: the frame
        is flushed and the connection closed, instead of the socket being dropped unanswered.
        To report an error and keep the connection, use `send_error`.
        """
        await self._answer(error)
        await self.disconnect(error.ws_code)

    async def send_error(self, error: BaseError) -> bool:
        """Send the error frame and keep the connection open."""
        return await self._answer(error)

    async def _answer(self, error: BaseError) -> bool:
        error.context.connection_id = error.context.connection_id or self.channel_name
        error.context.user_id = error.context.user_id or self.user_id
        return await self.send(error.to_response().to_dict())

    def _parse(self, json_str: str | None, binary: bytes | None) -> Message:
        if (json_str is None) == (binary is None):
            raise MessageError(
                "handle_message takes exactly one of json_str or binary", error_code="INVALID_MESSAGE_FORMAT"
            )
        sender = self.user_id if self.user_id is not None else self.channel_name
        if binary is not None:
            return Message(
                type=BINARY_TYPE, binary_data=bytes(binary), sender_id=sender, raw_size=len(binary)
            )
        assert json_str is not None
        try:
            frame = orjson.loads(json_str)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(
                "frame is not valid JSON", error_code="INVALID_JSON", details={"error": str(exc)[:200]}
            ) from None
        if not isinstance(frame, dict):
            raise ValidationError("frame must be a JSON object", error_code="INVALID_MESSAGE_FORMAT")
        kind = frame.get("type")
        if not isinstance(kind, str) or not kind:
            raise ValidationError('frame needs a "type" string', error_code="MISSING_MESSAGE_TYPE")
        if kind == BINARY_TYPE:
            raise ValidationError(
                f'type "{BINARY_TYPE}" is reserved for binary frames', error_code="INVALID_MESSAGE_TYPE"
            )
        metadata = frame.get("metadata") or {}
        priority = frame.get("priority", 0)
        ttl = frame.get("ttl_seconds")
        if not isinstance(metadata, dict):
            raise _field_error("metadata", "must be an object")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise _field_error("priority", "must be an integer")
        if ttl is not None and (not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl < 0):
            raise _field_error("ttl_seconds", "must be a non-negative number")
        group = frame.get("group")
        return Message(
            type=kind,
            data=frame.get("data"),
            sender_id=sender,
            group=group if isinstance(group, str) else None,
            metadata=metadata,
            priority=priority,
            ttl_seconds=ttl,
            # Bytes on the wire, as WS_MAX_MESSAGE_SIZE counts them (encoding only non-ASCII text).
            raw_size=len(json_str) if json_str.isascii() else len(json_str.encode()),
        )

    def _validate_data(self, message: Message) -> None:
        model = self.message_types.get(message.type)
        if model is None:
            return
        try:
            message.data = model.model_validate(message.data if message.data is not None else {})
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in ("data", *first["loc"]))
            raise ValidationError(
                f"{field}: {first['msg']}",
                error_code="INVALID_MESSAGE_DATA",
                details={
                    "field": field,
                    "errors": [
                        {"field": ".".join(str(p) for p in ("data", *e["loc"])), "message": e["msg"]}
                        for e in exc.errors()
                    ],
                },
                message_type=message.type,
            ) from None

    @classmethod
    def json_schemas(cls) -> dict[str, dict[str, Any]]:
        """The JSON schema of the `data` of every declared message type (for protocol docs)."""
        return {kind: model.model_json_schema() for kind, model in sorted(cls.message_types.items())}


def _field_error(field: str, problem: str) -> ValidationError:
    return ValidationError(
        f"{field} {problem}", error_code="INVALID_MESSAGE_FORMAT", details={"field": field}
    )


# `on_<type>` names a client must never reach through `receive`'s dispatch.
_LIFECYCLE_HOOKS = frozenset(name for name in dir(BaseConsumer) if name.startswith("on_"))
