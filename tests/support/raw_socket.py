"""A WebSocket client written by hand over a TCP socket, for what a client library never does.

It sends any frame, valid or not (`frame()` lays one out as RFC 6455 says, masked unless
told otherwise), parses the server's frames, and reads only when asked to: a test that stops
asking has a client that never reads (with `receive_buffer=4096` the kernel soon stops
accepting the server's bytes too). For well-behaved clients, use `tests.support.client.Client`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from typing import Any

__all__ = ["OP_BINARY", "OP_CLOSE", "OP_CONT", "OP_PING", "OP_PONG", "OP_TEXT", "RawSocket", "frame"]

WAIT = 5.0

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """One client frame as RFC 6455 lays it out (masked unless told otherwise)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""  # bytes read from the socket and not parsed yet

    @classmethod
    async def open(cls, port: int, path: str, *, receive_buffer: int | None = None) -> RawSocket:
        """Connect to 127.0.0.1:`port` and complete the handshake for `path` (101 expected)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connecting, so the TCP window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        raw = cls(sock)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), WAIT)
            key = base64.b64encode(os.urandom(16)).decode()
            await raw.send(
                (
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            while b"\r\n\r\n" not in raw.buffer:
                await raw._fill()
            head, raw.buffer = raw.buffer.split(b"\r\n\r\n", 1)  # frames may follow at once
            assert head.startswith(b"HTTP/1.1 101"), head
        except BaseException:
            await raw.close()
            raise
        return raw

    async def send(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):  # the server may close while we still write
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_frame(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        """One final, masked frame with any payload, valid or not."""
        await self.send(frame(opcode, payload))

    async def _fill(self) -> None:
        chunk = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), WAIT)
        if not chunk:
            raise asyncio.IncompleteReadError(self.buffer, None)
        self.buffer += chunk

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def read_frame(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload)."""
        first, second = await self._read_exactly(2)
        assert not second & 0x80, "server frames are never masked"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._read_exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._read_exactly(8))
        return first & 0x0F, await self._read_exactly(length)

    async def next_json(self) -> Any:
        """The next data frame as JSON, skipping the server's heartbeat pings."""
        while True:
            opcode, payload = await self.read_frame()
            assert opcode == OP_TEXT, (opcode, payload)
            message = json.loads(payload)
            if not (isinstance(message, dict) and message.get("type") == "ping"):
                return message

    async def close_code(self) -> int | None:
        """Read until the server's close frame and return its code (1005 when it has none;
        None when the TCP connection ended without a close frame)."""
        while True:
            try:
                opcode, payload = await self.read_frame()
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if opcode == OP_CLOSE:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005

    async def read_until_eof(self) -> None:
        """Read and drop everything until the server ends the TCP connection (or resets it)."""
        loop = asyncio.get_running_loop()
        self.buffer = b""
        with contextlib.suppress(ConnectionResetError):
            while await loop.sock_recv(self.sock, 1 << 20):
                pass

    async def close(self) -> None:
        self.sock.close()
