"""A minimal WebSocket client for the load generator: cheap per received frame.

A general client (websockets' asyncio one) costs a future, a queue hop and a decode per
message; at hundreds of thousands of deliveries a second that makes the load generator,
not the server, the limit. Server frames are never masked, so reading them is a header
parse and a slice: this client parses every frame of a `data_received` chunk in one loop
and hands the payload bytes to a callback, with no task or future per message.

It speaks just enough RFC 6455 for the benchmark: the opening handshake, masked frames
out, text/binary frames in (fragmented ones reassembled), pings answered, the closing
handshake. The callback is swapped between the setup phase (replies awaited through
`expect`) and the measurement (a counter).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from urllib.parse import urlsplit

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 16 * 1024 * 1024  # the benchmark's messages are ~100 bytes; anything this big is a bug
MAX_PENDING = 1000  # setup-phase replies not yet read by `expect`: a handful in practice


class ProtocolViolation(Exception):
    """The server sent something a WebSocket server must not."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final frame, masked with a random key as RFC 6455 requires of clients."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = os.urandom(4)
    # XOR the whole payload at once as big integers: fast enough for ~100k frames a second.
    stream = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(length, "big")
    return header + key + masked


class WireClient(asyncio.Protocol):
    """One WebSocket connection; `on_message(payload)` is called for every text/binary message."""

    def __init__(self, host: str, path: str) -> None:
        self._request_head = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.transport: asyncio.Transport | None = None
        self.on_message: Callable[[bytes], None] = self._queue_for_expect
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._buffer = b""
        self._handshaken = False
        self._fragments: list[bytes] = []
        self._pending: list[bytes] = []  # setup-phase replies, read by `expect`
        self._arrived = asyncio.Event()

    # --- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request_head)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if not self._handshaken:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            status = buffer[: buffer.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                self._fail(ProtocolViolation(f"handshake refused: {status.decode(errors='replace')}"))
                return
            self._handshaken = True
            self.opened.set_result(None)
            buffer = buffer[end + 4 :]
        try:
            self._buffer = buffer[self._parse(buffer) :]
        except ProtocolViolation as error:
            self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(1006)
        self._arrived.set()

    # --- frames ----------------------------------------------------------------------------------
    def _parse(self, buffer: bytes) -> int:
        """Handle every complete frame in `buffer`; return where the incomplete rest starts."""
        position, size = 0, len(buffer)
        while size - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            if second & 0x80:
                raise ProtocolViolation("a server frame was masked")
            length, start = second & 0x7F, position + 2
            if length == 126:
                if size - position < 4:
                    break
                length, start = int.from_bytes(buffer[start : start + 2], "big"), start + 2
            elif length == 127:
                if size - position < 10:
                    break
                length, start = int.from_bytes(buffer[start : start + 8], "big"), start + 8
            if length > MAX_MESSAGE:
                raise ProtocolViolation(f"a {length}-byte frame")
            end = start + length
            if end > size:
                break
            self._frame(first, buffer[start:end])
            position = end
        return position

    def _frame(self, first: int, payload: bytes) -> None:
        opcode, final = first & 0x0F, first & 0x80
        if opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
            if not final:
                self._fragments.append(payload)
                return
            if self._fragments:
                payload = b"".join((*self._fragments, payload))
                self._fragments.clear()
            self.on_message(payload)
        elif opcode == OP_PING:
            self.send_frame(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.closed.done():
                self.send_frame(OP_CLOSE, payload[:2])
                self.closed.set_result(code)
            assert self.transport is not None
            self.transport.close()
        elif opcode != OP_PONG:
            raise ProtocolViolation(f"reserved opcode {opcode}")

    def _fail(self, error: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        if not self.closed.done():
            self.closed.set_exception(error)
        assert self.transport is not None
        self.transport.abort()

    # --- the client's side -----------------------------------------------------------------------
    def send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode())

    def _queue_for_expect(self, payload: bytes) -> None:
        if len(self._pending) >= MAX_PENDING:
            raise ProtocolViolation(f"{MAX_PENDING} unread setup replies: the server floods")
        self._pending.append(payload)
        self._arrived.set()

    async def expect(self, timeout: float = 30) -> bytes:
        """The next message, during setup (before `on_message` is replaced)."""
        async with asyncio.timeout(timeout):
            while not self._pending:
                if self.closed.done():
                    raise ConnectionError(f"closed with {self.closed.result()}")
                self._arrived.clear()
                await self._arrived.wait()
        return self._pending.pop(0)

    async def close(self, timeout: float = 5) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.send_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
        try:
            async with asyncio.timeout(timeout):
                await self.closed
        except (TimeoutError, ConnectionError, ProtocolViolation):
            self.transport.abort()


async def connect(url: str, timeout: float = 30) -> WireClient:
    """Open `ws://host:port/path` and complete the opening handshake."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None or parts.port is None:
        raise ValueError(f"expected ws://host:port/path, got {url!r}")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, client = await loop.create_connection(
            lambda: WireClient(f"{parts.hostname}:{parts.port}", path or "/"), parts.hostname, parts.port
        )
        await client.opened
    return client
