"""python-socketio's AsyncServer as an ASGI app, serving the benchmark protocol.

A client emits `join` and gets the event `joined` once it is in the room `bench`; a
publisher emits `publish` with a string and every member gets the event `message` with that
string. One server uses the default in-process manager (W1); across servers
AsyncRedisManager (W3). The load generator speaks the text framing itself
(`--protocol socketio`).
"""

from __future__ import annotations

import os

import socketio

GROUP = "bench"


def _server() -> socketio.AsyncServer:
    manager = None
    if os.environ.get("BACKEND_TYPE") == "redis":
        prefix = os.environ.get("REDIS_CHANNEL_PREFIX", "")
        manager = socketio.AsyncRedisManager(os.environ["REDIS_URL"], channel=f"{prefix}socketio")
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, logger=False, engineio_logger=False)

    @sio.on("join")
    async def join(sid: str) -> None:
        await sio.enter_room(sid, GROUP)
        await sio.emit("joined", to=sid)

    @sio.on("publish")
    async def publish(sid: str, data: str) -> None:
        await sio.emit("message", data, room=GROUP)

    return sio


sio = _server()
app = socketio.ASGIApp(sio)
