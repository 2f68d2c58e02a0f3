"""The chat protocol: one pydantic model per client message's `data` and per server frame.

A client sends ``{"type": T, "data": {...}}``; `CLIENT_MESSAGES[T]` validates `data` (the
consumer declares them as `BaseConsumer.message_types`, so bad data is answered with an
`INVALID_MESSAGE_DATA` error naming the field). The server sends flat frames
``{"type": T, ...}`` described by `SERVER_FRAMES[T]`. docs/protocol.md is rendered from
these models by `example/protocol_docs.py`; the tests check every frame the server sends
against them, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "CLIENT_MESSAGES",
    "ERROR_CODES",
    "MAX_TEXT_LENGTH",
    "RATE_LIMIT_EXCLUDED",
    "ROOM_PATTERN",
    "SERVER_FRAMES",
    "USER_PATTERN",
    "ClientData",
    "HistoryMessage",
    "RoomPosition",
    "RoomSummary",
    "RoomUser",
    "ServerFrame",
    "frame",
]

ROOM_PATTERN = r"^[A-Za-z0-9_-]{1,50}$"
USER_PATTERN = r"^[A-Za-z0-9_.@+-]{1,100}$"  # the library's rule for user ids and group names
MAX_TEXT_LENGTH = 4000

# Not counted by the rate limit: heartbeats, typing and the listing requests. The spec's list
# also names server frame types (welcome, room_users, message_history); kept, and harmless.
RATE_LIMIT_EXCLUDED = frozenset(
    {
        "ping",
        "pong",
        "welcome",
        "room_users",
        "message_history",
        "typing_start",
        "typing_stop",
        "list_rooms",
        "get_room_users",
        "get_message_history",
    }
)

ERROR_CODES: dict[str, str] = {
    "INVALID_JSON": "the frame is not JSON",
    "INVALID_MESSAGE_FORMAT": (
        "the frame is not an object, or its `metadata`, `priority` or `ttl_seconds` is malformed"
    ),
    "MISSING_MESSAGE_TYPE": "no `type` string: missing, empty or not a string",
    "INVALID_MESSAGE_TYPE": "`type` is not 1-64 of letters, digits, `_ . : -` starting with a letter",
    "UNKNOWN_MESSAGE_TYPE": "`type` is not one of the client message types above (binary frames too)",
    "MESSAGE_TOO_LARGE": "the frame is larger than `WS_MAX_MESSAGE_SIZE`, on a server whose own "
    "limit is higher (`details.size`, `details.max_message_size`); under `fastapi-channels run` "
    "(the demo) the server refuses such a frame itself and closes the connection with 1009",
    "INVALID_MESSAGE_DATA": "`data` does not match the type's model (`details.field`, `details.errors`)",
    "RATE_LIMIT_EXCEEDED": "too many messages (see Rate limit); `details.retry_after` seconds",
    "ROOM_NOT_FOUND": "`get_room_users`, `get_message_history` of a room that does not exist",
    "ROOM_EXISTS": "`create_room` with the name of an existing room",
    "JOIN_FORBIDDEN": "`join_room` or `create_room` of an admin-only room (`admin-*`) by a user not in "
    "`CHAT_ADMINS`; nothing is joined or created",
    "ROOM_FORBIDDEN": "`get_message_history` of an admin-only room (`admin-*`) by a user not in "
    "`CHAT_ADMINS`, whether or not the room exists",
    "ROOM_LIMIT_REACHED": "`create_room`, or `join_room` of a missing room, when the chat holds "
    "`details.max_rooms` rooms (`CHAT_MAX_ROOMS`); not retryable",
    "USER_ROOM_LIMIT_REACHED": "`create_room`, or `join_room` of a missing room, by a user who created "
    "`details.max_rooms_per_user` rooms (`CHAT_MAX_ROOMS_PER_USER`); not retryable",
    "NOT_IN_ROOM": "`chat_message`, `file_message`, typing or `leave_room` in a room you have not joined",
    "USER_OFFLINE": "`private_message` to a user with no connection on any server",
    "FILE_TOO_LARGE": "`file_message` whose decoded content exceeds `max_file_bytes` (from `welcome`)",
    "BACKEND_UNAVAILABLE": "Redis is unreachable (multi-server mode); retryable",
    "INTERNAL_ERROR": "an unexpected server error; `error_id` is in the server log with the traceback",
}
"""Error codes a chat client may receive, and when."""

RoomName = Annotated[
    str,
    StringConstraints(pattern=ROOM_PATTERN),
    Field(description="room name: 1-50 of A-Z a-z 0-9 _ -"),
]
UserId = Annotated[
    str,
    StringConstraints(pattern=USER_PATTERN),
    Field(description="user id: 1-100 of A-Z a-z 0-9 _ . @ + -"),
]
Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_LENGTH),
    Field(description=f"message text, 1-{MAX_TEXT_LENGTH} characters after trimming"),
]
Timestamp = Annotated[float, Field(description="server time, Unix seconds")]


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"examples": list(examples)})


# --- client -> server: the `data` of each message type ---------------------------------------


class ClientData(BaseModel):
    """Base of the `data` models: unknown fields are refused (a typo is an error, not ignored)."""

    model_config = ConfigDict(extra="forbid")


class ChatMessageData(ClientData):
    """Send a text message to a room you have joined; every member gets `chat_message`."""

    model_config = _examples({"room": "general", "text": "Hello, everyone!"})
    room: RoomName
    text: Text


class RoomData(ClientData):
    """A request about one room."""

    model_config = _examples({"room": "general"})
    room: RoomName


class RoomPosition(ClientData):
    """A client's last position in a room: the `epoch` and `offset` of the last room message
    (`chat_message`, `file_message`) it received, or of `room_joined`."""

    epoch: str = Field(min_length=1, max_length=64, description="the room's epoch")
    offset: int = Field(ge=0, description="the offset of the last message received")


class JoinRoomData(RoomData):
    """Join a room. You get `room_joined`, `room_info`, `message_history` and `room_users`;
    the other members get `user_joined_room`. A room that does not exist is created first
    (as `create_room` with no description: everyone gets `room_created`), within the room
    limits (`ROOM_LIMIT_REACHED`, `USER_ROOM_LIMIT_REACHED`). Admin-only rooms (`admin-*`):
    `JOIN_FORBIDDEN` for anyone not in `CHAT_ADMINS`.

    After a reconnect, send `since` (your last position in the room): the room messages you
    missed are sent first, in order, each once, then live ones, and `room_joined` says
    `recovered: true` and how many were `replayed`; `message_history` is not sent. When the
    room's history no longer holds them (`recovered: false`, e.g. another `epoch`), nothing
    is replayed: reload the room's messages (`GET /api/rooms/{room}/messages` or
    `get_message_history`). Already in the room: nothing is replayed."""

    model_config = _examples(
        {"room": "general"}, {"room": "general", "since": {"epoch": "9f2c4e1a", "offset": 17}}
    )
    since: RoomPosition | None = Field(
        default=None, description="your last position in the room, to get what you missed"
    )


class LeaveRoomData(RoomData):
    """Leave a room. You get `room_left`; the other members get `user_left_room`.
    Not a member: error `NOT_IN_ROOM`."""


class GetRoomUsersData(RoomData):
    """Ask who is in a room (on every server). Answer: `room_users`."""


class TypingStartData(RoomData):
    """Tell the other members of a room that you are typing: they get `user_typing_start`.
    Coalesced per user and room: at most one fan-out per `CHAT_TYPING_INTERVAL` (1 s); the
    latest state is sent at the end of the interval (see Rate limit)."""


class TypingStopData(RoomData):
    """Tell the other members of a room that you stopped typing: they get `user_typing_stop`.
    Coalesced with `typing_start` (same budget)."""


class CreateRoomData(ClientData):
    """Create a room and join it. Everyone connected gets `room_created`; you also get what
    `join_room` sends. Existing room: error `ROOM_EXISTS`; over the room limits:
    `ROOM_LIMIT_REACHED`, `USER_ROOM_LIMIT_REACHED`; `admin-*` by a non-admin: `JOIN_FORBIDDEN`."""

    model_config = _examples({"room": "python", "description": "All things Python"})
    room: RoomName
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = Field(
        default="", description="shown in the room list, up to 200 characters"
    )


class ListRoomsData(ClientData):
    """Ask for every room with its member count, the built-in rooms first. Answer:
    `rooms_list`. `data` may be omitted."""

    model_config = _examples({})


class GetMessageHistoryData(ClientData):
    """Ask for a room's stored messages, oldest first. Answer: `message_history`.
    Admin-only rooms (`admin-*`): `ROOM_FORBIDDEN` for anyone not in `CHAT_ADMINS`."""

    model_config = _examples(
        {"room": "general", "limit": 20}, {"room": "general", "limit": 20, "before_id": 120}
    )
    room: RoomName
    limit: int = Field(default=50, ge=1, le=200, description="how many messages, 1-200")
    before_id: int | None = Field(
        default=None, ge=1, description="only messages with a smaller id (to page backwards)"
    )


class PrivateMessageData(ClientData):
    """Send a private message to a user on any server (all their connections get
    `private_message`); you get `private_message_sent`. Offline user: error `USER_OFFLINE`.
    Private messages are not stored."""

    model_config = _examples({"to_user": "bob", "text": "Hi Bob, got a minute?"})
    to_user: UserId
    text: Text


class FileMessageData(ClientData):
    """Share a small file with a room: base64 content, name and MIME type. Every member gets
    `file_message`. Over the server's cap (`max_file_bytes` in `welcome`, decoded size):
    error `FILE_TOO_LARGE`. History keeps the name, type and size, not the content."""

    model_config = _examples(
        {"room": "general", "name": "hello.txt", "mime_type": "text/plain", "data": "aGVsbG8gd29ybGQK"}
    )
    room: RoomName
    name: Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^/\\\x00-\x1f]+$")] = (
        Field(description="file name without any path, 1-255 characters")
    )
    mime_type: Annotated[
        str, StringConstraints(max_length=100, pattern=r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")
    ] = Field(description="MIME type such as image/png")
    data: str = Field(description="file content, standard base64 with padding")


class PingData(ClientData):
    """Ask for a `pong` (answered by the library before any middleware; not rate limited).
    Answer the server's own `{"type": "ping"}` with `{"type": "pong"}` (or any frame)."""

    model_config = _examples({})


