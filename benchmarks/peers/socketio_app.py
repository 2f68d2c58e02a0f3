"""python-socketio's AsyncServer as an ASGI app, serving the benchmark protocol.

A client emits `join` (optionally with a room name) and gets the event `joined` once it
is in the room (`bench` by default); a publisher emits `publish` with a string (and
optionally a room) and every member gets the event `message` with that string;
`broadcast` with a string sends it to every client. One server uses the default
in-process manager; across servers AsyncRedisManager. The load generator speaks the text
framing itself (`--protocol socketio`).

Engine.IO's ping_interval / ping_timeout come from SIO_PING_INTERVAL / SIO_PING_TIMEOUT
when set (the capacity workload's cleanup phase), else python-engineio's defaults. GET
/stats reports the connected clients, the rooms the clients joined and their memberships.
"""

from __future__ import annotations

import os
from typing import Any

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks.protocol import GROUP


def _server() -> socketio.AsyncServer:
    manager = None
    if os.environ.get("BACKEND_TYPE") == "redis":
        prefix = os.environ.get("REDIS_CHANNEL_PREFIX", "")
        manager = socketio.AsyncRedisManager(os.environ["REDIS_URL"], channel=f"{prefix}socketio")
    timing: dict[str, Any] = {}
    if "SIO_PING_INTERVAL" in os.environ:
        timing["ping_interval"] = float(os.environ["SIO_PING_INTERVAL"])
    if "SIO_PING_TIMEOUT" in os.environ:
        timing["ping_timeout"] = float(os.environ["SIO_PING_TIMEOUT"])
    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=manager, logger=False, engineio_logger=False, **timing
    )

    @sio.on("join")
    async def join(sid: str, room: str = GROUP) -> None:
        await sio.enter_room(sid, room)
        await sio.emit("joined", to=sid)

    @sio.on("publish")
    async def publish(sid: str, data: str, room: str = GROUP) -> None:
        await sio.emit("message", data, room=room)

    @sio.on("broadcast")
    async def broadcast(sid: str, data: str) -> None:
        await sio.emit("message", data)

    return sio


async def _stats(request: Request) -> JSONResponse:
    """Every client sits in the room None and in a room named by its sid: neither is a group."""
    rooms = sio.manager.rooms.get("/", {})
    groups = [members for name, members in rooms.items() if name is not None and name not in members]
    return JSONResponse(
        {
            "connections": len(rooms.get(None, ())),
            "groups": len(groups),
            "memberships": sum(len(members) for members in groups),
        }
    )


sio = _server()
app = socketio.ASGIApp(sio, other_asgi_app=Starlette(routes=[Route("/stats", _stats)]))
