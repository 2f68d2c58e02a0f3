"""Communicator: talk to an app's WebSocket endpoint in process, as a client would.

The app runs as an ASGI callable in the test's own event loop; frames travel through two
bounded queues. Several communicators can share one app: its lifespan starts with the first
and stops after the last (or is held open with `app_lifespan(app)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

__all__ = ["Communicator", "app_lifespan", "lifespan_enter", "lifespan_leave"]

ASGIApp = Any
MAX_QUEUED_FRAMES = 10_000
"""Frames the app may have sent that the test has not read yet; past it the app's send waits."""


class _Lifespan:
    """One app's lifespan, shared by everything that talks to it, counted by users."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.users = 0
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.supported = True

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._outbox.get()
        if answer["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the app's lifespan startup failed: {answer.get('message', '')}")

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._inbox.get, self._outbox.put)
        except BaseException as exc:
            # An app without lifespan support raises on the scope: carry on without one.
            self.supported = False
            await self._outbox.put({"type": "lifespan.startup.complete", "error": repr(exc)})
            if not isinstance(exc, Exception):
                raise

    async def stop(self) -> None:
        if self._task is None or not self.supported:
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        answer = await self._outbox.get()
        await self._task
        if answer["type"] == "lifespan.shutdown.failed":
            raise RuntimeError(f"the app's lifespan shutdown failed: {answer.get('message', '')}")


_lifespans: weakref.WeakKeyDictionary[Any, _Lifespan] = weakref.WeakKeyDictionary()


async def lifespan_enter(app: ASGIApp) -> _Lifespan:
    lifespan = _lifespans.get(app)
    if lifespan is None:
        lifespan = _lifespans[app] = _Lifespan(app)
        lifespan.users += 1
        try:
            await lifespan.start()
        except BaseException:
            del _lifespans[app]
            raise
    else:
        lifespan.users += 1
    return lifespan


async def lifespan_leave(app: ASGIApp) -> None:
    lifespan = _lifespans.get(app)
    if lifespan is None:
        return
    lifespan.users -= 1
    if lifespan.users == 0:
        del _lifespans[app]
        await lifespan.stop()


@contextlib.asynccontextmanager
async def app_lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Hold the app's lifespan open across several communicators."""
    await lifespan_enter(app)
    try:
        yield
    finally:
        await lifespan_leave(app)


