"""The chat example application: the spec README's example, made real.

    uvicorn example.main:app --host 127.0.0.1 --port 8000 --ws websockets-sansio

runs it on the in-memory backend (no Redis). With BACKEND_TYPE=redis and REDIS_URL, several
processes form one chat (see example/README.md). `create_app()` builds an independent app
(its own manager, database and middleware); `app` is the one uvicorn serves, and its
manager, the first of the process, is what `get_manager()` returns.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from example.access import ROOM_GROUP_PREFIX, Caller, CallerDep, RestAuth, RoomAccess
from example.consumers import ChatConsumer as BaseChatConsumer
from example.consumers import room_group, typing_sender
from example.database import ChatDatabase
from example.external_events import (
    EventBridge,
    ScheduleFullError,
    send_broadcast_from_external_code,
    send_group_message_from_background_task,
)
from example.protocol import (
    CLIENT_MESSAGES,
    RATE_LIMIT_EXCLUDED,
    ROOM_PATTERN,
    USER_PATTERN,
    ChatMessageFrame,
    HistoryMessage,
    frame,
)
from example.protocol import NotificationFrame as NotificationFrameModel
from example.schemas import (
    AnnounceIn,
    AnnounceOut,
    ApiError,
    ErrorOut,
    GroupMessageIn,
    GroupMessageOut,
    NotificationIn,
    NotificationOut,
    RoomMessageIn,
    RoomMessageOut,
    RoomMessagesOut,
    StatusOut,
)
from example.settings import ChatSettings
from example.typing_indicators import TypingCoalescer
from fastapi_channels import Connection, ConnectionManager, get_manager
from fastapi_channels.auth import WebSocketAuth
from fastapi_channels.config import WSConfig
from fastapi_channels.exceptions import AuthenticationError, BackendError, BaseError
from fastapi_channels.exceptions import ValidationError as ChannelsValidationError
from fastapi_channels.middleware import LoggingMiddleware, RateLimitMiddleware, ValidationMiddleware
from fastapi_channels.observability import add_observability_routes

__all__ = [
    "RATE_LIMIT_EXCLUDED",
    "app",
    "create_app",
    "send_broadcast_from_external_code",
    "send_group_message_from_background_task",
]

logger = logging.getLogger("example")

TEMPLATE_PATH = os.path.join(os.path.dirname(__file__), "template.html")

RoomPath = Annotated[str, Path(pattern=ROOM_PATTERN, description="room name")]
UserPath = Annotated[str, Path(pattern=USER_PATTERN, description="user id")]
GroupPath = Annotated[str, Path(pattern=USER_PATTERN, description="group name; a room's is room.<room>")]

UNAUTHENTICATED = (401, "CHAT_ACCESS_TOKENS is set and no valid bearer token came")
FORBIDDEN_ROOM = (403, "ROOM_FORBIDDEN: an admin-* room, and the caller is no admin")


def refusals(*statuses: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for REST refusals; their body is ErrorOut (detail, error_code)."""
    return {status: {"model": ErrorOut, "description": description} for status, description in statuses}


