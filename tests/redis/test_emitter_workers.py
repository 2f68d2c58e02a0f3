"""Sends from processes that are not servers: a real Celery worker and a plain script.

Two uvicorn server processes share the session's Redis; the Celery broker and result backend
are other databases of that same redis-server. The members are connected to both servers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis.conftest import ClusterFactory
from tests.support.client import Client
from tests.support.redis_server import RedisProcess

ROOT = Path(__file__).resolve().parents[2]


def _cluster_env(redis_server: RedisProcess, redis_prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "BACKEND_TYPE": "redis",
        "REDIS_URL": redis_server.url,
        "REDIS_CHANNEL_PREFIX": redis_prefix,
    }


@pytest.fixture
def celery_worker(
    redis_server: RedisProcess, redis_prefix: str, tmp_path: Path
) -> Iterator[tuple[str, str, str]]:
    """A real `celery worker` (prefork, one child) on a queue of this test's own.

    Yields (broker url, result backend url, queue).
    """
    base = redis_server.url.rsplit("/", 1)[0]
    broker, backend, queue = f"{base}/1", f"{base}/2", f"q-{redis_prefix.rstrip(':')}"
    env = {
        **_cluster_env(redis_server, redis_prefix),
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": backend,
    }
    log = open(tmp_path / "celery.log", "wb")  # noqa: SIM115 - the worker writes it until teardown
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.redis.celery_tasks",
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its pool child goes with it at teardown
    )
    try:
        yield broker, backend, queue
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        log.close()


@pytest.mark.timeout(120)
async def test_a_celery_task_reaches_every_member_of_a_group_on_two_servers(
    cluster: ClusterFactory, celery_worker: tuple[str, str, str]
) -> None:
    from celery import Celery

    broker, backend, queue = celery_worker
    s1, s2 = cluster(2)
    members = [
        await Client.open(base, user) for base, user in ((s1.ws_url, "a"), (s2.ws_url, "b"), (s1.ws_url, "c"))
    ]
    for member in members:
        await member.call("joined", op="join", group="orders")
    user_on_both = [await Client.open(s1.ws_url, "dora"), await Client.open(s2.ws_url, "dora")]

    client = Celery("sender", broker=broker, backend=backend)
    try:
        group_result = client.send_task("notify_group", args=["orders", "order 42 shipped"], queue=queue)
        worker_pid = await asyncio.to_thread(group_result.get, timeout=60)
        user_result = client.send_task("notify_user", args=["dora", "your order shipped"], queue=queue)
        addressed = await asyncio.to_thread(user_result.get, timeout=30)
    finally:
        client.close()

    assert worker_pid != os.getpid()
    for member in members:
        assert await member.next(timeout=10) == {"type": "group", "data": "order 42 shipped"}
    assert addressed == 2
    for connection in user_on_both:
        assert await connection.next(timeout=10) == {"type": "user", "data": "your order shipped"}


@pytest.mark.timeout(90)
async def test_a_plain_script_with_the_blocking_emitter_reaches_a_group_and_a_user_on_two_servers(
    cluster: ClusterFactory, redis_server: RedisProcess, redis_prefix: str
) -> None:
    s1, s2 = cluster(2)
    members = [await Client.open(s1.ws_url, "a"), await Client.open(s2.ws_url, "b")]
    for member in members:
        await member.call("joined", op="join", group="news")
    eve = [await Client.open(s1.ws_url, "eve"), await Client.open(s2.ws_url, "eve")]

    script = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.redis.emitter_script",
        "news",
        "eve",
        "extra edition",
        cwd=ROOT,
        env=_cluster_env(redis_server, redis_prefix),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(script.communicate(), 60)
    assert script.returncode == 0, err.decode()
    assert out.decode().strip() == "2"
    for member in members:
        assert await member.next() == {"type": "group", "data": "extra edition"}
    for connection in eve:
        assert await connection.next() == {"type": "user", "data": "extra edition"}
