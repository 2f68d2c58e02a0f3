"""heartbeat.plan: who to ping and who to close, as a pure function of the time."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapi_channels.heartbeat import HeartbeatPlan, plan, sweep_period

INTERVAL = 30.0
TIMEOUT = 60.0


@dataclass(eq=False)
class Conn:
    last_seen: float
    last_ping: float = 0.0
    is_open: bool = True


def test_fresh_connection_is_left_alone() -> None:
    conn = Conn(last_seen=1000.0)
    result = plan([conn], now=1000.0 + INTERVAL - 0.001, interval=INTERVAL, timeout=TIMEOUT)
    assert result.ping == [] and result.expire == []


def test_idle_connection_is_pinged_at_the_interval() -> None:
    conn = Conn(last_seen=1000.0)
    result = plan([conn], now=1000.0 + INTERVAL, interval=INTERVAL, timeout=TIMEOUT)
    assert result.ping == [conn]
    assert result.expire == []


def test_recently_pinged_connection_is_not_pinged_again() -> None:
    conn = Conn(last_seen=1000.0, last_ping=1035.0)
    result = plan([conn], now=1050.0, interval=INTERVAL, timeout=TIMEOUT)
    assert result.ping == [] and result.expire == []


def test_connection_is_expired_at_the_timeout_not_pinged() -> None:
    conn = Conn(last_seen=1000.0, last_ping=1030.0)
    assert plan([conn], now=1000.0 + TIMEOUT - 0.001, interval=INTERVAL, timeout=TIMEOUT).expire == []
    result = plan([conn], now=1000.0 + TIMEOUT, interval=INTERVAL, timeout=TIMEOUT)
    assert result.expire == [conn]
    assert result.ping == []


def test_expired_even_if_never_pinged() -> None:
    conn = Conn(last_seen=1000.0, last_ping=999_999.0)
    assert plan([conn], now=1000.0 + TIMEOUT + 5, interval=INTERVAL, timeout=TIMEOUT).expire == [conn]


def test_closed_connections_are_skipped() -> None:
    idle = Conn(last_seen=0.0, is_open=False)
    dead = Conn(last_seen=-1000.0, is_open=False)
    result = plan([idle, dead], now=INTERVAL + 1, interval=INTERVAL, timeout=TIMEOUT)
    assert result.ping == [] and result.expire == []


def test_mixed_population_is_partitioned() -> None:
    now = 10_000.0
    fresh = Conn(last_seen=now - 1)
    idle = Conn(last_seen=now - INTERVAL - 1)
    pinged = Conn(last_seen=now - INTERVAL - 1, last_ping=now - 1)
    silent = Conn(last_seen=now - TIMEOUT - 1)
    closed = Conn(last_seen=now - TIMEOUT - 1, is_open=False)
    result = plan([fresh, idle, pinged, silent, closed], now=now, interval=INTERVAL, timeout=TIMEOUT)
    assert result.ping == [idle]
    assert result.expire == [silent]


def test_plan_accepts_any_iterable_and_returns_a_plan() -> None:
    result = plan(iter([]), now=0.0, interval=1.0, timeout=2.0)
    assert isinstance(result, HeartbeatPlan)
    assert result.ping == [] and result.expire == []


def simulate(
    silent_after: float, end: float, step: float, interval: float, timeout: float
) -> tuple[list[float], float | None]:
    """Drive plan() like the sweeper does; the client sends frames until `silent_after`."""
    conn = Conn(last_seen=0.0)
    pings: list[float] = []
    now = 0.0
    while now <= end:
        if now <= silent_after:
            conn.last_seen = now
        result = plan([conn], now=now, interval=interval, timeout=timeout)
        if conn in result.expire:
            return pings, now
        if conn in result.ping:
            pings.append(now)
            conn.last_ping = now  # what the manager records after sending the ping
        now = round(now + step, 6)
    return pings, None


def test_silent_client_is_pinged_once_per_interval_then_closed() -> None:
    pings, closed_at = simulate(silent_after=0.0, end=200.0, step=0.5, interval=10.0, timeout=35.0)
    assert pings == [10.0, 20.0, 30.0]
    assert closed_at == 35.0


def test_chatty_client_is_never_pinged_nor_closed() -> None:
    pings, closed_at = simulate(silent_after=1e9, end=500.0, step=1.0, interval=10.0, timeout=30.0)
    assert pings == [] and closed_at is None


@given(
    interval=st.floats(min_value=0.5, max_value=50),
    timeout=st.floats(min_value=0.5, max_value=100),
    last_seen=st.floats(min_value=0, max_value=1000),
    last_ping=st.floats(min_value=0, max_value=1000),
    now=st.floats(min_value=0, max_value=2000),
    is_open=st.booleans(),
)
def test_plan_property(
    interval: float, timeout: float, last_seen: float, last_ping: float, now: float, is_open: bool
) -> None:
    conn = Conn(last_seen=last_seen, last_ping=last_ping, is_open=is_open)
    result = plan([conn], now=now, interval=interval, timeout=timeout)
    assert not (conn in result.ping and conn in result.expire)
    if not is_open:
        assert result.ping == [] and result.expire == []
        return
    idle = now - last_seen
    assert (conn in result.expire) is (idle >= timeout)
    if conn in result.ping:
        assert idle >= interval and now - last_ping >= interval


@pytest.mark.parametrize(
    ("interval", "timeout", "expected"),
    [
        (30.0, 60.0, 7.5),
        (60.0, 20.0, 5.0),
        (4.0, 4.0, 1.0),
        (0.1, 0.2, 0.05),  # never a busy loop
        (0.01, 0.01, 0.05),
    ],
)
def test_sweep_period(interval: float, timeout: float, expected: float) -> None:
    assert sweep_period(interval, timeout) == pytest.approx(expected)


@given(st.floats(min_value=1e-6, max_value=1e6), st.floats(min_value=1e-6, max_value=1e6))
def test_sweep_period_bounds(interval: float, timeout: float) -> None:
    period = sweep_period(interval, timeout)
    assert period >= 0.05
    if min(interval, timeout) >= 0.2:
        assert period <= min(interval, timeout) / 4 + 1e-12