CLIENT_MESSAGES: dict[str, type[ClientData]] = {
    "chat_message": ChatMessageData,
    "join_room": JoinRoomData,
    "leave_room": LeaveRoomData,
    "create_room": CreateRoomData,
    "list_rooms": ListRoomsData,
    "get_room_users": GetRoomUsersData,
    "get_message_history": GetMessageHistoryData,
    "private_message": PrivateMessageData,
    "typing_start": TypingStartData,
    "typing_stop": TypingStopData,
    "file_message": FileMessageData,
    "ping": PingData,
}
"""Every client message type and the model of its `data`, in documentation order."""


# --- server -> client ------------------------------------------------------------------------


class RoomSummary(BaseModel):
    """One room of a room list."""

    model_config = ConfigDict(extra="forbid")
    room: str
    description: str
    created_by: str | None = Field(description="user id of the creator; null for built-in rooms")
    created_at: Timestamp
    member_count: int = Field(description="connections in the room, on every server")


class RoomUser(BaseModel):
    """One user present in a room."""

    model_config = ConfigDict(extra="forbid")
    user_id: str
    username: str


class HistoryMessage(BaseModel):
    """A stored message, as `message_history` and the REST history endpoint return it."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(description="increasing per database; use it as `before_id` to page")
    type: Literal["chat_message", "file_message"]
    room: str
    user_id: str
    username: str
    text: str = Field(description="message text; empty for files")
    timestamp: Timestamp
    name: str | None = Field(default=None, description="file name; null for text messages")
    mime_type: str | None = Field(default=None, description="MIME type; null for text messages")
    size: int | None = Field(default=None, description="decoded size in bytes; null for text messages")


class ServerFrame(BaseModel):
    """Base of every server frame: a flat object with `type` and a `timestamp`."""

    model_config = ConfigDict(extra="forbid")
    type: str
    timestamp: Timestamp = Field(default_factory=time.time)


_NOW = 1764050000.0
_ROOM = {
    "room": "general",
    "description": "Everyone",
    "created_by": None,
    "created_at": _NOW,
    "member_count": 2,
}
_HISTORY_ITEM = {
    "id": 41,
    "type": "chat_message",
    "room": "general",
    "user_id": "alice",
    "username": "alice",
    "text": "Hi!",
    "timestamp": _NOW - 60,
}


class WelcomeFrame(ServerFrame):
    """Sent once, right after the connection is accepted."""

    model_config = _examples(
        {
            "type": "welcome",
            "user_id": "alice",
            "username": "alice",
            "server_id": "server-3f9a1c2b7d4e",
            "channel_name": "server-3f9a1c2b7d4e!8c0e...",
            "rooms": [_ROOM],
            "max_file_bytes": 262144,
            "max_text_length": MAX_TEXT_LENGTH,
            "timestamp": _NOW,
        }
    )
    type: Literal["welcome"] = "welcome"
    user_id: str
    username: str
    server_id: str = Field(description="the server this connection lives on")
    channel_name: str = Field(description="this connection's id")
    rooms: list[RoomSummary]
    max_file_bytes: int = Field(description="largest file `file_message` accepts (decoded bytes)")
    max_text_length: int


class _RoomMessageFrame(ServerFrame):
    """A message kept in the room's history: delivered with its `offset` and `epoch`."""

    offset: int | None = Field(
        default=None, description="position in the room: 1 for its first message, +1 for each one"
    )
    epoch: str | None = Field(
        default=None, description="the room history's epoch (changes when its history was lost)"
    )


