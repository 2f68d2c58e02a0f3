"""The memory backend's history store: a bounded buffer of positioned frames per group.

The same semantics as the Redis stream: offsets from 1 without gaps, an epoch that changes
when a group's history is lost (idle past the TTL, or evicted), and a recovery window of
exactly the last `size` offsets.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque

from fastapi_channels.history import HistoryEntry, HistoryRead, positioned_frame

__all__ = ["GroupHistory", "HistoryStore"]

MAX_HISTORY_GROUPS = 100_000
"""Groups whose history one process keeps; past it the least recently used loses its history
(a new epoch: its clients are told they cannot recover)."""


class GroupHistory:
    __slots__ = ("entries", "epoch", "offset", "touched")

    def __init__(self, now: float) -> None:
        self.epoch = uuid.uuid4().hex[:16]
        self.offset = 0
        self.entries: deque[tuple[int, str, float, frozenset[str]]] = deque()
        self.touched = now


class HistoryStore:
    """Histories by group name, least recently used first."""

    def __init__(self, limit: int = MAX_HISTORY_GROUPS) -> None:
        self.limit = limit
        self._groups: OrderedDict[str, GroupHistory] = OrderedDict()

    def __len__(self) -> int:
        return len(self._groups)

    def append(
        self, group: str, body: str, size: int, ttl: int, exclude: frozenset[str] = frozenset()
    ) -> tuple[int, str, str]:
        """Store the next message of `group`; returns (offset, epoch, positioned frame)."""
        now = time.time()
        history = self._groups.get(group)
        if history is None or now - history.touched > ttl:
            history = GroupHistory(now)
            self._groups[group] = history
            while len(self._groups) > self.limit:
                self._groups.popitem(last=False)
        self._groups.move_to_end(group)
        history.touched = now
        history.offset += 1
        frame = positioned_frame(body, history.offset, history.epoch)
        entries = history.entries
        entries.append((history.offset, frame, now, exclude))
        while len(entries) > size:
            entries.popleft()
        return history.offset, history.epoch, frame

    def read(self, group: str, after: int, limit: int, size: int, ttl: int) -> HistoryRead:
        now = time.time()
        history = self._groups.get(group)
        if history is None or now - history.touched > ttl:
            return HistoryRead(None, 0, 1, [])
        first = max(1, history.offset - size + 1)
        # Nothing below the oldest entry kept is recoverable.
        first = max(first, history.entries[0][0] if history.entries else history.offset + 1)
        start = max(after, first - 1)
        entries = [
            HistoryEntry(offset, frame, exclude)
            for offset, frame, _, exclude in history.entries
            if offset > start and offset >= first
        ][:limit]
        return HistoryRead(history.epoch, history.offset, first, entries)
