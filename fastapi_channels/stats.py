"""Counters of one manager: plain integers bumped on the hot path, read by `get_stats()`.

Counting is an attribute increment, never a second serialisation of the message. The stats
log line and the Prometheus metrics (`fastapi_channels.metrics`) both read these.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Final

__all__ = ["COUNTER_NAMES", "WAIT_BUCKETS", "Counters", "WaitHistogram"]

WAIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the outbound-wait histogram's buckets; one more holds the rest."""


class WaitHistogram:
    """How long frames waited in outbound buffers, in fixed buckets: integers, no lock, no I/O.

    Sampled, to stay off the per-recipient path: on the ASGI path a connection measures one
    frame at a time, from its queueing to being taken for its `send()`; on the fast path each
    socket write counts once, with the wait of the oldest frame it carries.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = WAIT_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float, frames: int = 1) -> None:
        """Count `frames` frames that each waited `seconds`."""
        self.counts[bisect_left(self.bounds, seconds)] += frames
        self.sum += seconds * frames
        self.count += frames

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """(upper bound, frames that waited at most that long), ending with (inf, count)."""
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            yield bound, total


@dataclass(slots=True)
class Counters:
    """Totals since the manager started.

    Sizes count payloads: characters of text frames and bytes of binary ones, except those
    sent on the fast path, which count the UTF-8 bytes of text (the same for ASCII): frames
    are queued there already encoded, and counting characters would take a decode per frame.
    Frame headers are never counted.
    """

    connections_opened: int = 0
    connections_closed: int = 0
    connections_refused: int = 0
    messages_published: int = 0
    publish_failures: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    socket_writes: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    messages_dropped: int = 0
    slow_consumer_closes: int = 0
    heartbeat_closes: int = 0
    heartbeat_pings: int = 0
    send_failures: int = 0
    backend_messages_invalid: int = 0
    backend_outages: int = 0
    delivery_shortfalls: int = 0
    remote_timeouts: int = 0
    history_replayed: int = 0
    history_filled: int = 0
    history_gaps: int = 0
    history_resets: int = 0
    outbound_wait: WaitHistogram = field(default_factory=WaitHistogram, repr=False, compare=False)

    def as_dict(self) -> dict[str, int]:
        """Every integer counter by name (the histogram is read on its own)."""
        return {name: getattr(self, name) for name in COUNTER_NAMES}


COUNTER_NAMES: Final = tuple(f.name for f in fields(Counters) if f.name != "outbound_wait")
"""The integer counters of `Counters`, in declaration order."""
