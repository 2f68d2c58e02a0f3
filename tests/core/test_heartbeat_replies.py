"""Heartbeat replies on the fast path: a consumer served by the library (`as_route`) with
BaseConsumer's own handle_message only notes a client's `{"type": "pong"}` as liveness, so
the fast-path protocol notes it where the frame arrives and never wakes the receive loop.
Everything else about a pong stays as on the ASGI path: it is liveness, it is counted, it
gets no answer; a consumer with its own handle_message still sees every frame."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from fastapi_channels import BaseConsumer, ConnectionManager, WSConfig
from fastapi_channels.messages import Message
from fastapi_channels.testing import ServerHandle, serve
from tests.support.client import Client
from tests.support.consumer_app import consumer_app
from tests.support.eventually import eventually
from tests.support.serving import FAST, SANSIO

Served = tuple[ServerHandle, ConnectionManager]
HEARTBEAT = {"WS_HEARTBEAT_INTERVAL": 0.2, "WS_HEARTBEAT_TIMEOUT": 0.6}


class PlainConsumer(BaseConsumer):
    async def connect(self) -> None:
        await self.send({"type": "hello", "channel_name": self.channel_name})

    async def on_echo(self, message: Message) -> None:
        await self.send({"type": "echo", "data": message.data})


class WatchingConsumer(PlainConsumer):
    seen: list[str] = []

    async def handle_message(self, json_str: str | None = None, binary: bytes | None = None) -> None:
        WatchingConsumer.seen.append(json_str or "")
        await super().handle_message(json_str=json_str, binary=binary)


@asynccontextmanager
async def served(consumer: type[BaseConsumer], ws: str) -> AsyncIterator[Served]:
    app, manager = consumer_app(consumer, WSConfig(LOG_STATS=False, **HEARTBEAT))
    async with serve(app, ws=ws) as server:
        yield server, manager


@pytest.fixture
def parsed_pongs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every pong frame BaseConsumer parsed: the ones that woke the receive loop."""
    pongs: list[str] = []
    original: Callable[..., Message] = BaseConsumer._parse

    def counting(self: BaseConsumer, json_str: str | None, binary: bytes | None) -> Message:
        message = original(self, json_str, binary)
        if message.type == "pong":
            pongs.append(json_str or "")
        return message

    monkeypatch.setattr(BaseConsumer, "_parse", counting)
    return pongs


async def answer_pings(client: Client, reply: str, answered: list[float]) -> None:
    while True:
        frame = await client.next(timeout=30, skip_pings=False)
        if frame.get("type") == "ping":
            answered.append(frame["timestamp"])
            await client.send_raw(reply)


@pytest.mark.parametrize("reply", ['{"type":"pong"}', '{"type": "pong"}'])
@pytest.mark.parametrize("ws", [FAST, SANSIO], ids=["fastpath", "sansio"])
async def test_a_pong_is_liveness_and_on_the_fast_path_never_reaches_the_consumer(
    ws: str, reply: str, parsed_pongs: list[str]
) -> None:
    async with served(PlainConsumer, ws) as (server, manager):
        client = await Client.open(server, "ann", compression=None)
        answered: list[float] = []
        answering = asyncio.create_task(answer_pings(client, reply, answered))
        try:
            # Six pings answered take at least 6 x 0.2 s, twice the timeout: still open.
            await eventually(lambda: len(answered) >= 6 or answering.done(), what="six pings")
            assert not answering.done(), answering
            connection = manager.get_connection(client.channel_name)
            assert connection is not None and connection.messages_received >= 5
            assert connection.uses_fast_path == (ws == FAST)
        finally:
            answering.cancel()
            await asyncio.gather(answering, return_exceptions=True)
        assert manager.get_stats()["messages_received"] >= 5
        assert manager.get_stats()["heartbeat_closes"] == 0
        # Frames after the pongs arrive in order and are answered as ever.
        await client.send(type="echo", data="after")
        assert (await client.expect("echo"))["data"] == "after"
        if ws == FAST:
            assert parsed_pongs == []
        else:
            assert len(parsed_pongs) >= 5 and set(parsed_pongs) == {reply}


async def test_a_pong_in_another_form_and_a_consumer_with_its_own_handler_see_every_frame(
    parsed_pongs: list[str],
) -> None:
    async with served(PlainConsumer, FAST) as (server, _):
        client = await Client.open(server, "ann", compression=None)
        await client.send_raw('{"type":"pong","data":1}')  # not one of the exact forms
        await client.send(type="echo", data="marker")
        assert (await client.expect("echo"))["data"] == "marker"
        assert parsed_pongs == ['{"type":"pong","data":1}']
    WatchingConsumer.seen.clear()
    async with served(WatchingConsumer, FAST) as (server, _):
        client = await Client.open(server, "bob", compression=None)
        await client.send_raw('{"type":"pong"}')
        await client.send(type="echo", data="marker")
        assert (await client.expect("echo"))["data"] == "marker"
        assert WatchingConsumer.seen[0] == '{"type":"pong"}'
        assert parsed_pongs[-1] == '{"type":"pong"}'


async def test_pongs_in_one_read_with_other_frames_keep_their_order(parsed_pongs: list[str]) -> None:
    """Frames a client sends back to back (one TCP read): the pongs are taken, every other
    frame still reaches the consumer, in order."""
    async with served(PlainConsumer, FAST) as (server, _):
        client = await Client.open(server, "ann", compression=None)
        for index in range(20):
            await client.send_raw('{"type":"pong"}')
            await client.send(type="echo", data=index)
        assert [(await client.expect("echo"))["data"] for _ in range(20)] == list(range(20))
        assert parsed_pongs == []
