"""`fastapi-channels run --workers N` on Redis: N processes of one command are N servers of a cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastapi_channels.testing import free_port
from tests.support.client import Client
from tests.support.redis_server import RedisProcess

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2


class WorkersProcess:
    """`fastapi-channels run tests.app:app_from_env --factory --workers N`, in a session of its own."""

    def __init__(
        self, env: dict[str, str], workers: int, log_path: Path, app: str = "tests.app:app_from_env"
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = {key: value for key, value in {**os.environ, **env}.items() if key != "SERVER_INSTANCE_ID"}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fastapi_channels.cli",
                    "run",
                    app,
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                    "--no-access-log",
                ],
                cwd=ROOT,
                env={**env, "LOG_STATS": "false"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the workers go with the supervisor at teardown
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with {self.process.returncode}: {log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("did not start listening")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uvicorn's supervisor ends its workers
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture
def env(redis_server: RedisProcess, redis_prefix: str) -> dict[str, str]:
    return {"BACKEND_TYPE": "redis", "REDIS_URL": redis_server.url, "REDIS_CHANNEL_PREFIX": redis_prefix}


@pytest.fixture
def workers(redis_server: RedisProcess, redis_prefix: str, tmp_path: Path) -> Iterator[WorkersProcess]:
    env = {"BACKEND_TYPE": "redis", "REDIS_URL": redis_server.url, "REDIS_CHANNEL_PREFIX": redis_prefix}
    process = WorkersProcess(env, WORKERS, tmp_path / "workers.log")
    try:
        yield process
    finally:
        process.stop()


def _server(client: Client) -> str:
    return client.channel_name.partition("!")[0]


async def _spread(url: str, user: str = "probe") -> dict[str, Client]:
    """One client per worker: the kernel hands each new connection to one of the workers that
    is accepting (a worker still starting takes none), so open clients until every worker
    holds one (a 30 s deadline); the extra ones are closed."""
    by_server: dict[str, Client] = {}
    deadline = asyncio.get_running_loop().time() + 30
    attempt = 0
    while asyncio.get_running_loop().time() < deadline:
        attempt += 1
        client = await Client.open(url, f"{user}{attempt}" if user == "probe" else user)
        if _server(client) in by_server:
            await client.close()
            await asyncio.sleep(0.05)
        else:
            by_server[_server(client)] = client
        if len(by_server) == WORKERS:
            return by_server
    raise AssertionError(f"{attempt} connections in 30 s all went to {sorted(by_server)}")


@pytest.mark.timeout(120)
async def test_clients_spread_over_the_workers_of_one_command_reach_each_other(
    workers: WorkersProcess,
) -> None:
    first, second = (await _spread(workers.ws_url)).values()
    for member in (first, second):
        await member.call("joined", op="join", group="room")
    await first.send(op="group", group="room", data="across workers")
    for member in (first, second):
        assert await member.next() == {"type": "group", "data": "across workers"}

    dora = await _spread(workers.ws_url, "dora")  # one user with a connection on each worker
    assert (await second.call("user_sent", op="user", user="dora", data="for dora"))["count"] == WORKERS
    for connection in dora.values():
        assert await connection.next() == {"type": "user", "data": "for dora"}

    await second.send(op="broadcast", data="everyone")
    for client in (first, second, *dora.values()):
        assert await client.next() == {"type": "broadcast", "data": "everyone"}


@pytest.mark.timeout(120)
async def test_the_metrics_of_all_workers_add_up_whichever_worker_answers_the_scrape(
    env: dict[str, str], tmp_path: Path
) -> None:
    """prometheus-client's multiprocess mode: the CLI gives the workers a directory, each copies
    its counters there, and any worker's /metrics merges them all."""
    process = WorkersProcess(
        env, WORKERS, tmp_path / "workers.log", app="tests.observability.app:app_from_env"
    )
    try:
        clients = list((await _spread(process.ws_url)).values())
        clients += list((await _spread(process.ws_url, "dora")).values())

        async def merged() -> dict[str, float]:
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{process.port}/metrics", timeout=10)
            response.raise_for_status()
            return {
                sample.name: sample.value
                for family in text_string_to_metric_families(response.text)
                for sample in family.samples
                if not sample.labels or sample.name.endswith("_count")
            }

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            samples = await merged()
            if (
                samples.get("fastapi_channels_connections") == len(clients)
                and samples.get("fastapi_channels_ready") == WORKERS
            ):
                break
            assert loop.time() < deadline, samples
            await asyncio.sleep(0.1)
        assert samples["fastapi_channels_users"] == 2 * WORKERS  # per worker: a probe and dora, on each
        assert samples["fastapi_channels_connections_opened_total"] >= len(clients)
        assert samples["fastapi_channels_messages_sent_total"] >= len(clients)  # the hello frames
        assert samples["fastapi_channels_outbound_wait_seconds_count"] >= 1
    finally:
        process.stop()
