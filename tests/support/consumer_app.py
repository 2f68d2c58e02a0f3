"""A FastAPI app serving one consumer class with `as_route`, its manager started by the
app's lifespan: what a test of the library-owned connection loop needs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fastapi_channels import BaseConsumer, ConnectionManager, WSConfig


def consumer_app(consumer: type[BaseConsumer], config: WSConfig) -> tuple[FastAPI, ConnectionManager]:
    """`consumer` at `/ws/{user}` (the path's user is the connection's user id)."""
    manager = ConnectionManager(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await manager.start_tasks()
        yield
        await manager.stop_tasks(timeout=5)

    app = FastAPI(lifespan=lifespan)
    app.add_api_websocket_route("/ws/{user}", consumer.as_route(manager, user_id="user"))
    return app, manager
