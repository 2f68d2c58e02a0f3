"""Prometheus metrics of one server: the counters `get_stats()` reads, readiness, pub/sub lag
and the outbound-wait histogram, served by `MetricsApp` (mount it at /metrics).

One source of truth: in a single process a collector reads the manager when Prometheus
scrapes (nothing is added to the send path). With several worker processes
(`fastapi-channels run --workers N`) this uses prometheus-client's multiprocess mode as its
documentation describes it: PROMETHEUS_MULTIPROC_DIR names an empty directory before the
workers start (the CLI makes one), each worker copies its counters into its own files there
every MIRROR_INTERVAL seconds, and a scrape, answered by any worker, merges every worker's
files (counters and live gauges summed, the lag as the largest). Needs prometheus-client:
the `prometheus` extra. Not for health checks: see `fastapi_channels.health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from fastapi_channels.stats import COUNTER_NAMES, WAIT_BUCKETS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric
    from starlette.types import Receive, Scope, Send

    from fastapi_channels.manager import ConnectionManager

__all__ = [
    "COUNTER_HELP",
    "GAUGE_HELP",
    "MIRROR_INTERVAL",
    "PREFIX",
    "ManagerCollector",
    "MetricsApp",
    "multiprocess_dir",
]

logger = logging.getLogger(__name__)

PREFIX = "fastapi_channels_"
MIRROR_INTERVAL = 1.0
"""Seconds between two copies of a worker's counters into the multiprocess directory."""

GAUGE_HELP = {
    "connections": "WebSocket connections open on this server",
    "users": "Distinct users with a connection on this server",
    "groups": "Groups with a member on this server",
    "subscriptions": "Pub/sub topics this server listens to",
    "buffered_messages": "Frames waiting in outbound buffers",
}
COUNTER_HELP = {
    "connections_opened": "Connections accepted and registered",
    "connections_closed": "Connections closed and unregistered",
    "connections_refused": "Connections refused (limits, origin, duplicate id, backend down)",
    "messages_published": "Sends published to the backend (one per group, user or broadcast send)",
    "publish_failures": "Sends the backend did not take",
    "messages_sent": "Frames written to clients",
    "bytes_sent": "Characters (text frames) and bytes (binary frames) written to clients",
    "socket_writes": "Writes to client sockets (messages_sent / socket_writes: frames per write)",
    "messages_received": "Frames received from clients",
    "bytes_received": "Characters and bytes received from clients",
    "messages_dropped": "Frames dropped by the slow-consumer policy or a close",
    "slow_consumer_closes": "Connections closed because their outbound buffer overflowed",
    "heartbeat_closes": "Connections closed for silence past WS_HEARTBEAT_TIMEOUT",
    "heartbeat_pings": "Pings sent to idle clients",
    "send_failures": "Writes to a socket that failed",
    "backend_messages_invalid": "Malformed envelopes dropped",
    "backend_outages": "Times the backend stopped delivering (pub/sub connection lost)",
    "delivery_shortfalls": "Sends that reached fewer servers than had members",
    "remote_timeouts": "Remote joins, leaves and disconnects whose owner did not answer",
    "history_replayed": "History messages replayed to re-joining connections",
    "history_filled": "History messages read back from the store to fill a gap",
    "history_gaps": "History gaps that could not be filled (trimmed or unreadable)",
    "history_resets": "History groups found with a new epoch (their history was lost)",
}
READY_HELP = "1 when this server takes new clients (see /health/ready), else 0"
LAG_HELP = "Seconds the last self-check probe took through the pub/sub broker and back"
WAIT_HELP = "Seconds frames waited in a connection's outbound buffer before being written"
WAIT_NAME = "outbound_wait_seconds"

_DEAD_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def _counter_help(name: str) -> str:
    return COUNTER_HELP.get(name) or name.replace("_", " ").capitalize()


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, when this process runs in that mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _readings(manager: ConnectionManager) -> tuple[dict[str, Any], bool, float | None]:
    return manager.get_stats(), manager.health().ready, manager.backend.pubsub_lag


