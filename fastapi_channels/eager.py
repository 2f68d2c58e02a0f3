"""Run an ASGI `send` to its end in the caller when it does not have to wait.

uvicorn's WebSocket protocols frame and write a message synchronously while the transport
takes data, so the coroutine of such a `send` finishes on its first step. Stepping it by hand
skips what a writer task costs per delivery (a future, a wake-up, a task step, a loop
iteration) and makes a fan-out on the ASGI path cost what a loop of inline sends does. A
send that does wait (the transport is paused: a slow client) is finished by a task, where it
waits as it always did.

Only the server's own send is run this way. An app's ASGI middleware may wrap `send` with
code that needs a current task or its context (`asyncio.timeout`, anyio, tracing), which a
coroutine stepped outside a task lacks; with such a wrapper in between, every send goes
through it from the connection's writer task, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from starlette.types import Send
from starlette.websockets import WebSocket

__all__ = ["run_eagerly", "server_send"]

SERVER_MODULE = "uvicorn.protocols.websockets."
"""Where the WebSocket protocols whose `send` is known to write without waiting come from:
uvicorn's sans-I/O and wsproto ones (and the library's fast-path protocol, a subclass), whose
ASGI send is their method `send`. The legacy one's is `asgi_send` (deprecated by uvicorn; it
keeps the writer task)."""

PASS_THROUGH = {
    # Starlette's exception handling wraps `send` to note an HTTP response's start; a
    # WebSocket message goes through untouched.
    ("starlette._exception_handler", "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender"),
}
"""Wrappers of `send` known to forward a `websocket.send` message as it is."""

MAX_WRAPPERS = 8
"""How deep `server_send` looks (Starlette adds one wrapper per exception-handling layer)."""


def server_send(websocket: WebSocket) -> Send | None:
    """The server's own `send` under the app's `websocket`, when only known pass-through
    wrappers are between them; None when anything else is (or the server is another)."""
    send: Any = getattr(websocket, "_send", None)
    for _ in range(MAX_WRAPPERS):
        owner = getattr(send, "__self__", None)
        if owner is not None:
            known = getattr(send, "__name__", "") == "send" and any(
                kind.__module__.startswith(SERVER_MODULE) for kind in type(owner).__mro__
            )
            return send if known else None
        if (getattr(send, "__module__", None), getattr(send, "__qualname__", None)) not in PASS_THROUGH:
            return None
        send = _wrapped(send)
    return None


def _wrapped(wrapper: Any) -> Any:
    """The `send` a pass-through wrapper forwards to (its closure's `send`)."""
    code = getattr(wrapper, "__code__", None)
    closure = getattr(wrapper, "__closure__", None)
    if code is None or closure is None or "send" not in code.co_freevars:
        return None
    return closure[code.co_freevars.index("send")].cell_contents


def run_eagerly(sending: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None] | None:
    """Step `sending` here: None when it finished (its exception, if any, is raised here);
    otherwise a coroutine that finishes it, for a task to await (or to close, if none will)."""
    try:
        waiting_on = sending.send(None)
    except StopIteration:
        return None
    return _finish(sending, waiting_on)


async def _finish(sending: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """What a task does for a coroutine it steps: wait for what it yielded, then resume it."""
    try:
        while True:
            if waiting_on is None:  # a bare yield (`asyncio.sleep(0)`): one loop iteration
                await asyncio.sleep(0)
            else:  # a future: its outcome is for `sending` to see when resumed, not for us
                await asyncio.wait((waiting_on,))
            try:
                waiting_on = sending.send(None)
            except StopIteration:
                return
    except BaseException:
        sending.close()  # cancelled while it waited: let its `finally` blocks run
        raise