class ChatMessageFrame(_RoomMessageFrame):
    """A room message, to every member of the room (the sender included); kept in the room's
    history, so it carries `offset` and `epoch` (see `join_room`'s `since`)."""

    model_config = _examples(
        {
            "type": "chat_message",
            "id": 42,
            "room": "general",
            "user_id": "alice",
            "username": "alice",
            "text": "Hello, everyone!",
            "timestamp": _NOW,
            "offset": 17,
            "epoch": "9f2c4e1a",
        }
    )
    type: Literal["chat_message"] = "chat_message"
    id: int = Field(description="id of the stored message (see `before_id`)")
    room: str
    user_id: str
    username: str
    text: str


class _RoomUserFrame(ServerFrame):
    room: str
    user_id: str
    username: str


def _room_user_example(kind: str) -> ConfigDict:
    return _examples(
        {"type": kind, "room": "general", "user_id": "alice", "username": "alice", "timestamp": _NOW}
    )


class RoomJoinedFrame(_RoomUserFrame):
    """To you, when you have joined a room: whether the messages you missed since `since`
    were sent (`recovered`, `replayed`, sent before this frame), and the room's position
    (`epoch`, `offset`) when you joined; later messages follow it."""

    model_config = _examples(
        {
            "type": "room_joined",
            "room": "general",
            "user_id": "alice",
            "username": "alice",
            "recovered": True,
            "replayed": 3,
            "epoch": "9f2c4e1a",
            "offset": 20,
            "timestamp": _NOW,
        }
    )
    type: Literal["room_joined"] = "room_joined"
    recovered: bool = Field(
        default=False, description="true: the messages after `since` were sent, none missing"
    )
    replayed: int = Field(default=0, description="how many messages were sent again")
    epoch: str | None = Field(
        default=None,
        description="the room history's epoch (null: no message in this history yet; on the memory "
        "backend that history, the numbering of live messages, starts again when the server restarts, "
        "while `message_history` still comes from the database)",
    )
    offset: int = Field(
        default=0, description="offset of the room's last message in that history (0: none yet)"
    )


