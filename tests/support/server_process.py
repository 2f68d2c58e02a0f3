"""A uvicorn server of the test app in a process of its own, configured through the environment."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fastapi_channels.testing import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_listening(
    process: subprocess.Popen[bytes], port: int, describe: Callable[[], str], timeout: float = 20
) -> None:
    """Until `process` accepts TCP connections on `port`: a RuntimeError with `describe()` (its
    log, read then) when it exits first or does not listen within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} ({describe()})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # a poll with a deadline, not a timing assumption
    raise RuntimeError(f"server did not start listening within {timeout:g} s ({describe()})")


class ServerProcess:
    def __init__(
        self,
        env: dict[str, str],
        *,
        ws: str = "websockets-sansio",
        log_path: Path | None = None,
        cli: bool = False,
    ) -> None:
        """`cli`: start it with `fastapi-channels run` (log level: LOG_LEVEL), not uvicorn's CLI."""
        self.cli = cli
        self.port = free_port()
        self.env = {**os.environ, "LOG_STATS": "false", **env}
        self.ws = ws
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._spawn(log)
        finally:
            if not isinstance(log, int):
                log.close()  # the child keeps its own descriptor
        self._wait_listening()

    def _spawn(self, log: object) -> None:
        options = [
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ws",
            self.ws,
            "--no-access-log",
        ]
        if self.cli:
            command = ["fastapi_channels.cli", "run", "tests.app:app_from_env", *options]
        else:
            # Compression off, as `fastapi-channels run` serves: a client that negotiates it
            # (websockets' clients do by default) is never written to by the fast path.
            command = [
                "uvicorn",
                "tests.app:app_from_env",
                *options,
                "--ws-per-message-deflate",
                "false",
                "--log-level",
                "warning",
            ]
        self.process = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            env=self.env,
            stdout=log,  # type: ignore[arg-type]
            stderr=log,  # type: ignore[arg-type]
        )

    def _wait_listening(self) -> None:
        assert self.process is not None
        wait_listening(self.process, self.port, lambda: f"log: {self.log_path}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def rss_mib(self) -> float:
        """The server process's resident memory (VmRSS from /proc, so Linux only), in MiB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS line in /proc/<pid>/status")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def terminate(self, timeout: float = 20) -> int:
        assert self.process is not None
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)
