"""Heartbeat decisions as a pure function of the connections and the current time.

One sweeper loop (in the manager) calls `plan` for all connections: there is no task or
timer per connection. Any frame from a client counts as liveness, not only a pong.
The protocol: a client idle for WS_HEARTBEAT_INTERVAL receives `{"type": "ping",
"timestamp": <unix seconds>}`; it should answer with any frame, `{"type": "pong"}` being the
convention. A client silent for WS_HEARTBEAT_TIMEOUT is closed with 4000.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

__all__ = ["HeartbeatPlan", "Monitored", "plan", "sweep_period"]


class Monitored(Protocol):
    last_seen: float
    last_ping: float

    @property
    def is_open(self) -> bool: ...


M = TypeVar("M", bound=Monitored)


@dataclass(slots=True)
class HeartbeatPlan(Generic[M]):
    ping: list[M] = field(default_factory=list)
    expire: list[M] = field(default_factory=list)


def plan(connections: Iterable[M], now: float, interval: float, timeout: float) -> HeartbeatPlan[M]:
    """Which connections to ping (idle >= interval, not pinged for an interval) and which to close."""
    result: HeartbeatPlan[M] = HeartbeatPlan()
    for connection in connections:
        if not connection.is_open:
            continue
        idle = now - connection.last_seen
        if idle >= timeout:
            result.expire.append(connection)
        elif idle >= interval and now - connection.last_ping >= interval:
            result.ping.append(connection)
    return result


def sweep_period(interval: float, timeout: float) -> float:
    """How often the sweeper runs: fine enough to honour both settings, never a busy loop."""
    return max(0.05, min(interval, timeout) / 4)