def create_app(ws_config: WSConfig | None = None, settings: ChatSettings | None = None) -> FastAPI:
    """An independent chat app: its own ConnectionManager, ChatDatabase and middleware chain."""
    ws_config = ws_config if ws_config is not None else WSConfig()
    settings = settings if settings is not None else ChatSettings()

    # Who may join which group: rooms named admin-* are for CHAT_ADMINS only. The hook runs on
    # the server that owns the connection, for local and remote joins alike; the consumer
    # and the REST API ask the same RoomAccess before they read or create anything.
    access = RoomAccess(admins=settings.admins())

    def authorize_join(connection: Connection, group: str) -> bool:
        return access.may_use_group(connection.user_id, group)

    # Unified connection manager (MemoryBackend or RedisBackend, from BACKEND_TYPE)
    manager = ConnectionManager(ws_config=ws_config, authorize_join=authorize_join)
    # Rooms are history groups: their chat and file messages carry `offset` and `epoch`, and a
    # client that reconnects re-joins with `since` to get exactly what it missed (WS_HISTORY_*
    # bound how many and for how long). Presence, typing and background updates are ephemeral.
    manager.enable_history(ROOM_GROUP_PREFIX + "*")

    # Optional authentication at the handshake: with CHAT_ACCESS_TOKENS set, the socket of
    # /ws/{user_id} needs that user's token, else it is refused before anything registers.
    tokens = settings.access_tokens()
    token_auth = WebSocketAuth(verify=tokens.get) if tokens else None
    # The REST API takes the same tokens, checked by the same function (see example.access).
    rest_auth = RestAuth(verify=token_auth.verify if token_auth is not None else None)

    # The user id is checked against the chat's own rule (USER_PATTERN, as in the REST paths and
    # `to_user`) before the handshake, whatever names the library accepts: 403 otherwise.
    async def authenticated(websocket: WebSocket, user_id: UserPath) -> str:
        if token_auth is None:
            return user_id
        if await token_auth(websocket) != user_id:
            raise AuthenticationError("the token is not this user's", error_code="AUTHENTICATION_FAILED")
        return user_id

    # Rate limits are shared by all servers through Redis on the redis backend only: the
    # memory backend needs no Redis at all.
    rate_limit_redis: Any = None
    if ws_config.BACKEND_TYPE == "redis":
        from fastapi_channels.backends.redis_connect import RedisTarget, async_client

        # The same Redis as the backend's, one server or the master Sentinel names (REDIS_MODE).
        rate_limit_redis = async_client(
            RedisTarget.from_config(ws_config), max_connections=32, encoding="utf-8", decode_responses=True
        )
    rate_limit_options: dict[str, Any] = {"redis": rate_limit_redis} if rate_limit_redis is not None else {}

    # Build middleware chain
    middleware = (
        ValidationMiddleware(ws_config.WS_MAX_MESSAGE_SIZE, allowed_types=set(CLIENT_MESSAGES) | {"pong"})
        >> LoggingMiddleware()
        >> RateLimitMiddleware(
            messages_per_window=settings.CHAT_RATE_LIMIT_MESSAGES,
            window_seconds=settings.CHAT_RATE_LIMIT_WINDOW,
            excluded_message_types=RATE_LIMIT_EXCLUDED,
            prefix=ws_config.REDIS_CHANNEL_PREFIX,
            **rate_limit_options,
        )
    )

    # Persistence layer (opened on first use, in its own thread); it bounds the rooms.
    db = ChatDatabase(
        settings.CHAT_DB_PATH,
        max_rooms=settings.CHAT_MAX_ROOMS,
        max_rooms_per_user=settings.CHAT_MAX_ROOMS_PER_USER,
    )

    # Sends from outside a connection: the database's room hook, background tasks, threads.
    # The process's first manager is get_manager(); an app built beside it keeps its own.
    events = EventBridge(
        None if get_manager() is manager else manager,
        max_scheduled=settings.CHAT_MAX_SCHEDULED_ANNOUNCEMENTS,
        max_scheduled_per_owner=settings.CHAT_MAX_SCHEDULED_PER_USER,
        max_delay=settings.CHAT_MAX_ANNOUNCE_DELAY,
    )
    db.listen("room_created", events.on_room_created)

    # Typing is not rate limited: at most one fan-out per user and room per interval instead.
    typing = TypingCoalescer(
        typing_sender(manager),
        interval=settings.CHAT_TYPING_INTERVAL,
        max_entries=settings.CHAT_TYPING_MAX_ENTRIES,
    )

    ChatConsumer = BaseChatConsumer.configured(  # the name the spec's endpoint uses
        max_file_bytes=settings.CHAT_MAX_FILE_BYTES,
        history_on_join=settings.CHAT_HISTORY_ON_JOIN,
        access=access,
        typing_indicators=typing,
    )

    with open(TEMPLATE_PATH, encoding="utf-8") as f:
        HTML_TEMPLATE = f.read()  # the spec's name

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Startup and shutdown handlers"""
        await manager.start_tasks()
        events.bind()
        await db.clear_server_presence(manager.server_id)
        yield
        await manager.stop_tasks()
        await typing.aclose()
        await events.aclose()
        await db.clear_server_presence(manager.server_id)
        if rate_limit_redis is not None:
            await rate_limit_redis.aclose()
        db.close()

    app = FastAPI(
        title="WebSocket Chat Example",
        description="The fastapi-channels chat example. WebSocket protocol: docs/protocol.md.",
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.state.db = db
    app.state.events = events
    app.state.typing = typing
    app.state.rest_auth = rest_auth
    app.state.access = access
    app.state.settings = settings
    app.state.ws_config = ws_config
    # Public on purpose (a load balancer and Prometheus have no token): /metrics,
    # /health/live (200 while the event loop answers) and /health/ready (503 with a JSON
    # reason during a Redis outage, a resync or a shutdown). Counts only, no user data.
    add_observability_routes(app, manager)

    app.add_middleware(
        CORSMiddleware,
        allow_origins=[origin.strip() for origin in settings.CHAT_CORS_ORIGINS.split(",") if origin.strip()],
        allow_credentials=False,  # no cookies here; "*" with credentials would trust every site
        allow_methods=["*"],
        allow_headers=["*"],
    )

    async def channels_error(conn: HTTPConnection, exc: Exception) -> Response | None:
        """A library error outside the consumer: a close code on a WebSocket; for REST,
        400 for bad input, 503 when the broker is down."""
        assert isinstance(exc, BaseError)
        if isinstance(conn, WebSocket):
            # e.g. an invalid user id in the path (before accept: the client gets HTTP 403), or
            # a connection limit (ConnectionError, after accept: close 1013 with the error code).
            with contextlib.suppress(Exception):
                await conn.close(code=exc.ws_code, reason=exc.error_code)
            return None
        if isinstance(exc, ChannelsValidationError):
            status = 400
        elif isinstance(exc, BackendError):
            status = 503
        else:
            status = 500
        return JSONResponse({"detail": exc.message, "error_code": exc.error_code}, status_code=status)

    # One handler for both scopes: Starlette passes a Request or a WebSocket.
    app.add_exception_handler(BaseError, channels_error)  # type: ignore[arg-type]

    async def api_error(conn: HTTPConnection, exc: Exception) -> Response:
        """A REST refusal with its stable code: `{"detail": ..., "error_code": ...}`."""
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(ApiError, api_error)

    async def http_error(conn: HTTPConnection, exc: Exception) -> Response:
        """Any other HTTP refusal (an unknown path, a method not allowed) gets a code too: its
        status's name, so every refusal of the API has the same shape."""
        assert isinstance(exc, StarletteHTTPException)
        try:
            code = HTTPStatus(exc.status_code).name
        except ValueError:  # a status without a name in the standard
            code = "ERROR"
        return JSONResponse({"detail": exc.detail, "error_code": code}, exc.status_code, headers=exc.headers)

    app.add_exception_handler(StarletteHTTPException, http_error)

    async def invalid_request(conn: HTTPConnection, exc: Exception) -> Response:
        """A request that does not match its model: 422, `detail` FastAPI's list of what is wrong."""
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": jsonable_encoder(exc.errors()), "error_code": "INVALID_REQUEST"}, 422)

    app.add_exception_handler(RequestValidationError, invalid_request)

    def may_enter(caller: Caller, room: str) -> None:
        """Admin-only rooms need an admin's token; without tokens nobody is one over REST."""
        if not access.may_enter(caller.user_id, room):
            raise access.forbidden(room)

    def sender(caller: Caller, username: str | None) -> str:
        """Who a REST room message is from: with tokens, the caller and nobody else."""
        if caller.user_id is None:
            return username or "system"
        if username is not None and username != caller.user_id:
            raise ApiError(403, "USERNAME_MISMATCH", f"the token is {caller.user_id!r}'s, not {username!r}'s")
        return caller.user_id

    @app.websocket("/ws/{user_id}")
    async def websocket_endpoint(
        websocket: WebSocket,
        user_id: str,
        # A default, not Annotated: the annotation is a string here and names a local function.
        authenticated_user: str = Depends(authenticated),
    ) -> None:
        # The library owns the connection's life: accept, the receive loop, error frames and
        # close codes, and one disconnect at the end (on_disconnect while still in the rooms).
        await ChatConsumer.serve(websocket, manager, user_id=user_id, middleware=middleware, database=db)

    # Every /api/ endpoint but /api/status takes `caller`: with CHAT_ACCESS_TOKENS set, a
    # request without a valid bearer token is refused with 401 before its handler runs.
    @app.get(
        "/api/rooms/{room_name}/messages",
        response_model=RoomMessagesOut,
        responses=refusals((400, "limit outside 1..1000"), UNAUTHENTICATED, FORBIDDEN_ROOM),
    )
    def get_room_messages(room_name: str, caller: CallerDep, limit: int = 50) -> dict[str, Any]:
        """REST API endpoint to get message history for a room (oldest first).

        A plain `def`: FastAPI runs it in a threadpool, where the sync database call may block.
        """
        may_enter(caller, room_name)
        if limit < 1 or limit > 1000:
            raise ApiError(400, "INVALID_LIMIT", "Limit must be between 1 and 1000")

        messages = db.get_recent_messages(room_name, limit=limit)
        return {"room": room_name, "messages": messages, "count": len(messages)}

    @app.post(
        "/api/announce",
        response_model=AnnounceOut,
        responses=refusals(
            (400, "DELAY_TOO_LONG: over CHAT_MAX_ANNOUNCE_DELAY"),
            (429, "TOO_MANY_SCHEDULED, with Retry-After"),
            UNAUTHENTICATED,
        ),
    )
    async def announce(body: AnnounceIn, caller: CallerDep) -> AnnounceOut:
        """Broadcast an announcement to every connection on every server, now or later.

        A later one is held in memory until due: bounded in delay, in number on this server
        and per caller; over a bound it is refused, and nothing already scheduled is dropped.
        """
        if body.delay_seconds > 0:
            if body.delay_seconds > events.max_delay:
                raise ApiError(400, "DELAY_TOO_LONG", f"delay_seconds is at most {events.max_delay:g} here")
            try:
                events.schedule_announcement(body.message, body.delay_seconds, owner=caller.user_id)
            except ScheduleFullError as exc:
                retry_after = str(max(1, math.ceil(exc.retry_after)))
                raise ApiError(
                    429, "TOO_MANY_SCHEDULED", str(exc), headers={"Retry-After": retry_after}
                ) from None
            return AnnounceOut(status="scheduled", delay_seconds=body.delay_seconds)
        await send_broadcast_from_external_code(body.message, source="api", manager=manager)
        return AnnounceOut(status="sent", delay_seconds=0)

    @app.post(
        "/api/room/{room_name}/message",
        response_model=RoomMessageOut,
        responses=refusals(
            (403, "ROOM_FORBIDDEN (admin-* room) or USERNAME_MISMATCH"),
            (404, "no such room"),
            UNAUTHENTICATED,
        ),
    )
    async def room_message(room_name: RoomPath, body: RoomMessageIn, caller: CallerDep) -> RoomMessageOut:
        """Store a message in a room's history and send it to the room's members."""
        may_enter(caller, room_name)
        username = sender(caller, body.username)
        if await db.get_room(room_name) is None:
            raise ApiError(404, "ROOM_NOT_FOUND", f"no room named {room_name!r}")
        stored = await db.save_message(room_name, username, username, body.text)
        await manager.send_to_group(
            room_group(room_name),
            frame(
                ChatMessageFrame(
                    id=stored["id"],
                    room=room_name,
                    user_id=username,
                    username=username,
                    text=body.text,
                    timestamp=stored["timestamp"],
                )
            ),
        )
        return RoomMessageOut(status="sent", message=HistoryMessage(**stored))

    @app.post(
        "/api/user/{user_id}/notification",
        response_model=NotificationOut,
        responses=refusals(UNAUTHENTICATED),
    )
    async def user_notification(
        user_id: UserPath, body: NotificationIn, caller: CallerDep
    ) -> NotificationOut:
        """Send a notification to every connection of a user, on every server."""
        delivered = await manager.send_to_user(
            user_id, frame(NotificationFrameModel(user_id=user_id, title=body.title, text=body.text))
        )
        return NotificationOut(status="sent", user_id=user_id, delivered=delivered)

    @app.post(
        "/api/group/{group_name}/message",
        response_model=GroupMessageOut,
        responses=refusals(UNAUTHENTICATED, FORBIDDEN_ROOM),
    )
    async def group_message(
        group_name: GroupPath, body: GroupMessageIn, caller: CallerDep
    ) -> GroupMessageOut:
        """Send a `background_update` to every member of a library group (a room: room.<room>)."""
        if not access.may_use_group(caller.user_id, group_name):
            raise access.forbidden(group_name)
        await send_group_message_from_background_task(group_name, body.data, manager=manager)
        return GroupMessageOut(status="sent", group=group_name)

    @app.get("/api/status", response_model=StatusOut)
    async def status() -> StatusOut:
        """Backend type, server id, connection, user and group counts, and this server's counters.

        Public, also with tokens: a load balancer's health check has no token, and it shows
        counts only, no user id, room name or message.
        """
        stats = manager.get_stats()
        return StatusOut(
            status="ok",
            backend_type=ws_config.BACKEND_TYPE,
            server_id=manager.server_id,
            connections=await manager.count_connections(),
            local_connections=stats["connections"],
            users=stats["users"],
            groups=await manager.count_groups(),
            stats=stats,
        )

    @app.get("/", response_class=HTMLResponse)
    async def get_frontend() -> str:
        """Public: the page has to load before anyone can present a token."""
        return HTML_TEMPLATE

    return app


# Load configuration from environment
ws_config = WSConfig()

logging.basicConfig(
    level=getattr(logging, ws_config.LOG_LEVEL.upper(), logging.INFO),
    format="%(asctime)s - %(name)s - %(levelname)s - %(message)s",
)

app = create_app(ws_config)
manager: ConnectionManager = app.state.manager
db: ChatDatabase = app.state.db


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        ws="websockets-sansio",
        ws_max_size=ws_config.WS_MAX_MESSAGE_SIZE,
    )
