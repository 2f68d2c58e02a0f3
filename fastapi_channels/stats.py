"""Counters of one manager: plain integers bumped on the hot path, read by `get_stats()`.

Counting is an attribute increment, never a second serialisation of the message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Counters"]


@dataclass(slots=True)
class Counters:
    """Totals since the manager started. Sizes count characters of text frames, bytes of binary."""

    connections_opened: int = 0
    connections_closed: int = 0
    connections_refused: int = 0
    messages_published: int = 0
    publish_failures: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
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

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
