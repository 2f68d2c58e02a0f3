"""Malformed input from one client ends that client's connection at most: the server, and
every other client, carry on as if nothing happened."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.support.client import Client
from tests.support.eventually import eventually
from tests.support.raw_socket import RawSocket
from tests.support.serving import LogCapture, StartServer, has_local_connections

MAX_SIZE = 1024 * 1024  # uvicorn's --ws-max-size for these tests (its default is 16 MiB)
UVICORN_DEFAULT_MAX_SIZE = 16 * 1024 * 1024

Send = Callable[[Client], Awaitable[None]]


async def invalid_json(client: Client) -> None:
    await client.send_raw("{this is not json")


async def json_that_is_not_an_object(client: Client) -> None:
    await client.send_raw("[1, 2, 3]")


async def binary_json_where_text_is_expected(client: Client) -> None:
    await client.send_raw(b'{"op": "echo", "data": 1}')


async def binary_garbage_where_text_is_expected(client: Client) -> None:
    await client.send_raw(b"\xff\xfe binary")


async def command_missing_a_field(client: Client) -> None:
    await client.send_raw('{"op": "join"}')


@pytest.mark.parametrize(
    "bad_input",
    [
        invalid_json,
        json_that_is_not_an_object,
        binary_json_where_text_is_expected,
        binary_garbage_where_text_is_expected,
        command_missing_a_field,
    ],
    ids=lambda f: f.__name__,
)
async def test_a_bad_frame_ends_only_its_own_connection(
    start_server: StartServer, ws: str, bad_input: Send, server_log: LogCapture
) -> None:
    async with start_server(ws=ws) as (server, manager):
        healthy, bystander = await Client.open(server, "healthy"), await Client.open(server, "bystander")
        for client in (healthy, bystander):
            await client.call("joined", op="join", group="room")
        victim = await Client.open(server, "victim")
        await victim.call("joined", op="join", group="room")

        await bad_input(victim)

        code, _ = await victim.wait_closed()
        assert code == 1011  # the test app closes a connection whose command it cannot run
        await eventually(lambda: manager.get_connection(victim.channel_name) is None, what="cleanup")
        await bystander.send(op="group", group="room", data="after the bad input")
        for client in (healthy, bystander):
            assert await client.next() == {"type": "group", "data": "after the bad input"}
        assert await healthy.echo_marker("ok") == {"type": "echo", "data": "ok"}
        newcomer = await Client.open(server, "newcomer")
        assert await newcomer.echo_marker("hi") == {"type": "echo", "data": "hi"}
        assert len(manager.registry) == 3
        assert server_log.tracebacks() == []


async def test_a_frame_above_the_servers_max_size_is_refused_with_1009(
    start_server: StartServer, ws: str
) -> None:
    # Compressed, as these frames were written for: the client's send of a 16 MiB frame then
    # completes before the server refuses it (uncompressed, the refusal cuts the send).
    async with start_server(ws=ws, uvicorn={"ws_max_size": MAX_SIZE, "ws_per_message_deflate": True}) as (
        server,
        manager,
    ):
        healthy = await Client.open(server, "healthy")
        await healthy.call("joined", op="join", group="room")
        victim = await Client.open(server, "victim")
        await victim.call("joined", op="join", group="room")

        await victim.send_raw("x" * (MAX_SIZE + 1))

        code, _ = await victim.wait_closed()
        assert code == 1009
        await eventually(lambda: manager.get_connection(victim.channel_name) is None, what="cleanup")
        # A frame of exactly the maximum size is still fine for the others.
        await healthy.send(op="echo", data="y" * (MAX_SIZE - 100))
        assert await healthy.next() == {"type": "echo", "data": "y" * (MAX_SIZE - 100)}
        await manager.send_to_group("room", {"type": "group", "data": "after"})
        assert await healthy.next() == {"type": "group", "data": "after"}
        assert len(manager.registry) == 1


async def test_without_a_configured_max_size_uvicorns_default_refuses_with_1009(
    start_server: StartServer, ws: str
) -> None:
    # Compressed, as above.
    async with start_server(ws=ws, uvicorn={"ws_per_message_deflate": True}) as (server, manager):
        healthy = await Client.open(server, "healthy")
        big = await Client.open(server, "big", max_size=None)

        await big.send_raw("x" * (UVICORN_DEFAULT_MAX_SIZE + 1024 * 1024))

        assert (await big.wait_closed(timeout=10))[0] == 1009
        assert await healthy.echo_marker("still here") == {"type": "echo", "data": "still here"}
        await eventually(lambda: len(manager.registry) == 1, what="cleanup")


async def test_a_message_over_ws_max_message_size_never_reaches_the_app_whatever_the_servers_limit(
    start_server: StartServer, ws: str
) -> None:
    """WS_MAX_MESSAGE_SIZE is the largest message accepted even where the server's own limit
    is higher (here uvicorn's default, 16 MiB): the app never reads a larger one, the client
    gets MESSAGE_TOO_LARGE (as from ValidationMiddleware) and its connection goes on. Size is
    counted on the wire: UTF-8 bytes for text."""
    limit = 1000
    async with start_server(ws=ws, WS_MAX_MESSAGE_SIZE=limit) as (server, manager):
        client = await Client.open(server, "client")
        envelope = '{"op": "echo", "data": ""}'
        exactly = envelope.replace('""', '"' + "y" * (limit - len(envelope)) + '"')
        assert len(exactly.encode()) == limit
        await client.send_raw(exactly)
        assert (await client.next())["type"] == "echo"  # at the limit: accepted

        too_long: list[str | bytes] = [
            envelope.replace('""', '"' + "x" * (limit - len(envelope) + 1) + '"'),  # one byte over
            envelope.replace('""', '"' + "é" * (limit // 2) + '"'),  # fewer characters, more bytes
            b"\x00" * (limit + 1),  # binary
        ]
        for frame in too_long:
            await client.send_raw(frame)
            error = await client.next()
            size = len(frame.encode() if isinstance(frame, str) else frame)
            assert (error["type"], error["error_code"], error["details"]) == (
                "error",
                "MESSAGE_TOO_LARGE",
                {"size": size, "max_message_size": limit},
            )
            # Nothing else came of it: the next reply is the marker's.
            assert await client.echo_marker("after") == {"type": "echo", "data": "after"}
        assert len(manager.registry) == 1
        assert manager.get_stats()["messages_received"] >= 5


async def test_invalid_utf8_in_a_text_frame_is_refused_with_1007(start_server: StartServer, ws: str) -> None:
    async with start_server(ws=ws) as (server, manager):
        healthy = await Client.open(server, "healthy")
        raw = await RawSocket.open(server.port, "/ws/raw")  # a hand-made client sends what others cannot
        try:
            await eventually(lambda: has_local_connections(manager, "raw", 1), what="the raw client")
            await raw.send_frame(b'{"op": "echo", "data": "\xff\xfe"}')

            assert await raw.close_code() == 1007
            await raw.close()  # as a real client does once the closing handshake is over
            await eventually(lambda: has_local_connections(manager, "raw", 0), what="cleanup")
            assert await healthy.echo_marker("ok") == {"type": "echo", "data": "ok"}
            assert len(manager.registry) == 1
        finally:
            await raw.close()
