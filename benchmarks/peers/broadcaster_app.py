"""encode/broadcaster on Starlette, serving the benchmark protocol at /ws.

The memory backend on one server (W1), the redis backend across servers (W3). As in
broadcaster's own chat example, each member subscribes to the channel and a task per
member forwards what arrives; `joined` is sent once the subscription is in place.

broadcaster 0.3.1's RedisBackend wakes its listener before redis-py counts the channel as
subscribed (`_ready.set()` before `await pubsub.subscribe()`); when the SUBSCRIBE yields,
the listener finds no subscription, stops and waits forever, and that server delivers
nothing (seen here with redis-py 8: most runs lost every message). `_RedisBackend` only
swaps the two lines, so the listener starts after the subscription is recorded. The listener
also stops when the last subscriber leaves, and a subscriber arriving meanwhile can be lost
the same way, so the app holds one subscription of its own for its lifetime (its queue is
drained and discarded: one extra queue put per message per server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from benchmarks.protocol import GROUP, parse


def _redis_backend(url: str) -> object:
    from broadcaster._backends.redis import RedisBackend

    class _RedisBackend(RedisBackend):
        async def subscribe(self, channel: str) -> None:
            await self._pubsub.subscribe(channel)
            self._ready.set()

    return _RedisBackend(url)


if os.environ.get("BACKEND_TYPE") == "redis":
    broadcast = Broadcast(backend=_redis_backend(os.environ["REDIS_URL"]))  # type: ignore[arg-type]
    PREFIX = os.environ.get("REDIS_CHANNEL_PREFIX", "")
else:
    broadcast = Broadcast("memory://")
    PREFIX = ""
CHANNEL = f"{PREFIX}{GROUP}"


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    await broadcast.connect()
    ready = asyncio.Event()
    holder = asyncio.get_running_loop().create_task(_hold(ready))
    await ready.wait()
    yield
    holder.cancel()
    with contextlib.suppress(BaseException):
        await holder
    await broadcast.disconnect()


async def _hold(ready: asyncio.Event) -> None:
    async with broadcast.subscribe(CHANNEL) as subscriber:
        ready.set()
        async for _ in subscriber:  # type: ignore[union-attr]
            pass


async def _forward(websocket: WebSocket, channel: str, ready: asyncio.Event) -> None:
    async with broadcast.subscribe(channel) as subscriber:
        ready.set()
        async for event in subscriber:  # type: ignore[union-attr]
            if event is None:
                return
            await websocket.send_text(event.message)


async def _endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    forwarders: dict[str, asyncio.Task[None]] = {}
    try:
        while True:
            action, group, payload = parse(await websocket.receive_text())
            if action == "join" and group not in forwarders:
                ready = asyncio.Event()
                forwarders[group] = asyncio.get_running_loop().create_task(
                    _forward(websocket, f"{PREFIX}{group}", ready)
                )
                await ready.wait()
                await websocket.send_text("joined")
            elif action == "publish":
                await broadcast.publish(f"{PREFIX}{group}", payload)
    except WebSocketDisconnect:
        pass
    finally:
        for forwarder in forwarders.values():
            forwarder.cancel()
            with contextlib.suppress(BaseException):
                await forwarder


app = Starlette(routes=[WebSocketRoute("/ws", _endpoint)], lifespan=_lifespan)
