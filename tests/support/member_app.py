"""The smallest app a LocalCluster test needs: a member that says hello and reads until it goes.

`/ws/{user_id}` connects (joining `join` first, when given) and sends
`{"type": "hello", "channel_name": ...}`, so a test knows the connection's name and that it is
registered (and a member); it then reads until the client closes, and disconnects.
"""

from __future__ import annotations

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from fastapi_channels import ConnectionManager

__all__ = ["member_app"]


def member_app(manager: ConnectionManager, *, join: str | None = None) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws/{user_id}")
    async def endpoint(websocket: WebSocket, user_id: str) -> None:
        connection = await manager.connect(websocket, user_id=user_id)
        name = connection.channel_name
        if join is not None:
            await manager.join_group(name, join)
        await manager.send_personal(name, {"type": "hello", "channel_name": name})
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            await manager.disconnect(name)

    return app
