"""What an idle fast-path connection holds: no writer task, no handshake copies, light queues.

The benchmark (`python -m benchmarks.heap`, docs/benchmarks.md) measures the bytes; these
tests pin the behaviours that keep them low, and that the slim replacements for uvicorn's
asyncio.Queue and asyncio.Event behave as the originals do where uvicorn uses them.
"""

from __future__ import annotations

import asyncio

import pytest

from fastapi_channels.fastpath import FastWebSocketProtocol, InboundQueue, WritableFlag
from tests.support.client import Client
from tests.support.serving import FAST, StartServer


async def test_an_idle_fast_path_connection_costs_one_task_and_keeps_no_handshake(
    start_server: StartServer,
) -> None:
    async with start_server(ws=FAST) as (server, manager):
        first = await Client.open(server, "warm", compression=None)
        await first.call("joined", op="join", group="room")
        clients = [
            await Client.open(server, f"u{i}", compression=None, additional_headers={"X-Tag": f"t{i}"})
            for i in range(10)
        ]
        for client in clients:
            await client.call("joined", op="join", group="room")
        # uvicorn's ASGI task per connection, and no writer task of ours: the coalescer writes.
        names = [task.get_name() for task in asyncio.all_tasks()]
        assert [name for name in names if name.startswith("fastapi-channels-writer:")] == []
        assert sum(task.get_coro().__qualname__.endswith("run_asgi") for task in asyncio.all_tasks()) == 11

        for index, client in enumerate(clients):
            connection = manager.get_connection(client.channel_name)
            assert connection is not None and connection.uses_fast_path
            protocol = connection.websocket.scope["extensions"]["fastapi_channels.frames"]._protocol
            assert isinstance(protocol, FastWebSocketProtocol)
            assert protocol.request is None and protocol.response is None
            assert connection.websocket.headers["x-tag"] == f"t{index}"  # the app still sees them

        await manager.send_to_group("room", {"type": "group", "data": 1})
        for client in [first, *clients]:
            assert (await client.next())["data"] == 1


async def test_the_inbound_queue_hands_events_out_in_order_to_a_waiting_reader() -> None:
    queue = InboundQueue()
    assert queue.empty() and queue.qsize() == 0
    reader = asyncio.get_running_loop().create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait({"type": "websocket.connect"})
    queue.put_nowait({"type": "websocket.receive", "text": "a"})
    assert await reader == {"type": "websocket.connect"}
    assert queue.qsize() == 1
    assert await queue.get() == {"type": "websocket.receive", "text": "a"}
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_cancelled_reader_passes_its_event_on_to_the_next() -> None:
    queue = InboundQueue()
    first = asyncio.get_running_loop().create_task(queue.get())
    second = asyncio.get_running_loop().create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("event")  # wakes the first reader ...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == "event"


async def test_the_writable_flag_releases_every_waiter_when_set() -> None:
    flag = WritableFlag()
    assert flag.is_set()
    await flag.wait()  # set: returns at once
    flag.clear()
    waiters = [asyncio.get_running_loop().create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in waiters)
    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)

    flag.clear()
    cancelled = asyncio.get_running_loop().create_task(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    flag.set()  # a cancelled waiter is simply gone
    assert flag.is_set()
