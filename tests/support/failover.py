"""Watching sends through a Redis failover: a member's reader that notes when each numbered
group message arrived, and a sender of numbered group messages that sorts what it sent into
acknowledged and raised. Used by the Sentinel and the Redis Cluster failover tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

from fastapi_channels import ConnectionManager
from fastapi_channels.exceptions import BackendError
from tests.support.client import Client

__all__ = ["NumberedSender", "Receiver"]

OUTAGE_ERRORS = frozenset({"BACKEND_UNAVAILABLE", "DELIVERY_SHORTFALL"})


class Receiver:
    """Reads a member's frames as they arrive and notes when each numbered group message came."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.arrived: dict[int, float] = {}
        self.others: list[dict[str, Any]] = []  # every other JSON object frame, in order
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            frame = await self.client.next(timeout=60)
            if not isinstance(frame, dict):
                continue
            if frame.get("type") == "group" and isinstance(frame.get("data"), int):
                self.arrived.setdefault(frame["data"], time.monotonic())
            else:
                self.others.append(frame)

    def other(self, kind: str, **fields: Any) -> dict[str, Any] | None:
        """The first other frame of type `kind` with these fields, if one came."""
        for frame in self.others:
            if frame.get("type") == kind and all(frame.get(k) == v for k, v in fields.items()):
                return frame
        return None

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class NumberedSender:
    """Sends `{"type": "group", "data": n}` for n = 1, 2, ... to a group through a manager; a
    send that returns is acknowledged, one that raises must raise a retryable BackendError."""

    def __init__(self, manager: ConnectionManager, group: str) -> None:
        self.manager = manager
        self.group = group
        self.sequence = 0
        self.acked: list[tuple[int, float]] = []  # (number, when it returned)
        self.errors: Counter[str] = Counter()
        self.slowest = 0.0

    async def send_one(self) -> None:
        self.sequence += 1
        started = time.monotonic()
        try:
            # The library's own deadlines (socket and pool timeouts, 10 s) bound a send; the
            # test's bound is only there to fail instead of hanging.
            message = {"type": "group", "data": self.sequence}
            await asyncio.wait_for(self.manager.send_to_group(self.group, message), 15)
        except BackendError as error:
            assert error.retryable, error
            self.errors[error.error_code] += 1
        else:
            self.acked.append((self.sequence, time.monotonic()))
        self.slowest = max(self.slowest, time.monotonic() - started)

    def acknowledged_after(self, moment: float) -> list[tuple[int, float]]:
        return [(number, at) for number, at in self.acked if at > moment]

    def raised_only_retryable_outage_errors(self) -> bool:
        """Some sends raised during the switch, all with an outage's codes."""
        return sum(self.errors.values()) >= 1 and set(self.errors) <= OUTAGE_ERRORS
