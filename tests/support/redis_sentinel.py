"""A Redis Sentinel deployment of the test's own: a master, one replica and three sentinels, each a
real redis-server process on a free port in a temporary directory, for tests that fail the
master over (SIGKILL) and watch the sentinels promote the replica.

Passwords everywhere, as a production deployment has them: the master and the replica take
PASSWORD (the servers' REDIS_URL carries it), the sentinels take SENTINEL_PASSWORD (the
servers' REDIS_SENTINEL_PASSWORD). The replica accepts writes from clients
(`replica-read-only no`) only so a test can make its copy differ from the master's, as a
replica that missed the master's last writes does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from fastapi_channels.testing import free_port

__all__ = ["MASTER_NAME", "PASSWORD", "SENTINEL_PASSWORD", "SentinelDeployment"]

MASTER_NAME = "fcmaster"
PASSWORD = "master-secret"
SENTINEL_PASSWORD = "sentinel-secret"
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 2000
SENTINELS = 3
QUORUM = 2


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` (errors count as not yet) until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


class Node:
    """One redis-server process (a data node or a sentinel)."""

    def __init__(self, binary: str, port: int, args: list[str], log: Path, password: str) -> None:
        self.binary = binary
        self.port = port
        self.args = args
        self.log = log
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, db=db, socket_timeout=2)

    def ping(self) -> bool:
        with self.client() as client:
            return bool(client.ping())

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def __del__(self) -> None:  # last resort if a test crashed before teardown
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)


class SentinelDeployment:
    """Master, replica and sentinels; `start()` returns once the sentinels could fail it over."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: `apt-get install redis-server` (./run test does it)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="fc-sentinel-"))
        self.master = self._data_node(binary, "master", [])
        self.replica = self._data_node(
            binary,
            "replica",
            ["--replicaof", "127.0.0.1", str(self.master.port), "--replica-read-only", "no"],
        )
        # Each sentinel's id and address are known in advance and written into every sentinel's
        # file (the lines a sentinel writes there itself once it has met the others), so they know
        # each other from the start instead of after their first hello messages (2 s).
        self.sentinel_ids = [uuid.uuid4().hex + uuid.uuid4().hex[:8] for _ in range(SENTINELS)]
        self.sentinel_ports = [free_port() for _ in range(SENTINELS)]
        self.sentinels = [self._sentinel(binary, index) for index in range(SENTINELS)]

    def _data_node(self, binary: str, name: str, extra: list[str]) -> Node:
        port = free_port()
        options = {
            "port": str(port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "dir": str(self.dir),
            "dbfilename": f"{name}.rdb",
            "requirepass": PASSWORD,
            "masterauth": PASSWORD,
            "repl-diskless-sync-delay": "0",  # the replica's first sync at once, not after 5 s
            "loglevel": "warning",
            "logfile": str(self.dir / f"{name}.log"),
        }
        args = [part for option, value in options.items() for part in (f"--{option}", value)] + extra
        return Node(binary, port, args, self.dir / f"{name}.log", PASSWORD)

    def _sentinel(self, binary: str, index: int) -> Node:
        port = self.sentinel_ports[index]
        peers = [
            f"sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {peer_port} {peer_id}"
            for peer_port, peer_id in zip(self.sentinel_ports, self.sentinel_ids, strict=True)
            if peer_port != port
        ]
        conf = self.dir / f"sentinel{index}.conf"  # a sentinel rewrites its file: one each
        conf.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"dir {self.dir}",
                    f"logfile {self.dir / f'sentinel{index}.log'}",
                    f"requirepass {SENTINEL_PASSWORD}",
                    f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} {QUORUM}",
                    f"sentinel auth-pass {MASTER_NAME} {PASSWORD}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel myid {self.sentinel_ids[index]}",
                    f"sentinel known-replica {MASTER_NAME} 127.0.0.1 {self.replica.port}",
                    *peers,
                    "",
                ]
            )
        )
        return Node(
            binary, port, [str(conf), "--sentinel"], self.dir / f"sentinel{index}.log", SENTINEL_PASSWORD
        )

    @property
    def sentinel_setting(self) -> str:
        """REDIS_SENTINELS for the servers."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def settings(self, db: int = 0) -> dict[str, str]:
        """The WSConfig settings of a server (or an emitter) of this deployment. REDIS_URL's host
        names nothing that exists: in sentinel mode only its password and db are used."""
        return {
            "BACKEND_TYPE": "redis",
            "REDIS_MODE": "sentinel",
            "REDIS_URL": f"redis://:{PASSWORD}@not-used.invalid:1/{db}",
            "REDIS_SENTINELS": self.sentinel_setting,
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        }

    def start(self) -> None:
        try:
            self.master.start()
            until(self.master.ping, 10, "the master")
            self.replica.start()
            until(self._replica_in_sync, 10, "the replica to sync")
            for sentinel in self.sentinels:
                sentinel.start()
            until(self._sentinels_ready, 15, "the sentinels to know the replica and each other")
        except BaseException:
            self.stop()
            raise

    def _replica_in_sync(self) -> bool:
        with self.replica.client() as client:
            return client.info("replication").get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(MASTER_NAME)
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < SENTINELS - 1:
                    return False
        return True

    def promoted(self) -> bool:
        """Whether every sentinel names the replica as the master, and it says it is one."""
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                if int(port) != self.replica.port:
                    return False
        with self.replica.client() as client:
            return client.info("replication").get("role") == "master"

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.master):
            node.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
