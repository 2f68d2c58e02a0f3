"""Health: live when the event loop answers; ready only while this server can take new clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from fastapi_channels import WSConfig
from fastapi_channels.health import Health
from fastapi_channels.testing import Communicator, app_lifespan, serve
from tests.observability.app import create_observed_app
from tests.support.redis_server import RedisProcess


def _asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_a_server_is_ready_between_its_start_and_its_stop_and_not_while_it_drains() -> None:
    app, manager = create_observed_app(WSConfig(BACKEND_TYPE="memory", LOG_STATS=False))
    before = manager.health()
    assert before.live and not before.ready and before.reason == "not_started"

    async with app_lifespan(app), _asgi_client(app) as http:
        assert manager.health() == Health(live=True, ready=True)
        live = await http.get("/health/live")
        assert live.status_code == 200 and live.json() == {"status": "live", "server_id": manager.server_id}
        ready = await http.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "server_id": manager.server_id}

        # While stop_tasks closes the connections (SIGTERM's drain), readiness is refused.
        during: list[tuple[Health, httpx.Response]] = []
        async with Communicator(app, "/ws/alice") as client:
            hello = await client.receive_json_from()
            connection = manager.get_connection(hello["channel_name"])
            assert connection is not None

            async def probe_while_closing(_code: int) -> None:
                during.append((manager.health(), await http.get("/health/ready")))

            connection.set_close_hook(probe_while_closing)
            await manager.stop_tasks()
        ((health, response),) = during
        assert not health.ready and health.reason == "shutting_down"
        assert response.status_code == 503
        assert response.json()["status"] == "not_ready" and response.json()["reason"] == "shutting_down"
        assert (await http.get("/health/live")).status_code == 200  # still answering: alive

    after = manager.health()
    assert not after.ready and after.reason == "stopped"


async def _until(condition: Callable[[], Awaitable[bool]], deadline: float, what: str) -> float:
    """Poll `condition` every 10 ms until it holds; returns when (monotonic), fails past `deadline`."""
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


@pytest.mark.timeout(90)
async def test_readiness_flips_during_a_redis_restart_and_back(
    own_redis: RedisProcess, redis_prefix: str, record_property: pytest.RecordProperty
) -> None:
    config = WSConfig(
        BACKEND_TYPE="redis", REDIS_URL=own_redis.url, REDIS_CHANNEL_PREFIX=redis_prefix, LOG_STATS=False
    )
    app, manager = create_observed_app(config)
    reasons: list[str] = []

    async def status(code: int) -> bool:
        response = await http.get("/health/ready", timeout=5)
        if response.status_code == 503:
            reason = response.json()["reason"]
            if not reasons or reasons[-1] != reason:
                reasons.append(reason)
        return response.status_code == code

    async with serve(app) as server, httpx.AsyncClient(base_url=server.http_url) as http:
        assert await status(200)
        killed = time.monotonic()
        own_redis.kill()
        not_ready = await _until(lambda: status(503), killed + 30, "503 after Redis died")
        assert not manager.health().ready
        await asyncio.sleep(0.5)  # an outage, not a blip
        assert await status(503)
        restarted = time.monotonic()
        own_redis.start()  # same port, no data: the servers write their state back
        ready_again = await _until(lambda: status(200), restarted + 30, "200 after Redis came back")
        assert manager.health() == Health(live=True, ready=True)

    figures = {
        "kill_to_not_ready_s": round(not_ready - killed, 3),
        "restart_to_ready_s": round(ready_again - restarted, 3),
        "reasons": reasons,
    }
    record_property("readiness_flip", figures)
    assert set(reasons) <= {"backend_connecting", "backend_down", "backend_resyncing"}, reasons
    assert reasons[0] in {"backend_connecting", "backend_down"}
