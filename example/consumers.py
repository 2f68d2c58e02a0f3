"""ChatConsumer: rooms, history, presence, typing, private messages and files for one connection.

A room `<name>` is the library group `room.<name>`. Messages and rooms are stored in the
`ChatDatabase` (async methods, off the event loop). Who is in a room, on every server, is
the room's group members (cluster-wide, cleaned up by the library when a server dies)
matched with the presence rows each connection writes when it joins.

Rooms are history groups (`manager.enable_history("room.*")`, in `example.main`): chat and
file messages are numbered (`offset`, `epoch`) and kept, so a client that reconnects joins
with `since` and gets exactly what it missed; presence and typing frames are ephemeral
(`history=False`).

Abuse bounds: an admin-only room (`RoomAccess`) is refused before anything about it is
read or created; rooms are created within the database's room limits (joining a missing
room creates it, as the spec's example does); typing events go through a
`TypingCoalescer`, at most one fan-out per user and room per interval.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic

from example.access import ROOM_GROUP_PREFIX, RoomAccess
from example.database import ChatDatabase, DatabaseClosedError, RoomLimitError
from example.presence_locks import PRESENCE
from example.protocol import (
    CLIENT_MESSAGES,
    MAX_TEXT_LENGTH,
    ChatMessageData,
    ChatMessageFrame,
    CreateRoomData,
    FileMessageData,
    FileMessageFrame,
    GetMessageHistoryData,
    HistoryMessage,
    JoinRoomData,
    MessageHistoryFrame,
    PrivateMessageData,
    PrivateMessageFrame,
    PrivateMessageSentFrame,
    RoomData,
    RoomInfoFrame,
    RoomJoinedFrame,
    RoomLeftFrame,
    RoomsListFrame,
    RoomSummary,
    RoomUser,
    RoomUsersFrame,
    ServerFrame,
    UserJoinedRoomFrame,
    UserLeftFrame,
    UserLeftRoomFrame,
    UserTypingStartFrame,
    UserTypingStopFrame,
    WelcomeFrame,
    frame,
)
from fastapi_channels import BaseConsumer, Message
from fastapi_channels.exceptions import AuthorizationError, MessageError, RateLimitError, ValidationError

if TYPE_CHECKING:
    from example.typing_indicators import TypingCoalescer, TypingSend
    from fastapi_channels import Connection, ConnectionManager
    from fastapi_channels.middleware import Middleware

__all__ = ["ROOM_GROUP_PREFIX", "ChatConsumer", "room_group", "typing_sender"]

logger = logging.getLogger(__name__)


def room_group(room: str) -> str:
    return ROOM_GROUP_PREFIX + room


def typing_sender(manager: ConnectionManager) -> TypingSend:
    """How a `TypingCoalescer` fans a typing state out: to the room minus the typing connection."""

    async def send(room: str, user_id: str, typing: bool, exclude: str) -> None:
        model = UserTypingStartFrame if typing else UserTypingStopFrame
        message = frame(model(room=room, user_id=user_id, username=user_id))
        # Ephemeral: not kept in the room's history, not numbered, not replayed.
        await manager.send_group_except(room_group(room), message, exclude, history=False)

    return send


class ChatConsumer(BaseConsumer):
    """The chat's handler of one connection; `on_<type>` handles client message `<type>`."""

    # `ping` is answered by the library before validation; every other type is checked here.
    message_types: ClassVar[dict[str, type[pydantic.BaseModel]]] = {
        kind: model for kind, model in CLIENT_MESSAGES.items() if kind != "ping"
    }
    max_file_bytes: ClassVar[int] = 256 * 1024
    history_on_join: ClassVar[int] = 50
    access: ClassVar[RoomAccess] = RoomAccess(admins=frozenset())
    # None: every typing event is fanned out, as in the spec; the app always sets one.
    typing_indicators: ClassVar[TypingCoalescer | None] = None

    database: ChatDatabase

    def __init__(
        self,
        connection: Connection,
        manager: ConnectionManager,
        middleware_stack: Middleware | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(connection, manager, middleware_stack, **kwargs)
        if not isinstance(getattr(self, "database", None), ChatDatabase):
            raise TypeError("ChatConsumer needs database=ChatDatabase(...)")

    @classmethod
    def configured(
        cls,
        *,
        max_file_bytes: int,
        history_on_join: int,
        access: RoomAccess,
        typing_indicators: TypingCoalescer,
    ) -> type[ChatConsumer]:
        """A subclass with these limits and the app's shared policies (built from its settings)."""
        return type(
            cls.__name__,
            (cls,),
            {
                "max_file_bytes": max_file_bytes,
                "history_on_join": history_on_join,
                "access": access,
                "typing_indicators": typing_indicators,
            },
        )

    # --- helpers -------------------------------------------------------------------------------
    @property
    def uid(self) -> str:
        return self.user_id if self.user_id is not None else self.channel_name

    @property
    def username(self) -> str:
        return self.uid

    @property
    def rooms(self) -> list[str]:
        """Rooms this connection is in."""
        return sorted(g[len(ROOM_GROUP_PREFIX) :] for g in self.groups if g.startswith(ROOM_GROUP_PREFIX))

    async def send_frame(self, model: ServerFrame) -> None:
        await self.send(frame(model))

    async def _existing_room(self, room: str) -> dict[str, Any]:
        row = await self.database.get_room(room)
        if row is None:
            raise ValidationError(
                f"no room named {room!r}",
                error_code="ROOM_NOT_FOUND",
                details={"field": "data.room", "room": room},
            )
        return row

    def _require_access(self, room: str, message_type: str, error_code: str) -> None:
        """Refuse an admin-only room to anyone else, before anything about it is read or made.

        The same answer whether or not the room exists, so nobody can probe admin rooms.
        """
        if not self.access.may_enter(self.user_id, room):
            raise AuthorizationError(
                f"room {room!r} is for admins only",
                error_code=error_code,
                details={"field": "data.room", "room": room},
                message_type=message_type,
            )

    async def _create_room(self, room: str, description: str) -> dict[str, Any] | None:
        """The new room (the database hook tells everyone), None if it exists; limits refused."""
        try:
            return await self.database.create_room(room, description, self.uid)
        except RoomLimitError as exc:
            per_user = exc.limit == "rooms_per_user"
            raise RateLimitError(
                f"you have created {exc.maximum} rooms, the most one user may"
                if per_user
                else f"there are {exc.maximum} rooms, the most this chat holds",
                error_code="USER_ROOM_LIMIT_REACHED" if per_user else "ROOM_LIMIT_REACHED",
                retryable=False,
                details={"field": "data.room", "room": room, f"max_{exc.limit}": exc.maximum},
            ) from None

    def _require_member(self, room: str, message_type: str) -> None:
        if room_group(room) not in self.connection.groups:
            raise AuthorizationError(
                f"join room {room!r} first",
                error_code="NOT_IN_ROOM",
                details={"field": "data.room", "room": room},
                message_type=message_type,
            )

    async def room_users(self, room: str) -> list[RoomUser]:
        """Users with a connection in the room, on every server."""
        members = await self.manager.group_members(room_group(room))
        present = await self.database.room_presence(room)
        users = sorted({user for channel, user in present if channel in members})
        return [RoomUser(user_id=user, username=user) for user in users]

    async def _others_present(self, room: str) -> bool:
        """Whether another connection of this user is in the room, for the presence frames
        (taken under PRESENCE's lock). One on this server counts by its presence row alone:
        each removes its own, under the same lock, whenever the library left its groups. One
        on another server counts by its row and its group membership (a dead server's rows
        are not counted)."""
        rows = await self.database.room_presence(room)
        others = [channel for channel, user in rows if user == self.uid and channel != self.channel_name]
        if not others:
            return False
        here = self.manager.server_id + "!"
        if any(channel.startswith(here) for channel in others):
            return True
        members = await self.manager.group_members(room_group(room))
        return any(channel in members for channel in others)

    async def _room_summaries(self) -> list[RoomSummary]:
        rooms = await self.database.list_rooms()
        summaries = []
        for row in rooms:
            count = await self.manager.group_size(room_group(row["room"]))
            summaries.append(RoomSummary(**row, member_count=count))
        return summaries

    # --- lifecycle -----------------------------------------------------------------------------
    async def connect(self) -> None:
        await self.database.upsert_user(self.uid, self.username)
        await self.send_frame(
            WelcomeFrame(
                user_id=self.uid,
                username=self.username,
                server_id=self.manager.server_id,
                channel_name=self.channel_name,
                rooms=await self._room_summaries(),
                max_file_bytes=self.max_file_bytes,
                max_text_length=MAX_TEXT_LENGTH,
            )
        )

    async def on_disconnect(self, code: int) -> None:
        rooms = self.rooms
        try:
            for room in rooms:
                # Its presence row goes, then the user's other connections are looked at and the
                # room told, under the lock: of two connections closing at once only the last
                # sends it, and a join of another connection cannot slip in between.
                async with PRESENCE.hold(room, self.uid):
                    await self.database.remove_presence(self.channel_name, room)
                    if not await self._others_present(room):
                        await self._presence(
                            room, frame(UserLeftFrame(room=room, user_id=self.uid, username=self.username))
                        )
        except DatabaseClosedError:
            pass  # shutting down: the server's presence rows are cleared in the lifespan
        finally:
            # Whatever happened above (an error, a cut hook): no row of this connection stays,
            # or `_others_present` would count it for the user's other connections forever.
            with contextlib.suppress(DatabaseClosedError):
                await self.database.remove_channel_presence(self.channel_name)

    # --- rooms ---------------------------------------------------------------------------------
    async def on_join_room(self, message: Message) -> None:
        """Join a room, creating it when it does not exist (as the spec's example does)."""
        data: JoinRoomData = message.data
        self._require_access(data.room, message.type, "JOIN_FORBIDDEN")
        info = await self.database.get_room(data.room)
        if info is None:
            # None again: someone created it meanwhile, and it is joined like any room.
            info = await self._create_room(data.room, "") or await self._existing_room(data.room)
        since = (data.since.epoch, data.since.offset) if data.since is not None else None
        await self._join(data.room, info, since)

    async def _presence(self, room: str, message: dict[str, Any]) -> None:
        """Presence frames go to the room minus this connection, ephemeral (not in its history)."""
        await self.manager.send_group_except(room_group(room), message, self.channel_name, history=False)

    async def _join(self, room: str, info: dict[str, Any], since: tuple[str, int] | None = None) -> None:
        group = room_group(room)
        was_member = group in self.connection.groups
        # The room is a history group: with `since`, the messages missed after it are sent
        # here, before anything below, then live ones (none twice, none missing).
        joined = await self.join_group(group, since=since)
        async with PRESENCE.hold(room, self.uid):  # of two connections joining at once, one is first
            if not self.connection.is_open:
                return  # closing meanwhile: its on_disconnect removes what it has; nothing to tell
            newly_present = not was_member and not await self._others_present(room)
            await self.database.add_presence(self.channel_name, room, self.uid, self.manager.server_id)
            if newly_present:
                await self._presence(
                    room, frame(UserJoinedRoomFrame(room=room, user_id=self.uid, username=self.username))
                )
        await self.send_frame(
            RoomJoinedFrame(
                room=room,
                user_id=self.uid,
                username=self.username,
                recovered=joined.recovered,
                replayed=joined.replayed,
                epoch=joined.epoch,
                offset=joined.offset or 0,
            )
        )
        await self.send_frame(RoomInfoFrame(**info, member_count=await self.manager.group_size(group)))
        if since is None:
            # A client that sent `since` has the earlier messages, or reloads them itself.
            limit = self.history_on_join
            history = await self.database.recent_messages(room, limit) if limit else []
            await self.send_frame(
                MessageHistoryFrame(room=room, messages=[HistoryMessage(**row) for row in history])
            )
        await self.send_frame(RoomUsersFrame(room=room, users=await self.room_users(room)))

    async def on_leave_room(self, message: Message) -> None:
        data: RoomData = message.data
        self._require_member(data.room, message.type)
        group = room_group(data.room)
        async with PRESENCE.hold(data.room, self.uid):  # of two connections leaving at once, one is last
            await self.leave_group(group)
            await self.database.remove_presence(self.channel_name, data.room)
            gone = not await self._others_present(data.room)
            if gone:
                await self.manager.send_to_group(
                    group,
                    frame(UserLeftRoomFrame(room=data.room, user_id=self.uid, username=self.username)),
                    history=False,
                )
        await self.send_frame(RoomLeftFrame(room=data.room, user_id=self.uid, username=self.username))

    async def on_create_room(self, message: Message) -> None:
        data: CreateRoomData = message.data
        # Checked first: a non-admin must not be able to squat an admin room's name.
        self._require_access(data.room, message.type, "JOIN_FORBIDDEN")
        created = await self._create_room(data.room, data.description)
        if created is None:
            raise ValidationError(
                f"room {data.room!r} already exists",
                error_code="ROOM_EXISTS",
                details={"field": "data.room", "room": data.room},
            )
        await self._join(data.room, created)

    async def on_list_rooms(self, message: Message) -> None:
        await self.send_frame(RoomsListFrame(rooms=await self._room_summaries()))

    async def on_get_room_users(self, message: Message) -> None:
        data: RoomData = message.data
        await self._existing_room(data.room)
        await self.send_frame(RoomUsersFrame(room=data.room, users=await self.room_users(data.room)))

    async def on_get_message_history(self, message: Message) -> None:
        data: GetMessageHistoryData = message.data
        self._require_access(data.room, message.type, "ROOM_FORBIDDEN")
        await self._existing_room(data.room)
        rows = await self.database.recent_messages(data.room, data.limit, data.before_id)
        await self.send_frame(
            MessageHistoryFrame(room=data.room, messages=[HistoryMessage(**row) for row in rows])
        )

    # --- messages ------------------------------------------------------------------------------
    async def on_chat_message(self, message: Message) -> None:
        data: ChatMessageData = message.data
        self._require_member(data.room, message.type)
        stored = await self.database.save_message(data.room, self.uid, self.username, data.text)
        await self.send_to_group(
            room_group(data.room),
            frame(
                ChatMessageFrame(
                    id=stored["id"],
                    room=data.room,
                    user_id=self.uid,
                    username=self.username,
                    text=data.text,
                    timestamp=stored["timestamp"],
                )
            ),
        )

    async def on_private_message(self, message: Message) -> None:
        data: PrivateMessageData = message.data
        delivered = await self.manager.send_to_user(
            data.to_user,
            frame(
                PrivateMessageFrame(
                    user_id=self.uid, username=self.username, to_user=data.to_user, text=data.text
                )
            ),
        )
        if delivered == 0:
            raise MessageError(
                f"user {data.to_user!r} is not connected",
                error_code="USER_OFFLINE",
                details={"field": "data.to_user", "to_user": data.to_user},
                message_type=message.type,
            )
        await self.send_frame(
            PrivateMessageSentFrame(to_user=data.to_user, text=data.text, delivered=delivered)
        )

    async def on_typing_start(self, message: Message) -> None:
        data: RoomData = message.data
        self._require_member(data.room, message.type)
        await self._typing(data.room, True)

    async def on_typing_stop(self, message: Message) -> None:
        data: RoomData = message.data
        self._require_member(data.room, message.type)
        await self._typing(data.room, False)

    async def _typing(self, room: str, typing: bool) -> None:
        """Typing is not rate limited, so it is coalesced instead: see `TypingCoalescer`."""
        if self.typing_indicators is not None:
            await self.typing_indicators.offer(self.uid, room, typing, self.channel_name)
        else:
            await typing_sender(self.manager)(room, self.uid, typing, self.channel_name)

    async def on_file_message(self, message: Message) -> None:
        data: FileMessageData = message.data
        self._require_member(data.room, message.type)
        # Refuse by size before decoding anything: base64 carries 3 bytes per 4 characters.
        encoded = data.data
        approx = len(encoded) * 3 // 4 - (len(encoded) - len(encoded.rstrip("=")))
        if approx > self.max_file_bytes:
            raise ValidationError(
                f"file of {approx} bytes exceeds the limit of {self.max_file_bytes}",
                error_code="FILE_TOO_LARGE",
                details={"field": "data.data", "size": approx, "max_file_bytes": self.max_file_bytes},
                message_type=message.type,
            )
        try:
            size = len(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise ValidationError(
                "data.data: not valid base64",
                error_code="INVALID_MESSAGE_DATA",
                details={
                    "field": "data.data",
                    "errors": [{"field": "data.data", "message": "not valid base64"}],
                },
                message_type=message.type,
            ) from None
        stored = await self.database.save_message(
            data.room, self.uid, self.username, file_name=data.name, file_mime=data.mime_type, file_size=size
        )
        await self.send_to_group(
            room_group(data.room),
            frame(
                FileMessageFrame(
                    id=stored["id"],
                    room=data.room,
                    user_id=self.uid,
                    username=self.username,
                    name=data.name,
                    mime_type=data.mime_type,
                    size=size,
                    data=encoded,
                    timestamp=stored["timestamp"],
                )
            ),
        )
