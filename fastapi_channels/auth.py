"""Authentication at the handshake, as a FastAPI dependency.

    auth = WebSocketAuth(verify=lambda token: users_by_token.get(token))

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket, user_id: str = Depends(auth)):
        connection = await manager.connect(websocket, user_id=user_id)

The token is taken from the `token` query parameter, an `Authorization: Bearer` header or a
`token` cookie, in that order (browsers cannot set headers on a WebSocket). A missing or
rejected token refuses the socket before it is accepted (HTTP 403), so nothing registers.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket

from fastapi_channels.exceptions import AuthenticationError

__all__ = ["WebSocketAuth", "token_from"]

Verifier = Callable[[str], "str | Awaitable[str | None] | None"]


def token_from(websocket: WebSocket, *, query_param: str = "token", cookie: str = "token") -> str | None:
    """The credential a client presented, or None."""
    token = websocket.query_params.get(query_param)
    if token:
        return token
    scheme, _, credentials = (websocket.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return websocket.cookies.get(cookie) or None


class WebSocketAuth:
    """A dependency returning the user id that `verify(token)` vouches for."""

    def __init__(self, verify: Verifier, *, query_param: str = "token", cookie: str = "token") -> None:
        self.verify = verify
        self.query_param = query_param
        self.cookie = cookie

    async def __call__(self, websocket: WebSocket) -> str:
        token = token_from(websocket, query_param=self.query_param, cookie=self.cookie)
        if token is None:
            raise AuthenticationError("no credentials", error_code="AUTHENTICATION_REQUIRED")
        user = self.verify(token)
        if inspect.isawaitable(user):
            user = await user
        if not user:
            raise AuthenticationError("invalid credentials", error_code="AUTHENTICATION_FAILED")
        return str(user)