class Communicator:
    """One in-process WebSocket client of `app` at `path` (query string allowed).

    `async with Communicator(app, "/ws/alice") as ws:` connects (and fails the test with a
    clear error when the app refuses); or call `connect()` and read `accepted`, `close_code`.
    """

    def __init__(
        self,
        app: ASGIApp,
        path: str,
        *,
        headers: Iterable[tuple[str, str]] | dict[str, str] | None = None,
        subprotocols: Iterable[str] = (),
        client: tuple[str, int] = ("127.0.0.1", 50000),
    ) -> None:
        self.app = app
        parts = urlsplit(path)
        # As an ASGI server hands it over: `path` decoded, `raw_path` as sent.
        self.raw_path = (parts.path or "/").encode()
        self.path = unquote(parts.path or "/")
        self.query_string = parts.query.encode()
        pairs = headers.items() if isinstance(headers, dict) else (headers or ())
        self.headers = [(name.lower().encode(), value.encode()) for name, value in pairs]
        if not any(name == b"host" for name, _ in self.headers):
            self.headers.insert(0, (b"host", b"testserver"))
        self.subprotocols = list(subprotocols)
        self.client = client
        self.accepted = False
        self.subprotocol: str | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED_FRAMES)
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED_FRAMES)
        self._handshake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._lifespan: _Lifespan | None = None

    async def __aenter__(self) -> Communicator:
        accepted, code = await self.connect()
        if not accepted:
            await self.disconnect()
            raise AssertionError(f"the app refused the connection (close code {code}, {self.close_reason!r})")
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.disconnect()

    # --- connecting ----------------------------------------------------------------------------
    async def connect(self, timeout: float = 5.0) -> tuple[bool, int | str | None]:
        """Open the socket: (True, chosen subprotocol) when accepted, (False, close code) if not."""
        self._lifespan = await lifespan_enter(self.app)
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ("testserver", 80),
            "client": self.client,
            "root_path": "",
            "path": self.path,
            "raw_path": self.raw_path,
            "query_string": self.query_string,
            "headers": list(self.headers),
            "subprotocols": list(self.subprotocols),
            "state": dict(self._lifespan.state),
            "extensions": {},
        }
        self._handshake = asyncio.get_running_loop().create_future()
        await self._to_app.put({"type": "websocket.connect"})
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        try:
            await asyncio.wait_for(asyncio.shield(self._handshake), timeout)
        except TimeoutError:
            raise TimeoutError(f"the app did not accept or refuse {self.path} within {timeout:g}s") from None
        if self.accepted:
            return True, self.subprotocol
        return False, self.close_code

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._to_app.get, self._send)
        finally:
            self._settle_handshake()
            if self.close_code is None:
                self.close_code = 1006  # the app returned without a close frame: what a client sees
            with contextlib.suppress(asyncio.QueueFull):
                self._from_app.put_nowait({"type": "websocket.close", "code": self.close_code})

    def _settle_handshake(self) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(None)

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self.accepted = True
            self.subprotocol = message.get("subprotocol")
            self._settle_handshake()
        elif kind == "websocket.close":
            if self.close_code is None:
                self.close_code = int(message.get("code", 1000))
                self.close_reason = message.get("reason") or ""
            self._settle_handshake()
            await self._from_app.put(message)
        elif kind == "websocket.send":
            if self.close_code is not None:
                raise RuntimeError("send after close")
            await self._from_app.put(message)
        elif kind == "websocket.http.response.start":
            self.close_code = 1006  # refused with an HTTP response instead of a WebSocket
            self._settle_handshake()

    # --- frames --------------------------------------------------------------------------------
    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Send one text or binary frame to the app."""
        if (text_data is None) == (bytes_data is None):
            raise TypeError("send_to takes exactly one of text_data or bytes_data")
        if text_data is not None:
            await self._to_app.put({"type": "websocket.receive", "text": text_data})
        else:
            await self._to_app.put({"type": "websocket.receive", "bytes": bytes_data})

    async def send_json_to(self, data: Any) -> None:
        await self.send_to(text_data=orjson.dumps(data).decode())

    async def receive_from(self, timeout: float = 1.0) -> str | bytes:
        """The next frame the app sent (text or bytes); raises when the app closed the socket."""
        try:
            message = await asyncio.wait_for(self._from_app.get(), timeout)
        except TimeoutError:
            self._raise_app_error()
            raise TimeoutError(f"nothing arrived within {timeout:g}s") from None
        if message["type"] == "websocket.close":
            self._from_app.put_nowait(message)  # every later read sees the close too
            self._raise_app_error()
            raise ConnectionError(f"the app closed the connection ({self.close_code} {self.close_reason!r})")
        text = message.get("text")
        return text if text is not None else bytes(message.get("bytes") or b"")

    async def receive_json_from(self, timeout: float = 1.0) -> Any:
        frame = await self.receive_from(timeout)
        if isinstance(frame, bytes):
            raise AssertionError(f"expected a JSON text frame, got {len(frame)} bytes")
        return orjson.loads(frame)

    async def receive_nothing(self, timeout: float = 0.1) -> bool:
        """True when no frame arrives within `timeout` (a close counts as something)."""
        if not self._from_app.empty():
            return False
        try:
            message = await asyncio.wait_for(self._from_app.get(), timeout)
        except TimeoutError:
            return True
        # Put it back in front: it was not consumed by this check.
        rest = [message]
        while not self._from_app.empty():
            rest.append(self._from_app.get_nowait())
        for item in rest:
            self._from_app.put_nowait(item)
        return False

    def _raise_app_error(self) -> None:
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    # --- closing -------------------------------------------------------------------------------
    async def disconnect(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Close from the client side and wait for the app's handler to end (cancel it if not)."""
        task, self._task = self._task, None
        if task is not None:
            if not task.done():
                with contextlib.suppress(asyncio.QueueFull):
                    self._to_app.put_nowait({"type": "websocket.disconnect", "code": code})
                done, _ = await asyncio.wait([task], timeout=timeout)
                if not done:
                    task.cancel()
                    await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                error = task.exception()
                await self._release_lifespan()
                raise error  # type: ignore[misc]
        await self._release_lifespan()

    async def _release_lifespan(self) -> None:
        if self._lifespan is not None:
            self._lifespan = None
            await lifespan_leave(self.app)