class RoomLeftFrame(_RoomUserFrame):
    """To you, when you have left a room."""

    model_config = _room_user_example("room_left")
    type: Literal["room_left"] = "room_left"


class UserJoinedRoomFrame(_RoomUserFrame):
    """To the other members of a room, when a user joins it (first connection of that user)."""

    model_config = _room_user_example("user_joined_room")
    type: Literal["user_joined_room"] = "user_joined_room"


class UserLeftRoomFrame(_RoomUserFrame):
    """To the remaining members of a room, when a user leaves it (last connection of that user)."""

    model_config = _room_user_example("user_left_room")
    type: Literal["user_left_room"] = "user_left_room"


class UserLeftFrame(_RoomUserFrame):
    """To the members of each room a user was in, when the user disconnected (last connection).

    Once per user even when its connections join, leave or close at the same moment on one
    server; two servers deciding in the same instant may each send it."""

    model_config = _room_user_example("user_left")
    type: Literal["user_left"] = "user_left"


class UserTypingStartFrame(_RoomUserFrame):
    """To the other members of a room: this user is typing."""

    model_config = _room_user_example("user_typing_start")
    type: Literal["user_typing_start"] = "user_typing_start"


class UserTypingStopFrame(_RoomUserFrame):
    """To the other members of a room: this user stopped typing."""

    model_config = _room_user_example("user_typing_stop")
    type: Literal["user_typing_stop"] = "user_typing_stop"


