"""Hand-built client frames over a raw TCP socket against a real uvicorn server of tests/app.py.

Each case sends something a well-behaved client library never would, checks the close code
the server answers with, then checks that the same server still serves a healthy client and
logged no "Exception in ASGI application".
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastapi_channels import ConnectionManager
from fastapi_channels.testing import ServerHandle, serve
from tests.abuse.conftest import WS_IDS, WS_IMPLEMENTATIONS, asgi_tracebacks
from tests.support.client import Client
from tests.support.eventually import eventually
from tests.support.raw_socket import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawSocket, frame
from tests.support.serving import Running, StartServer

MAX_SIZE = 65536


@pytest.fixture(params=WS_IMPLEMENTATIONS, ids=WS_IDS)
async def server(request: pytest.FixtureRequest, start_server: StartServer) -> AsyncIterator[Running]:
    async with start_server(
        ws=request.param, uvicorn={"ws_max_size": MAX_SIZE}, WS_MAX_MESSAGE_SIZE=MAX_SIZE
    ) as running:
        with asgi_tracebacks() as tracebacks:
            yield running
    assert not tracebacks.messages, tracebacks.messages[0]


@pytest.fixture
def raw_socket(server: Running) -> Callable[[], Awaitable[RawSocket]]:
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
        await eventually(lambda: len(manager.registry) == 1, what="the abusive connection's cleanup")
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
            await eventually(lambda: bool(tracebacks.messages), what="the traceback")
    assert "deliberate" in tracebacks.messages[0]
