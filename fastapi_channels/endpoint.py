"""serve: the one owner of a connection's life, so no app has to write the receive loop.

Accept (with the subprotocol the consumer picks from the client's offer), register, run
`connect()`, hand every text and binary frame to `handle_message`, map errors to frames or
close codes, and end in a `finally` that disconnects exactly once with the right code,
whatever ended the loop: the client, the server, a cancellation or an exception. The
consumer's `on_disconnect` runs once, while the connection is still a member of its groups
(the connection's close hook runs it before anything is released).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from fastapi_channels.exceptions import BaseError, CloseCode

if TYPE_CHECKING:
    from fastapi_channels.consumer.base import BaseConsumer
    from fastapi_channels.manager import ConnectionManager
    from fastapi_channels.middleware.base import Middleware

__all__ = ["UserIdSource", "serve_consumer", "websocket_route"]

logger = logging.getLogger(__name__)

UserIdSource = str | Callable[[WebSocket], "str | Awaitable[str | None] | None"] | None
"""Where a route finds the user id: a path parameter's name, a function of the socket
(e.g. reading what an authentication dependency stored in `websocket.state`), or None."""


async def serve_consumer(
    consumer_class: type[BaseConsumer],
    websocket: WebSocket,
    manager: ConnectionManager,
    *,
    user_id: str | None = None,
    connection_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    middleware: Middleware | None = None,
    **consumer_kwargs: Any,
) -> None:
    """Serve one socket with a new `consumer_class` until it closes (see the module doc).

    A connection the manager refuses (limits, origin, a duplicate id) is closed with the
    refusal's code and reason; nothing of the consumer runs.
    """
    offered = list(websocket.scope.get("subprotocols") or ())
    subprotocol = consumer_class.select_subprotocol(offered) if offered else None
    connection = await manager.connect(
        websocket,
        user_id=user_id,
        connection_id=connection_id,
        metadata=metadata,
        subprotocol=subprotocol,
    )
    consumer = consumer_class(
        connection=connection, manager=manager, middleware_stack=middleware, **consumer_kwargs
    )
    from fastapi_channels.consumer.base import BaseConsumer  # here: consumer.base imports this module

    if consumer_class.handle_message is BaseConsumer.handle_message:
        # It drops a client's pong after the liveness is noted: the fast path can do that
        # where the frame arrives, without waking this loop.
        connection.take_heartbeat_replies()
    code: int = CloseCode.NORMAL_CLOSURE
    try:
        await consumer.connect()
        while connection.is_open:
            message = await websocket.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                code = int(message.get("code") or CloseCode.NORMAL_CLOSURE)
                break
            text = message.get("text")
            if text is not None:
                await consumer.handle_message(json_str=text)
            elif message.get("bytes") is not None:
                await consumer.handle_message(binary=message["bytes"])
    except WebSocketDisconnect as exc:
        code = exc.code
    except BaseError as exc:
        # handle_message already answered it; it is one that ends the connection.
        code = exc.ws_code
    except asyncio.CancelledError:
        code = CloseCode.GOING_AWAY
        await _finish(consumer, code)
        raise
    except Exception:
        logger.exception("consumer %s failed on %s", consumer_class.__name__, connection.channel_name)
        code = CloseCode.INTERNAL_ERROR
    await _finish(consumer, code)


async def _finish(consumer: BaseConsumer, code: int) -> None:
    """Disconnect exactly once; shielded, so a second cancellation cannot cut it short.

    A code the peer sent (1005 and the like included) is only reported to `on_disconnect`:
    the peer is gone, so no close frame carries it.
    """
    cleanup = asyncio.ensure_future(consumer.disconnect(code))
    try:
        await asyncio.shield(cleanup)
    except asyncio.CancelledError:
        await asyncio.wait([cleanup])
        raise


def websocket_route(
    consumer_class: type[BaseConsumer],
    manager: ConnectionManager,
    *,
    user_id: UserIdSource = None,
    middleware: Middleware | None = None,
    **consumer_kwargs: Any,
) -> Callable[[WebSocket], Awaitable[None]]:
    """An endpoint serving `consumer_class`: FastAPI's ``app.add_api_websocket_route("/ws/{user_id}",
    ChatConsumer.as_route(manager, user_id="user_id"))`` or Starlette's ``WebSocketRoute(path, ...)``.
    """

    async def endpoint(websocket: WebSocket) -> None:
        await serve_consumer(
            consumer_class,
            websocket,
            manager,
            user_id=await _user_of(websocket, user_id),
            middleware=middleware,
            **consumer_kwargs,
        )

    endpoint.__name__ = f"{consumer_class.__name__}_endpoint"
    return endpoint


async def _user_of(websocket: WebSocket, source: UserIdSource) -> str | None:
    if source is None:
        return None
    if isinstance(source, str):
        value = websocket.path_params.get(source)
        return None if value is None else str(value)
    found = source(websocket)
    if inspect.isawaitable(found):
        found = await found
    return found
