"""Prometheus metrics: the same counters `get_stats()` and the stats log line read."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fastapi_channels import WSConfig
from fastapi_channels.backends.redis import RedisBackend
from fastapi_channels.metrics import COUNTER_HELP
from fastapi_channels.stats import COUNTER_NAMES
from fastapi_channels.testing import Communicator, app_lifespan
from tests.observability.app import create_observed_app
from tests.support.redis_server import RedisProcess


async def _scrape(app: Any) -> tuple[str, dict[str, float]]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    samples = {
        sample.name + ("" if not sample.labels else str(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return response.headers["content-type"], samples


def test_every_counter_has_its_help_text() -> None:
    assert set(COUNTER_HELP) == set(COUNTER_NAMES)


async def test_every_counter_and_gauge_of_get_stats_is_a_metric_with_the_same_value() -> None:
    app, manager = create_observed_app(WSConfig(BACKEND_TYPE="memory", LOG_STATS=False))
    async with (
        app_lifespan(app),
        Communicator(app, "/ws/alice") as alice,
        Communicator(app, "/ws/bob") as bob,
    ):
        for client in (alice, bob):
            await client.receive_json_from()  # hello
            await client.send_json_to({"op": "join", "group": "room"})
            assert (await client.receive_json_from())["type"] == "joined"
        for index in range(5):
            await alice.send_json_to({"op": "group", "group": "room", "data": index})
        for client in (alice, bob):
            assert [(await client.receive_json_from())["data"] for _ in range(5)] == list(range(5))

        content_type, samples = await _scrape(app)
        stats = manager.get_stats()
        waits = manager.counters.outbound_wait

    assert content_type.startswith("text/plain")
    for name in COUNTER_NAMES:
        assert samples[f"fastapi_channels_{name}_total"] == stats[name], name
    for name in ("connections", "users", "groups", "subscriptions", "buffered_messages"):
        assert samples[f"fastapi_channels_{name}"] == stats[name], name
    assert stats["messages_sent"] >= 14 and stats["connections"] == 2
    assert samples["fastapi_channels_ready"] == 1
    assert samples["fastapi_channels_outbound_wait_seconds_count"] == waits.count > 0
    assert samples["fastapi_channels_outbound_wait_seconds_sum"] == waits.sum
    assert samples["fastapi_channels_outbound_wait_seconds_bucket[('le', '+Inf')]"] == waits.count


async def test_the_pubsub_lag_is_the_probe_round_trip(redis_server: RedisProcess, redis_prefix: str) -> None:
    config = WSConfig(
        BACKEND_TYPE="redis", REDIS_URL=redis_server.url, REDIS_CHANNEL_PREFIX=redis_prefix, LOG_STATS=False
    )
    backend = RedisBackend(redis_server.url, prefix=redis_prefix, self_check_interval=0.05)
    app, _ = create_observed_app(config, backend=backend)
    async with app_lifespan(app):
        assert backend.pubsub_lag is None  # no probe came back yet
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while backend.pubsub_lag is None:
            assert loop.time() < deadline, "no probe round trip measured"
            await asyncio.sleep(0.01)
        _, samples = await _scrape(app)
    lag = samples["fastapi_channels_pubsub_lag_seconds"]
    assert 0 <= lag < 10
    assert samples["fastapi_channels_ready"] == 1
