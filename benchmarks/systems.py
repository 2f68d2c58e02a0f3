"""The systems under test, each an ASGI app serving the same tiny protocol at /ws.

A client sends the text `join` and gets `joined` once it is a member of the group `bench`
(`join <room>`: of that room instead); a publisher sends `P<payload>` and every member of
`bench` must receive `<payload>` verbatim (`R<room> <payload>`: every member of the room).

    bare          Starlette: a list of sockets and `await ws.send_text()` for each (the limit
                  of the ASGI stack on one server)
    bare_redis    the same plus redis-py pub/sub: one subscription per process, a local loop
    channels      fastapi-channels (backend from BACKEND_TYPE / REDIS_URL)
    channels_json     the same, each message sent as a JSON object {"p": payload}
    channels_history  the same objects to a history group (stored and numbered)
    channels_capacity fastapi-channels with the library's heartbeat on (interval and timeout
                      from WS_HEARTBEAT_*): the capacity workload's idle CPU and cleanup

`B<payload>` goes to every connection of the server, and GET /stats reports the server's
connections, groups and group memberships (bare, channels*): the capacity workload checks
that joins registered and that vanished clients were unregistered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from benchmarks.protocol import GROUP, parse

# --- bare: the ASGI send loop --------------------------------------------------------------------
_groups: dict[str, list[WebSocket]] = {}
_everyone: dict[int, WebSocket] = {}  # every open socket by id() (a WebSocket is not hashable)


async def _bare_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    _everyone[id(websocket)] = websocket
    joined: list[str] = []
    try:
        while True:
            action, group, payload = parse(await websocket.receive_text())
            if action == "join":
                _groups.setdefault(group, []).append(websocket)
                joined.append(group)
                await websocket.send_text("joined")
            elif action == "publish":
                for member in list(_groups.get(group, ())):
                    with contextlib.suppress(Exception):
                        await member.send_text(payload)
            elif action == "broadcast":
                for member in list(_everyone.values()):
                    with contextlib.suppress(Exception):
                        await member.send_text(payload)
    except WebSocketDisconnect:
        pass
    finally:
        del _everyone[id(websocket)]
        for group in joined:
            members = _groups[group]
            members.remove(websocket)
            if not members:
                del _groups[group]


async def _bare_stats(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "connections": len(_everyone),
            "groups": len(_groups),
            "memberships": sum(len(members) for members in _groups.values()),
        }
    )


bare = Starlette(routes=[WebSocketRoute("/ws", _bare_endpoint), Route("/stats", _bare_stats)])


# --- bare_redis: the same across servers through redis-py pub/sub ----------------------------------
_redis_members: list[WebSocket] = []
_redis_state: dict[str, object] = {}


async def _fan_out_from_redis() -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(os.environ["REDIS_URL"])
    pubsub = client.pubsub()
    await pubsub.subscribe(f"bare:{GROUP}")
    _redis_state["client"] = client
    async for message in pubsub.listen():
        if message["type"] != "message":
            continue
        payload = message["data"].decode()
        for member in list(_redis_members):
            with contextlib.suppress(Exception):
                await member.send_text(payload)


@asynccontextmanager
async def _bare_redis_lifespan(app: Starlette) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(_fan_out_from_redis())
    while "client" not in _redis_state:
        await asyncio.sleep(0.01)
    yield
    task.cancel()


async def _bare_redis_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    client = _redis_state["client"]
    try:
        while True:
            action, group, payload = parse(await websocket.receive_text())
            if group != GROUP:  # one subscription per process, as the cross-server baseline
                await websocket.close(1003, "bare_redis serves the group bench only")
                return
            if action == "join":
                _redis_members.append(websocket)
                await websocket.send_text("joined")
            elif action == "publish":
                await client.publish(f"bare:{GROUP}", payload)  # type: ignore[attr-defined]
    except WebSocketDisconnect:
        pass
    finally:
        if websocket in _redis_members:
            _redis_members.remove(websocket)


bare_redis = Starlette(routes=[WebSocketRoute("/ws", _bare_redis_endpoint)], lifespan=_bare_redis_lifespan)


# --- channels: fastapi-channels ----------------------------------------------------------------------
def _channels_app(*, as_json: bool = False, history: bool = False, heartbeat: bool = False) -> Starlette:
    """`as_json`: each payload is sent as the object {"p": payload}; `history`: the groups are
    history groups (stored, numbered), which takes objects; `heartbeat`: the library's
    heartbeat as configured by the environment (on by default), else off."""
    from fastapi_channels import ConnectionManager, WSConfig

    heartbeat_off: dict[str, Any] = {} if heartbeat else {"WS_ENABLE_HEARTBEAT": False}
    manager = ConnectionManager(
        WSConfig(LOG_STATS=False, WS_HISTORY_GROUPS="*" if history else "", **heartbeat_off)
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await manager.start_tasks()
        yield
        await manager.stop_tasks()

    async def endpoint(websocket: WebSocket) -> None:
        connection = await manager.connect(websocket)
        if heartbeat:  # this loop has nothing to do with a pong: the fast path may take them
            connection.take_heartbeat_replies()
        name = connection.channel_name
        try:
            while True:
                action, group, payload = parse(await websocket.receive_text())
                if action == "join":
                    await manager.join_group(name, group)
                    await manager.send_personal(name, "joined")
                elif action == "publish":
                    await manager.send_to_group(group, {"p": payload} if as_json else payload)
                elif action == "broadcast":
                    await manager.broadcast({"p": payload} if as_json else payload)
        except WebSocketDisconnect:
            await manager.disconnect(name)

    async def stats(request: Request) -> JSONResponse:
        """The manager's own figures, plus the group memberships its group index holds."""
        registry = manager.registry
        memberships = sum(len(registry.group_members(group)) for group in registry.groups())
        return JSONResponse({**manager.get_stats(), "memberships": memberships})

    return Starlette(routes=[WebSocketRoute("/ws", endpoint), Route("/stats", stats)], lifespan=lifespan)


channels = _channels_app()
channels_json = _channels_app(as_json=True)
channels_history = _channels_app(as_json=True, history=True)
channels_capacity = _channels_app(heartbeat=True)
