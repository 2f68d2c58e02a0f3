"""The suite's WebSocket client over a real socket (websockets' asyncio client), for every app
the tests run under a real server: tests/app.py's command protocol, the consumer app, the chat
example (which adds its frame checks in tests/example/support.py).

`Client.open(server, user)` connects to `/ws/<user>` and reads the app's greeting frame (for
tests/app.py: `{"type": "hello", "channel_name": ...}`). Frames come back JSON-decoded when
they are JSON text; the server's heartbeat `{"type": "ping"}` frames are skipped unless asked
for. Every client opened is closed after the test by the `close_clients` fixture (imported
by the conftest of each folder that uses it). For an app without a port, in the test's own
event loop, use `fastapi_channels.testing.Communicator` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Protocol, Self

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

__all__ = ["WAIT", "Client", "close_all_clients", "close_clients"]

WAIT = 5.0  # every wait for a frame or a close is bounded by this
OPEN_WAIT = 10.0  # a server process on a loaded machine may take longer to answer its first client


class HasWsUrl(Protocol):
    @property
    def ws_url(self) -> str: ...


class Client:
    opened: ClassVar[list[Client]] = []

    def __init__(self, ws: ClientConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.greeting: dict[str, Any] = {}  # the app's first frame, when `open` waited for one
        self.channel_name: str = ""  # from the greeting, when it names one
        self.backlog: list[Any] = []  # frames `expect` passed over, handed out first by `next`
        self.close_code: int | None = None  # once the server closed: its close frame's code
        self.close_reason: str | None = None
        Client.opened.append(self)

    @classmethod
    async def open(
        cls, server: str | HasWsUrl, user: str, *, greeting: str | None = "hello", **options: Any
    ) -> Self:
        """Connect to `<server>/ws/<user>` (`user` may carry a query string) and wait for the
        greeting frame of type `greeting` (None: expect none). `options` go to websockets'
        `connect` (max_size=None, compression=None, additional_headers=...)."""
        base = server if isinstance(server, str) else server.ws_url
        ws = await connect(f"{base}/ws/{user}", open_timeout=OPEN_WAIT, **options)
        client = cls(ws, user)
        if greeting is not None:
            try:
                first = await client.next(OPEN_WAIT)
            except BaseException:
                await ws.close()
                raise
            assert isinstance(first, dict) and first.get("type") == greeting, first
            client.greeting = first
            client.channel_name = str(first.get("channel_name", ""))
        return client

    @classmethod
    async def open_refused(cls, server: str | HasWsUrl, user: str) -> tuple[int | None, str | None]:
        """Open a connection the server must refuse after accepting it (the manager's limits):
        no frame may arrive before the close. Returns the close frame's (code, reason)."""
        client = await cls.open(server, user, greeting=None)
        frames = await client.read_until_closed()
        assert frames == [], f"a refused connection received frames: {frames!r}"
        return client.close_code, client.close_reason

    # --- sending ----------------------------------------------------------------------------------
    async def send(self, **fields: Any) -> None:
        """One JSON text frame of these fields: `send(op="join", group="room")`."""
        await self.send_json(fields)

    async def send_json(self, value: Any) -> None:
        await self.ws.send(json.dumps(value))

    async def send_raw(self, data: str | bytes) -> None:
        """A text (str) or binary (bytes) frame as it is."""
        await self.ws.send(data)

    # --- receiving --------------------------------------------------------------------------------
    def received(self, frame: Any) -> None:
        """Called with every frame as it arrives (decoded), pings included: a place for checks."""

    async def _receive(self, timeout: float) -> Any:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame: Any = raw
        if isinstance(raw, str):
            with contextlib.suppress(ValueError):  # else plain text: send_personal(name, "text")
                frame = json.loads(raw)
        self.received(frame)
        return frame

    async def next(self, timeout: float = WAIT, *, skip_pings: bool = True) -> Any:
        """The next frame: a dict for a JSON object, else the decoded JSON, the text or the bytes."""
        if self.backlog:
            return self.backlog.pop(0)
        while True:
            frame = await self._receive(timeout)
            if not (skip_pings and is_ping(frame)):
                return frame

    async def call(self, reply: str, timeout: float = WAIT, **command: Any) -> dict[str, Any]:
        """Send a command; its reply, of type `reply`, must be the next frame (an error frame
        fails the test)."""
        await self.send_json(command)
        frame = await self.next(timeout)
        assert isinstance(frame, dict) and frame.get("type") == reply, frame
        return frame

    async def expect(self, kind: str, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
        """The first frame of type `kind` whose `fields` match; frames before it wait in the
        backlog, where `next` and `expect` find them later."""
        for index, frame in enumerate(self.backlog):
            if matches(frame, kind, fields):
                return self.backlog.pop(index)  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                frame = await self._receive(max(deadline - loop.time(), 0))
            except TimeoutError:
                raise AssertionError(
                    f"{self.user}: no {kind} {fields} within {timeout:g}s; got {self.backlog}"
                ) from None
            if matches(frame, kind, fields):
                return frame  # type: ignore[no-any-return]
            if not is_ping(frame):
                self.backlog.append(frame)

    async def expect_error(self, error_code: str, timeout: float = WAIT) -> dict[str, Any]:
        return await self.expect("error", timeout, error_code=error_code)

    async def frames_before(
        self, request: dict[str, Any], kind: str, timeout: float = WAIT, **fields: Any
    ) -> list[Any]:
        """Send `request` and return every frame (the backlog's first) that arrives before its
        reply, the frame of type `kind` with these `fields`.

        A server answers one connection's frames in order, so once the reply is here nothing
        addressed to this client earlier is still on its way (on one server): `== []` proves
        that nothing arrived, without waiting for a while and hoping.
        """
        await self.send_json(request)
        frames = []
        while not matches(frame := await self.next(timeout), kind, fields):
            frames.append(frame)
        return frames

    async def echo_marker(self, marker: str = "marker") -> Any:
        """tests/app.py only: ask for an echo of `marker`; the first frame that arrives after.

        `assert await c.echo_marker("m") == {"type": "echo", "data": "m"}` proves that nothing
        else was on its way to `c` (see `frames_before`).
        """
        await self.send(op="echo", data=marker)
        return await self.next()

    # --- closing ----------------------------------------------------------------------------------
    async def read_until_closed(self, timeout: float = WAIT) -> list[Any]:
        """Read until the server closes; the frames that came first (pings skipped). Sets
        `close_code` and `close_reason` (None when the TCP connection ended without a close
        frame)."""
        frames = [*self.backlog]
        self.backlog.clear()
        try:
            while True:
                frame = await self._receive(timeout)
                if not is_ping(frame):
                    frames.append(frame)
        except ConnectionClosed as closed:
            if closed.rcvd is not None:
                self.close_code, self.close_reason = closed.rcvd.code, closed.rcvd.reason
        return frames

    async def wait_closed(self, timeout: float = WAIT) -> tuple[int | None, str | None]:
        """Read until the server closes (frames still queued are dropped); its (code, reason)."""
        await self.read_until_closed(timeout)
        return self.close_code, self.close_reason

    async def close(self) -> None:
        await self.ws.close()


def is_ping(frame: Any) -> bool:
    """The server's heartbeat ping (an application frame, not the protocol's ping)."""
    return isinstance(frame, dict) and frame.get("type") == "ping"


def matches(frame: Any, kind: str, fields: dict[str, Any]) -> bool:
    return (
        isinstance(frame, dict)
        and frame.get("type") == kind
        and all(frame.get(key) == value for key, value in fields.items())
    )


async def close_all_clients() -> None:
    opened, Client.opened[:] = list(Client.opened), []
    await asyncio.gather(*(client.ws.close() for client in opened), return_exceptions=True)


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    """Closes every Client a test opened. Autouse where a conftest imports it."""
    yield
    await close_all_clients()