class ManagerCollector:
    """A prometheus-client collector that reads one manager at scrape time."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager

    def describe(self) -> list[Metric]:
        return []  # nothing to describe ahead: the names are fixed, the values read at scrape time

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        stats, ready, lag = _readings(self.manager)
        for name, help_text in GAUGE_HELP.items():
            yield GaugeMetricFamily(PREFIX + name, help_text, value=stats[name])
        for name in COUNTER_NAMES:
            yield CounterMetricFamily(PREFIX + name, _counter_help(name), value=stats[name])
        yield GaugeMetricFamily(PREFIX + "ready", READY_HELP, value=1 if ready else 0)
        if lag is not None:
            yield GaugeMetricFamily(PREFIX + "pubsub_lag_seconds", LAG_HELP, value=lag)
        waits = self.manager.counters.outbound_wait
        yield HistogramMetricFamily(
            PREFIX + WAIT_NAME,
            WAIT_HELP,
            buckets=[(floatToGoString(bound), count) for bound, count in waits.cumulative()],  # type: ignore[no-untyped-call]
            sum_value=waits.sum,
        )


class _Mirror:
    """Multiprocess mode: this worker's counters copied into prometheus-client's files."""

    def __init__(self, manager: ConnectionManager) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.manager = manager
        self.gauges = {
            name: Gauge(PREFIX + name, help_text, multiprocess_mode="livesum", registry=None)
            for name, help_text in GAUGE_HELP.items()
        }
        self.ready = Gauge(PREFIX + "ready", READY_HELP, multiprocess_mode="livesum", registry=None)
        self.lag = Gauge(PREFIX + "pubsub_lag_seconds", LAG_HELP, multiprocess_mode="livemax", registry=None)
        self.counters = {
            name: Counter(PREFIX + name, COUNTER_HELP[name], registry=None) for name in COUNTER_NAMES
        }
        self.wait = Histogram(PREFIX + WAIT_NAME, WAIT_HELP, buckets=WAIT_BUCKETS, registry=None)
        self.copied = dict.fromkeys(COUNTER_NAMES, 0)
        waits = manager.counters.outbound_wait
        self.copied_waits = [0] * len(waits.counts)
        self.copied_sum = 0.0

    def sync(self) -> None:
        stats, ready, lag = _readings(self.manager)
        for name, gauge in self.gauges.items():
            gauge.set(stats[name])
        self.ready.set(1 if ready else 0)
        self.lag.set(lag if lag is not None else 0.0)
        for name, counter in self.counters.items():
            delta = stats[name] - self.copied[name]
            if delta > 0:  # a restarted manager starts from zero again: nothing to take back
                counter.inc(delta)
            self.copied[name] = stats[name]
        self._sync_waits()

    def _sync_waits(self) -> None:
        waits = self.manager.counters.outbound_wait
        # prometheus-client has no public call to add n observations to a bucket: its
        # per-bucket values are what observe() increments; the files hold the same numbers.
        buckets = self.wait._buckets
        for index, count in enumerate(waits.counts):
            delta = count - self.copied_waits[index]
            if delta > 0:
                buckets[index].inc(delta)
            self.copied_waits[index] = count
        if waits.sum > self.copied_sum:
            self.wait._sum.inc(waits.sum - self.copied_sum)
        self.copied_sum = waits.sum

    def idle(self) -> None:
        """This worker's manager stopped: it holds nothing any more."""
        for gauge in (*self.gauges.values(), self.ready, self.lag):
            gauge.set(0)

    async def run(self) -> None:
        try:
            while True:
                self.sync()
                await asyncio.sleep(MIRROR_INTERVAL)
        finally:
            self.idle()


def _forget_dead_workers(path: str) -> None:
    """Drop the live gauges of worker processes that no longer exist (uvicorn has no
    child-exit hook to call prometheus-client's mark_process_dead from)."""
    from prometheus_client import multiprocess

    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _DEAD_FILE.search(os.path.basename(file))
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            continue  # alive, another user's


class MetricsApp:
    """An ASGI app answering every GET with the metrics (mount it, or route /metrics to it).

    `registry`: a prometheus-client registry to add this manager's metrics to (e.g.
    `prometheus_client.REGISTRY`, to serve them with your own and the process's metrics);
    by default a registry of their own. In multiprocess mode the registry is built per
    scrape from the directory's files, as prometheus-client requires.
    """

    def __init__(self, manager: ConnectionManager, *, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self.manager = manager
        self.directory = multiprocess_dir()
        self._mirror: _Mirror | None = None
        if self.directory is not None:
            self._mirror = _Mirror(manager)
            manager.add_background_task("metrics-mirror", self._mirror.run)
            self.registry = None
        else:
            self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
            self.registry.register(ManagerCollector(manager))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (text or OpenMetrics, as `accept` asks) and its content type."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        registry = self.registry
        if registry is None:
            from prometheus_client.multiprocess import MultiProcessCollector

            assert self._mirror is not None and self.directory is not None
            self._mirror.sync()  # this worker's share is fresh; the others' at most MIRROR_INTERVAL old
            with contextlib.suppress(OSError):
                _forget_dead_workers(self.directory)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        return encoder(registry), content_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("MetricsApp serves HTTP only")
        request = Request(scope, receive)
        if request.method not in ("GET", "HEAD"):
            response = Response(status_code=405, headers={"Allow": "GET, HEAD"})
        else:
            body, content_type = self.render(request.headers.get("accept"))
            response = Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
        await response(scope, receive, send)
