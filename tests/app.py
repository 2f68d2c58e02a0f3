"""A small app speaking a command protocol that exercises every manager method from a socket."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import sys
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.exceptions import BaseError


def create_app(config: WSConfig, **manager_options: Any) -> tuple[FastAPI, ConnectionManager]:
    manager = ConnectionManager(ws_config=config, **manager_options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await manager.start_tasks()
        yield
        await manager.stop_tasks(timeout=5)

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{user_id}")
    async def endpoint(websocket: WebSocket, user_id: str, cid: str | None = None) -> None:
        """`?cid=<id>` connects with that connection id (the channel name ends with it)."""
        connection = await manager.connect(websocket, user_id=user_id, connection_id=cid)
        name = connection.channel_name
        await manager.send_personal(name, {"type": "hello", "channel_name": name})
        try:
            while True:
                command = await websocket.receive_json()
                try:
                    await run(command, name)
                except BaseError as exc:
                    await manager.send_personal(name, exc.to_response().to_dict())
        except WebSocketDisconnect:
            await manager.disconnect(name)
        except Exception:
            await manager.disconnect(name, 1011)

    async def acknowledge(command: dict[str, Any], name: str, **extra: Any) -> None:
        """With `"ack": <value>` in a send command: `{"type": "sent", "ack": <value>}` once the
        send has returned normally (an error is answered with an error frame instead)."""
        if "ack" in command:
            await manager.send_personal(name, {"type": "sent", "ack": command["ack"], **extra})

    async def run(command: dict[str, Any], name: str) -> None:
        op = command.get("op")
        data = command.get("data")
        if op == "join":
            joined = await manager.join_group(
                command.get("channel", name), command["group"], command.get("since")
            )
            await manager.send_personal(
                name, {"type": "joined", "group": command["group"], "result": dataclasses.asdict(joined)}
            )
        elif op == "history":
            page = await manager.history(command["group"], command.get("since"), command.get("limit", 100))
            await manager.send_personal(name, {"type": "history", **dataclasses.asdict(page)})
        elif op == "leave":
            await manager.leave_group(command.get("channel", name), command["group"])
            await manager.send_personal(name, {"type": "left", "group": command["group"]})
        elif op == "group":
            await manager.send_to_group(
                command["group"], {"type": "group", "data": data}, history=command.get("history", True)
            )
            await acknowledge(command, name)
        elif op == "group_except":
            await manager.send_group_except(command["group"], {"type": "group", "data": data}, name)
        elif op == "user":
            count = await manager.send_to_user(command["user"], {"type": "user", "data": data})
            if "ack" in command:
                await acknowledge(command, name, count=count)
            else:
                await manager.send_personal(name, {"type": "user_sent", "count": count})
        elif op == "personal":
            await manager.send_personal(command["to"], {"type": "personal", "data": data})
        elif op == "broadcast":
            await manager.broadcast({"type": "broadcast", "data": data})
            await acknowledge(command, name)
        elif op in ("group_then_personal", "user_then_personal", "broadcast_then_personal"):
            # One sender, two sends in a row: the second must not overtake the first.
            kind = op.removesuffix("_then_personal")
            if kind == "group":
                await manager.send_to_group(command["group"], {"type": "group", "data": data})
            elif kind == "user":
                await manager.send_to_user(command["user"], {"type": "user", "data": data})
            else:
                await manager.broadcast({"type": "broadcast", "data": data})
            await manager.send_personal(name, {"type": "personal", "data": data})
        elif op == "disconnect":
            await manager.disconnect(command["channel"], command.get("code", 1000))
        elif op == "echo":
            await manager.send_personal(name, {"type": "echo", "data": data})
        elif op == "group_raw":
            # The message exactly as the client gave it (an object, a string, ...): for the
            # checks a history group makes on what it stores.
            await manager.send_to_group(
                command["group"], command["message"], history=command.get("history", True)
            )
            await acknowledge(command, name)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return manager.get_stats()

    history_lost: list[str] = []  # groups `on_history_lost` named, in order
    manager.on_history_lost(history_lost.append)

    @app.get("/history_lost")
    async def lost_histories() -> list[str]:
        return history_lost

    @app.get("/debug")
    async def debug() -> dict[str, Any]:
        """What a leak would make grow: tasks, every index kept per connection, Python's heap.

        Reads private attributes on purpose: the leak tests need them and this app is test-only.
        """
        gc.collect()  # count what is alive, not what is waiting for the cycle collector
        containers = {
            f"backend.{name}": len(value)
            for name, value in vars(manager.backend).items()
            if isinstance(value, dict | set | list)
        }
        return {
            "tasks": len(asyncio.all_tasks()),
            "registry.connections": len(manager.registry),
            "registry.users": manager.registry.user_count(),
            "registry.groups": manager.registry.group_count(),
            "manager._subscribed": len(manager._subscribed),
            "manager._fast_channels": len(manager._fast_channels),
            "manager._hook_tasks": len(manager._hook_tasks),
            **containers,
            "allocated_blocks": sys.getallocatedblocks(),
        }

    @app.get("/cluster")
    async def cluster(group: str = "g", user: str = "u") -> dict[str, Any]:
        return {
            "connections": await manager.count_connections(),
            "groups": await manager.count_groups(),
            "group_size": await manager.group_size(group),
            "group_members": sorted(await manager.group_members(group)),
            "user_connections": await manager.count_user_connections(user),
        }

    @app.post("/send/{group}")
    async def send(group: str, text: str) -> dict[str, Any]:
        await manager.send_to_group(group, {"type": "group", "data": text})
        return {"ok": True}

    return app, manager


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory tests.app:app_from_env`: configuration from the environment.

    `TEST_FORBIDDEN_GROUPS=a,b` installs an `authorize_join` that refuses those groups.
    """
    forbidden = {group for group in os.environ.get("TEST_FORBIDDEN_GROUPS", "").split(",") if group}
    options: dict[str, Any] = {}
    if forbidden:
        options["authorize_join"] = lambda _connection, group: group not in forbidden
    return create_app(WSConfig(), **options)[0]