class RoomCreatedFrame(ServerFrame):
    """To everyone connected, when a room is created (sent by a database event hook)."""

    model_config = _examples(
        {
            "type": "room_created",
            "room": "python",
            "description": "All things Python",
            "user_id": "alice",
            "username": "alice",
            "timestamp": _NOW,
        }
    )
    type: Literal["room_created"] = "room_created"
    room: str
    description: str
    user_id: str | None = Field(description="creator")
    username: str | None


class RoomsListFrame(ServerFrame):
    """Answer to `list_rooms`."""

    model_config = _examples({"type": "rooms_list", "rooms": [_ROOM], "timestamp": _NOW})
    type: Literal["rooms_list"] = "rooms_list"
    rooms: list[RoomSummary]


class RoomUsersFrame(ServerFrame):
    """Answer to `get_room_users` (also sent after `join_room`): users present on every server."""

    model_config = _examples(
        {
            "type": "room_users",
            "room": "general",
            "users": [{"user_id": "alice", "username": "alice"}, {"user_id": "bob", "username": "bob"}],
            "timestamp": _NOW,
        }
    )
    type: Literal["room_users"] = "room_users"
    room: str
    users: list[RoomUser]


class RoomInfoFrame(ServerFrame):
    """Sent after `join_room`: the room's details."""

    model_config = _examples(
        {
            "type": "room_info",
            "room": "general",
            "description": "Everyone",
            "created_by": None,
            "created_at": _NOW,
            "member_count": 2,
            "timestamp": _NOW,
        }
    )
    type: Literal["room_info"] = "room_info"
    room: str
    description: str
    created_by: str | None
    created_at: Timestamp
    member_count: int


class MessageHistoryFrame(ServerFrame):
    """Answer to `get_message_history` (also sent after `join_room`): oldest first."""

    model_config = _examples(
        {"type": "message_history", "room": "general", "messages": [_HISTORY_ITEM], "timestamp": _NOW}
    )
    type: Literal["message_history"] = "message_history"
    room: str
    messages: list[HistoryMessage]


class PrivateMessageFrame(ServerFrame):
    """To every connection of the recipient, on any server."""

    model_config = _examples(
        {
            "type": "private_message",
            "user_id": "alice",
            "username": "alice",
            "to_user": "bob",
            "text": "Hi Bob, got a minute?",
            "timestamp": _NOW,
        }
    )
    type: Literal["private_message"] = "private_message"
    user_id: str = Field(description="sender")
    username: str = Field(description="sender's name")
    to_user: str
    text: str


class PrivateMessageSentFrame(ServerFrame):
    """To the sender of a private message."""

    model_config = _examples(
        {
            "type": "private_message_sent",
            "to_user": "bob",
            "text": "Hi Bob, got a minute?",
            "delivered": 1,
            "timestamp": _NOW,
        }
    )
    type: Literal["private_message_sent"] = "private_message_sent"
    to_user: str
    text: str
    delivered: int = Field(description="connections of the recipient it was addressed to")


class FileMessageFrame(_RoomMessageFrame):
    """A shared file, to every member of the room (the sender included); kept in the room's
    history, so it carries `offset` and `epoch`."""

    model_config = _examples(
        {
            "type": "file_message",
            "id": 43,
            "room": "general",
            "user_id": "alice",
            "username": "alice",
            "name": "hello.txt",
            "mime_type": "text/plain",
            "size": 12,
            "data": "aGVsbG8gd29ybGQK",
            "timestamp": _NOW,
            "offset": 18,
            "epoch": "9f2c4e1a",
        }
    )
    type: Literal["file_message"] = "file_message"
    id: int
    room: str
    user_id: str
    username: str
    name: str
    mime_type: str
    size: int = Field(description="decoded size in bytes")
    data: str = Field(description="base64 content")


