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
import functools
import importlib
from collections.abc import Coroutine
from typing import Any

from starlette.types import Send
from starlette.websockets import WebSocket

__all__ = ["Unfinished", "run_eagerly", "server_send"]

SERVER_SENDS = (
    ("uvicorn.protocols.websockets.websockets_sansio_impl", "WebSocketsSansIOProtocol"),
    ("uvicorn.protocols.websockets.wsproto_impl", "WSProtocol"),
)
"""The protocols whose own `send` writes a `websocket.send` without waiting while the
transport is writable (the library's fast-path protocol inherits the first one's). The
legacy protocol's ASGI send (`asgi_send`, deprecated by uvicorn) keeps the writer task, and
so does a subclass that overrides `send`: its code is not known."""

PASS_THROUGH = {
    # Starlette's exception handling wraps `send` to note an HTTP response's start; a
    # WebSocket message goes through untouched.
    ("starlette._exception_handler", "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender"),
}
"""Wrappers of `send` known to forward a `websocket.send` message as it is."""

MAX_WRAPPERS = 8
"""How deep `server_send` looks (Starlette adds one wrapper per exception-handling layer)."""


@functools.cache
def _known_sends() -> frozenset[Any]:
    """The functions of SERVER_SENDS that can be imported here (wsproto is optional)."""
    found = set()
    for module_name, class_name in SERVER_SENDS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found.add(getattr(module, class_name).send)
    return frozenset(found)


def server_send(websocket: WebSocket) -> Send | None:
    """The server's own `send` under the app's `websocket`, when only known pass-through
    wrappers are between them; None when anything else is (or the server is another)."""
    send: Any = getattr(websocket, "_send", None)
    for _ in range(MAX_WRAPPERS):
        if getattr(send, "__self__", None) is not None:  # a bound method: the server's?
            return send if getattr(send, "__func__", None) in _known_sends() else None
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


class Unfinished:
    """A send stepped once that is waiting: for a task to finish, or to abandon."""

    __slots__ = ("sending", "waiting_on")

    def __init__(self, sending: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self.sending = sending
        self.waiting_on = waiting_on

    async def finish(self) -> None:
        """What a task does for a coroutine it steps: wait for what it yielded, resume it."""
        sending, waiting_on = self.sending, self.waiting_on
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

    def abandon(self) -> None:
        """No task will finish it (its connection is ending): close it where it waits."""
        self.sending.close()


def run_eagerly(sending: Coroutine[Any, Any, None]) -> Unfinished | None:
    """Step `sending` here: None when it finished (its exception, if any, is raised here);
    otherwise the send as it waits, for a task to finish (or to abandon, if none will)."""
    try:
        waiting_on = sending.send(None)
    except StopIteration:
        return None
    return Unfinished(sending, waiting_on)
