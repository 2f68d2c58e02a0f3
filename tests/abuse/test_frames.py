"""Hand-built client frames over a raw TCP socket against a real uvicorn server of tests/app.py.

Each case sends something a well-behaved client library never would, checks the close code
the server answers with, then checks that the same server still serves a healthy client and
logged no "Exception in ASGI application".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.testing import ServerHandle, serve
from tests.abuse.conftest import WS_IDS, WS_IMPLEMENTATIONS, asgi_tracebacks
from tests.app import create_app
from tests.support.client import Client

MAX_SIZE = 65536
TIMEOUT = 5.0

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
    """A WebSocket client written by hand: handshake, raw frames out, parsed server frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str) -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 101"), head
        except BaseException:
            await raw.close()
            raise
        return raw

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):  # the server may close while we still write
            await self.writer.drain()

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        assert not second & 0x80, "server frames are never masked"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        payload = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)
        return first & 0x0F, payload

    async def next_json(self) -> dict:
        """The next data frame as JSON, skipping heartbeat pings."""
        while True:
            opcode, payload = await self.read_frame()
            assert opcode == OP_TEXT, (opcode, payload)
            message = json.loads(payload)
            if message.get("type") != "ping":
                return message  # type: ignore[no-any-return]

    async def close_code(self) -> int | None:
        """Read until the server's close frame and return its code (None: TCP closed without one)."""
        while True:
            try:
                opcode, payload = await self.read_frame()
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if opcode == OP_CLOSE:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture(params=WS_IMPLEMENTATIONS, ids=WS_IDS)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ServerHandle, ConnectionManager]]:
    app, manager = create_app(WSConfig(LOG_STATS=False, WS_MAX_MESSAGE_SIZE=MAX_SIZE))
    async with serve(app, ws=request.param, ws_max_size=MAX_SIZE) as handle:
        with asgi_tracebacks() as tracebacks:
            yield handle, manager
    assert not tracebacks.messages, tracebacks.messages[0]


@pytest.fixture
def raw_socket(server: tuple[ServerHandle, ConnectionManager]) -> Callable[[], Awaitable[RawSocket]]:
    opened: list[RawSocket] = []

    async def open_one() -> RawSocket:
        raw = await RawSocket.open(server[0].port, "/ws/raw")
        opened.append(raw)
        hello = await raw.next_json()
        assert hello["type"] == "hello", hello
        return raw

    return open_one


async def assert_still_serving(handle: ServerHandle, manager: ConnectionManager) -> None:
    """A healthy client connects and is answered; the abusive connection left nothing registered."""
    client = await Client.open(handle.ws_url, "healthy")
    try:
        assert (await client.call("echo", op="echo", data="ok"))["data"] == "ok"
        for _ in range(100):
            if len(manager.registry) == 1:
                break
            await asyncio.sleep(0.02)
        assert len(manager.registry) == 1
    finally:
        await client.close()


async def test_invalid_utf8_in_a_text_frame_is_closed_with_1007(server, raw_socket) -> None:
    raw = await raw_socket()
    try:
        await raw.send(frame(OP_TEXT, b'{"op": "echo", "data": "\xff\xfe"}'))
        assert await raw.close_code() == 1007
    finally:
        await raw.close()
    await assert_still_serving(*server)


async def test_a_valid_fragmented_message_is_reassembled_and_delivered(server, raw_socket) -> None:
    raw = await raw_socket()
    try:
        message = json.dumps({"op": "echo", "data": "fragmented é"}, ensure_ascii=False).encode()
        # The split falls inside the two-byte "é": each fragment alone is invalid UTF-8.
        cut = message.index("é".encode()) + 1
        await raw.send(frame(OP_TEXT, message[:5], fin=False))
        await raw.send(frame(OP_PING, b"interleaved control frame"))
        await raw.send(frame(OP_CONT, message[5:cut], fin=False))
        await raw.send(frame(OP_CONT, message[cut:], fin=True))
        opcode, payload = await raw.read_frame()
        assert (opcode, payload) == (OP_PONG, b"interleaved control frame")
        assert await raw.next_json() == {"type": "echo", "data": "fragmented é"}
        await raw.send(frame(OP_CLOSE, struct.pack("!H", 1000)))
        assert await raw.close_code() == 1000
    finally:
        await raw.close()
    await assert_still_serving(*server)


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([frame(OP_CONT, b'{"op": "echo"}')], id="continuation-without-start"),
        pytest.param(
            [frame(OP_TEXT, b'{"op": ', fin=False), frame(OP_TEXT, b'"echo"}')], id="new-message-mid-fragment"
        ),
        pytest.param([frame(OP_PING, b"p", fin=False)], id="fragmented-control-frame"),
        pytest.param([frame(0x3, b"reserved")], id="reserved-opcode"),
    ],
)
async def test_an_invalid_fragmented_sequence_is_a_protocol_error_1002(server, raw_socket, frames) -> None:
    raw = await raw_socket()
    try:
        for data in frames:
            await raw.send(data)
        assert await raw.close_code() == 1002
    finally:
        await raw.close()
    await assert_still_serving(*server)