class PongFrame(ServerFrame):
    """Answer to the client's `ping`; `timestamp` is when the ping arrived."""

    model_config = _examples({"type": "pong", "timestamp": _NOW})
    type: Literal["pong"] = "pong"


class PingFrame(ServerFrame):
    """Heartbeat from the server to a connection silent for `WS_HEARTBEAT_INTERVAL`: answer with
    any frame, `{"type": "pong"}` by convention, or be closed (4000) after `WS_HEARTBEAT_TIMEOUT`."""

    model_config = _examples({"type": "ping", "timestamp": _NOW})
    type: Literal["ping"] = "ping"


class AnnouncementFrame(ServerFrame):
    """To everyone: `POST /api/announce` or external code (`example.external_events`)."""

    model_config = _examples(
        {"type": "announcement", "message": "Maintenance at 18:00 UTC", "source": "api", "timestamp": _NOW}
    )
    type: Literal["announcement"] = "announcement"
    message: str
    source: str = Field(description='"api", "external_event" or "background_task"')


class NotificationFrame(ServerFrame):
    """To every connection of one user: `POST /api/user/{user_id}/notification`."""

    model_config = _examples(
        {
            "type": "notification",
            "user_id": "bob",
            "title": "Reminder",
            "text": "Stand-up in 5 minutes",
            "timestamp": _NOW,
        }
    )
    type: Literal["notification"] = "notification"
    user_id: str = Field(description="recipient")
    title: str
    text: str


class BackgroundUpdateFrame(ServerFrame):
    """To every member of a group: `POST /api/group/{group}/message` or a background job.
    A room's group is `room.<room>`."""

    model_config = _examples(
        {"type": "background_update", "group": "room.general", "data": {"build": "passed"}, "timestamp": _NOW}
    )
    type: Literal["background_update"] = "background_update"
    group: str
    data: dict[str, Any]


class ErrorFrame(ServerFrame):
    """Any failure; the connection stays open unless said otherwise (see the error table)."""

    model_config = _examples(
        {
            "type": "error",
            "error_code": "INVALID_MESSAGE_DATA",
            "message": "data.room: Field required",
            "category": "validation",
            "severity": "low",
            "error_id": "5f0c2b8e9d1a4c7b8e6f0a1b2c3d4e5f",
            "timestamp": _NOW,
            "retryable": False,
            "details": {
                "field": "data.room",
                "errors": [{"field": "data.room", "message": "Field required"}],
            },
        }
    )
    type: Literal["error"] = "error"
    error_code: str
    message: str
    category: str
    severity: str
    error_id: str = Field(description="also in the server log, next to the cause")
    retryable: bool
    details: dict[str, Any]


SERVER_FRAMES: dict[str, type[ServerFrame]] = {
    model.model_fields["type"].default: model
    for model in (
        WelcomeFrame,
        ChatMessageFrame,
        RoomJoinedFrame,
        RoomLeftFrame,
        UserJoinedRoomFrame,
        UserLeftRoomFrame,
        RoomCreatedFrame,
        RoomsListFrame,
        RoomUsersFrame,
        RoomInfoFrame,
        MessageHistoryFrame,
        PrivateMessageFrame,
        PrivateMessageSentFrame,
        UserTypingStartFrame,
        UserTypingStopFrame,
        FileMessageFrame,
        PongFrame,
        UserLeftFrame,
        ErrorFrame,
        PingFrame,
        AnnouncementFrame,
        NotificationFrame,
        BackgroundUpdateFrame,
    )
}
"""Every server frame type and its model, in documentation order."""


def frame(model: ServerFrame) -> dict[str, Any]:
    """The dict the manager encodes (once) for a frame model.

    A room message's `offset` and `epoch` are the library's to add (a message to a history
    group that has them is refused): left out while unset.
    """
    if isinstance(model, _RoomMessageFrame):
        return model.model_dump(mode="json", exclude={"offset", "epoch"})
    return model.model_dump(mode="json")
