"""Request and response models of the REST API (they appear in the OpenAPI docs at /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from example.protocol import MAX_TEXT_LENGTH, USER_PATTERN, HistoryMessage

__all__ = [
    "AnnounceIn",
    "AnnounceOut",
    "ApiError",
    "ErrorOut",
    "GroupMessageIn",
    "GroupMessageOut",
    "NotificationIn",
    "NotificationOut",
    "RoomMessageIn",
    "RoomMessageOut",
    "RoomMessagesOut",
    "StatusOut",
]

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_LENGTH)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    detail: str = Field(examples=["Limit must be between 1 and 1000"])
    error_code: str | None = Field(
        default=None,
        description="a stable code for the refusals of authentication, access and limits",
        examples=["AUTHENTICATION_REQUIRED", "ROOM_FORBIDDEN", "TOO_MANY_SCHEDULED"],
    )


class ApiError(HTTPException):
    """A REST refusal the app renders as `ErrorOut`: `{"detail": ..., "error_code": ...}`.

    An HTTPException, so without the app's handler it still becomes `{"detail": ...}`.
    """

    def __init__(
        self, status_code: int, error_code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.error_code = error_code

    def body(self) -> dict[str, str]:
        return ErrorOut(detail=str(self.detail), error_code=self.error_code).model_dump()


class RoomMessagesOut(BaseModel):
    room: str
    messages: list[HistoryMessage] = Field(description="oldest first")
    count: int


class AnnounceIn(_In):
    message: Text = Field(examples=["Maintenance at 18:00 UTC"])
    delay_seconds: float = Field(
        default=0,
        ge=0,
        le=3600,
        description="0: now; otherwise a background task sends it later "
        "(at most CHAT_MAX_ANNOUNCE_DELAY, 300 by default: 400 DELAY_TOO_LONG above it)",
    )


class AnnounceOut(BaseModel):
    status: Literal["sent", "scheduled"]
    delay_seconds: float


class RoomMessageIn(_In):
    text: Text = Field(examples=["The build is green again"])
    username: Annotated[str, StringConstraints(pattern=USER_PATTERN)] | None = Field(
        default=None,
        description="shown as the sender. With access tokens: yours (the default), anything else is "
        'refused (403 USERNAME_MISMATCH); without: anything, "system" by default',
    )


class RoomMessageOut(BaseModel):
    status: Literal["sent"]
    message: HistoryMessage


class NotificationIn(_In):
    text: Text = Field(examples=["Stand-up in 5 minutes"])
    title: Annotated[str, StringConstraints(max_length=200)] = "Notification"


class NotificationOut(BaseModel):
    status: Literal["sent"]
    user_id: str
    delivered: int = Field(description="connections of the user it was addressed to (every server)")


class GroupMessageIn(_In):
    data: dict[str, Any] = Field(examples=[{"build": "passed"}])


class GroupMessageOut(BaseModel):
    status: Literal["sent"]
    group: str


class StatusOut(BaseModel):
    status: Literal["ok"]
    backend_type: str = Field(description='"memory" or "redis"')
    server_id: str
    connections: int = Field(description="connections on every server")
    local_connections: int = Field(description="connections on this server")
    users: int = Field(description="users connected to this server")
    groups: int = Field(description="groups with members, on every server")
    stats: dict[str, Any] = Field(description="this server's counters (ConnectionManager.get_stats())")
