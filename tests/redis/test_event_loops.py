"""One manager, successive event loops (two TestClient sessions, two asyncio.run calls), and
background loops that die: logged and restarted, never silent."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fastapi_channels import ConnectionManager, WSConfig
from fastapi_channels.testing import serve
from tests.app import create_app
from tests.support.client import Client, close_all_clients
from tests.support.eventually import eventually
from tests.support.redis_server import RedisProcess


def _config(backend: str, redis_server: RedisProcess, prefix: str) -> WSConfig:
    if backend == "memory":
        return WSConfig(LOG_STATS=False)
    return WSConfig(
        BACKEND_TYPE="redis", REDIS_URL=redis_server.url, REDIS_CHANNEL_PREFIX=prefix, LOG_STATS=False
    )


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_one_manager_serves_two_event_loops_in_turn(
    backend: str, redis_server: RedisProcess, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, manager = create_app(_config(backend, redis_server, redis_prefix))

    async def session(round_: int) -> list[object]:
        async with serve(app) as server:
            clients = await asyncio.gather(*(Client.open(server.ws_url, f"u{i}") for i in range(5)))
            for client in clients:
                await client.call("joined", op="join", group="room")
            await clients[0].send(op="group", group="room", data=round_)
            got = [(await client.next())["data"] for client in clients]
            # A remote-style command goes through the control worker of this loop.
            await clients[1].send(op="echo", data="alive")
            assert (await clients[1].next())["data"] == "alive"
            # Every background loop of this manager runs on this loop (none died on the old one).
            await asyncio.sleep(0.05)
            assert manager._tasks and all(not task.done() for task in manager._tasks)
            await close_all_clients()
            return got

    assert asyncio.run(session(1)) == [1] * 5
    assert asyncio.run(session(2)) == [2] * 5
    assert "bound to a different event loop" not in caplog.text
    assert not manager.get_stats()["started"]


async def test_a_background_loop_that_dies_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    manager = ConnectionManager(WSConfig(LOG_STATS=True, WS_STATS_INTERVAL=0.01))
    runs = 0
    original = manager._stats_loop

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("stats loop broke")
        await original()

    manager._stats_loop = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="fastapi_channels.manager"):
        await manager.start_tasks()
        try:
            await eventually(lambda: runs >= 2, what="the stats loop's restart")
        finally:
            await manager.stop_tasks()
    assert runs == 2
    assert "background task stats died; restarting it" in caplog.text
    assert "stats loop broke" in caplog.text