async def test_invalid_utf8_across_fragments_is_closed_with_1007(server, raw_socket) -> None:
    raw = await raw_socket()
    try:
        await raw.send(frame(OP_TEXT, b'{"op": "echo", "data": "\xc3', fin=False))
        await raw.send(frame(OP_CONT, b'("}'))  # 0xC3 0x28: a broken two-byte sequence
        assert await raw.close_code() == 1007
    finally:
        await raw.close()
    await assert_still_serving(*server)


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragments"])
async def test_a_message_above_the_max_size_is_closed_with_1009(server, raw_socket, fragmented: bool) -> None:
    raw = await raw_socket()
    try:
        payload = json.dumps({"op": "echo", "data": "x" * MAX_SIZE}).encode()
        if fragmented:  # every fragment is small; only the reassembled message is too big
            chunks = [payload[i : i + 16384] for i in range(0, len(payload), 16384)]
            for index, chunk in enumerate(chunks):
                last = index == len(chunks) - 1
                await raw.send(frame(OP_TEXT if index == 0 else OP_CONT, chunk, fin=last))
        else:
            # Only the header and a little of the payload: the server refuses on the declared
            # length. (Sending all of it races the server's close: the kernel answers the
            # unread rest with a RST that can discard the close frame before we read it.)
            await raw.send(frame(OP_TEXT, payload)[:1024])
        assert await raw.close_code() == 1009
    finally:
        await raw.close()
    await assert_still_serving(*server)


async def test_an_unmasked_client_frame_is_a_protocol_error_1002(server, raw_socket) -> None:
    raw = await raw_socket()
    try:
        await raw.send(frame(OP_TEXT, b'{"op": "echo", "data": 1}', masked=False))
        assert await raw.close_code() == 1002
    finally:
        await raw.close()
    await assert_still_serving(*server)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(OP_BINARY, b'{"op": "echo", "data": 1}'), id="binary-json"),
        pytest.param(frame(OP_BINARY, b"\x00\xff" * 100), id="binary-garbage"),
        pytest.param(frame(OP_TEXT, b"not json"), id="text-not-json"),
    ],
)
async def test_a_frame_the_app_cannot_read_as_json_closes_only_that_connection(
    server, raw_socket, data: bytes
) -> None:
    handle, manager = server
    bystander = await Client.open(handle.ws_url, "bystander")
    raw = await raw_socket()
    try:
        await raw.send(data)
        # The app's receive_json fails; its catch-all disconnects with 1011 (internal error).
        assert await raw.close_code() == 1011
    finally:
        await raw.close()
    assert (await bystander.call("echo", op="echo", data="still"))["data"] == "still"
    await bystander.close()
    await assert_still_serving(handle, manager)


async def test_the_traceback_check_does_see_an_unhandled_exception() -> None:
    """The check the tests above rely on is not vacuous."""
    app = FastAPI()

    @app.websocket("/ws")
    async def broken(websocket: WebSocket) -> None:
        raise RuntimeError("deliberate")

    async with serve(app) as handle:
        with asgi_tracebacks() as tracebacks:
            try:
                async with connect(f"{handle.ws_url}/ws"):
                    pass
            except InvalidStatus:
                pass
            for _ in range(100):
                if tracebacks.messages:
                    break
                await asyncio.sleep(0.02)
    assert tracebacks.messages and "deliberate" in tracebacks.messages[0]
