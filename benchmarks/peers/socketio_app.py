"""python-socketio's AsyncServer as an ASGI app, serving the benchmark protocol.

A client emits `join` (optionally with a room name) and gets the event `joined` once it
is in the room (`bench` by default); a publisher emits `publish` with a string (and
optionally a room) and every member gets the event `message` with that string. One
server uses the default in-process manager; across servers AsyncRedisManager. The load
generator speaks the text framing itself (`--protocol socketio`).
"""

from __future__ import annotations

import os

import socketio

from benchmarks.protocol import GROUP


def _server() -> socketio.AsyncServer:
    manager = None
    if os.environ.get("BACKEND_TYPE") == "redis":
        prefix = os.environ.get("REDIS_CHANNEL_PREFIX", "")
        manager = socketio.AsyncRedisManager(os.environ["REDIS_URL"], channel=f"{prefix}socketio")
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, logger=False, engineio_logger=False)

    @sio.on("join")
    async def join(sid: str, room: str = GROUP) -> None:
        await sio.enter_room(sid, room)
        await sio.emit("joined", to=sid)

    @sio.on("publish")
    async def publish(sid: str, data: str, room: str = GROUP) -> None:
        await sio.emit("message", data, room=room)

    return sio


sio = _server()
app = socketio.ASGIApp(sio)
