"""Who may do what in the chat: admin-only rooms, and the REST side of the access tokens.

One `RoomAccess` answers "may this user see this room?" for every path into a room: the
manager's `authorize_join` hook, the consumer (history, creating a room by joining it) and
the REST API, so an admin-only room cannot be read through a door that forgot to ask.

`RestAuth` authenticates REST calls with the tokens of `CHAT_ACCESS_TOKENS`, verified by
the same function as the socket's `WebSocketAuth`. REST takes the token from an
`Authorization: Bearer` header only: a token in a query string ends up in access logs and
proxies' logs, and a cookie would be sent by the browser on a cross-site request (CSRF).
The socket accepts those two because a browser cannot set headers on a WebSocket.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from example.schemas import ApiError

__all__ = [
    "ADMIN_ROOM_PREFIX",
    "ROOM_GROUP_PREFIX",
    "Caller",
    "CallerDep",
    "RestAuth",
    "RoomAccess",
    "current_caller",
]

ADMIN_ROOM_PREFIX = "admin-"
ROOM_GROUP_PREFIX = "room."  # a room `<name>` is the library group `room.<name>`

Verifier = Callable[[str], "str | Awaitable[str | None] | None"]

# auto_error=False: a missing credential is answered by RestAuth with the chat's JSON error
# (and only when tokens are on); the scheme still shows in the OpenAPI docs ("Authorize").
_bearer = HTTPBearer(auto_error=False, description="a token of CHAT_ACCESS_TOKENS (when set)")


@dataclass(frozen=True, slots=True)
class RoomAccess:
    """Rooms named `admin-*` are for `admins` only; every other room is open to everyone."""

    admins: frozenset[str]

    @staticmethod
    def admin_only(room: str) -> bool:
        return room.startswith(ADMIN_ROOM_PREFIX)

    def may_enter(self, user_id: str | None, room: str) -> bool:
        """May this user join the room, read its history or post in it? None: anonymous."""
        return not self.admin_only(room) or (user_id is not None and user_id in self.admins)

    def may_use_group(self, user_id: str | None, group: str) -> bool:
        """`may_enter` for a library group name: a room's group is `room.<room>`."""
        if not group.startswith(ROOM_GROUP_PREFIX):
            return True
        return self.may_enter(user_id, group[len(ROOM_GROUP_PREFIX) :])

    def forbidden(self, room: str) -> ApiError:
        return ApiError(403, "ROOM_FORBIDDEN", f"room {room!r} is for admins only")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a REST call: a user id vouched for by a token, or None when tokens are off."""

    user_id: str | None


class RestAuth:
    """Who a REST request is from, for one app (`app.state.rest_auth`; see `current_caller`).

    With `verify=None` (no `CHAT_ACCESS_TOKENS`) every caller is anonymous and let through,
    as the example always was. Otherwise a request without a valid bearer token is refused
    with 401 and `WWW-Authenticate: Bearer` before its handler runs.
    """

    def __init__(self, verify: Verifier | None) -> None:
        self.verify = verify

    async def authenticate(self, credentials: HTTPAuthorizationCredentials | None) -> Caller:
        if self.verify is None:
            return Caller(user_id=None)
        if credentials is None or not credentials.credentials.strip():
            raise _unauthenticated("AUTHENTICATION_REQUIRED", "an Authorization: Bearer token is required")
        user = self.verify(credentials.credentials.strip())
        if inspect.isawaitable(user):
            user = await user
        if not user:
            raise _unauthenticated("AUTHENTICATION_FAILED", "the token is not valid")
        return Caller(user_id=str(user))


async def current_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    """FastAPI dependency: the app's `RestAuth` applied to this request.

    Module-level (the app's own auth is found on `app.state`), so endpoints can declare
    `caller: CallerDep` although their annotations are strings.
    """
    auth: RestAuth = request.app.state.rest_auth
    return await auth.authenticate(credentials)


CallerDep = Annotated[Caller, Depends(current_caller)]


def _unauthenticated(code: str, detail: str) -> ApiError:
    return ApiError(401, code, detail, headers={"WWW-Authenticate": "Bearer"})
