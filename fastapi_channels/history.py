"""History groups: positions on the wire, the recovery window, and one server's place in a
group's stream. Pure logic, no I/O: the backends store, the manager moves frames.

A message sent to a history group is stored and numbered: its frame gains `"offset"` (1 for
the group's first message, +1 per stored message, no gaps) and `"epoch"` (changes whenever
the group's history was lost). A client that saw (epoch, offset) can re-join with it and get
exactly what came after, or be told it cannot (`recovered: false`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import orjson

from fastapi_channels.exceptions import ValidationError

__all__ = [
    "HistoryEntry",
    "HistoryPage",
    "HistoryPolicy",
    "HistoryRead",
    "JoinResult",
    "Sequencer",
    "positioned_frame",
    "split_positioned_body",
]

POSITION_KEYS = ("offset", "epoch")


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One stored message: its offset and the frame exactly as members received it."""

    offset: int
    frame: str
    exclude: frozenset[str] = frozenset()  # channel names the send left out (send_group_except)


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """A store's answer: the group's epoch (None: no history) and last offset, the first
    offset still recoverable, and the retained entries after the position asked for."""

    epoch: str | None
    offset: int
    first: int
    entries: list[HistoryEntry]

    def recovers(self, epoch: str, since: int) -> bool:
        """Whether a client that saw (epoch, since) can get every later message from here."""
        if self.epoch is None or epoch != self.epoch or since > self.offset:
            return False
        if since == self.offset:
            return True
        return since + 1 >= self.first and bool(self.entries) and self.entries[0].offset == since + 1


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """What `manager.history()` answers: retained messages after `since`, oldest first, and
    the group's current position (`offset` 0 and `epoch` None for a group with no history)."""

    messages: list[dict[str, Any]]
    epoch: str | None
    offset: int


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What `join_group` answers: whether the missed messages were replayed, how many, and
    the group's position when the join completed (None for a group without history)."""

    recovered: bool = False
    replayed: int = 0
    epoch: str | None = None
    offset: int | None = None


@dataclass
class HistoryPolicy:
    """Which groups keep history, how many messages and for how long (WS_HISTORY_*)."""

    patterns: list[str] = field(default_factory=list)
    size: int = 1000
    ttl: int = 86400
    _cache: dict[str, bool] = field(default_factory=dict, repr=False)

    MAX_CACHED = 100_000

    def add(self, pattern: str) -> None:
        if pattern not in self.patterns:
            self.patterns.append(pattern)
            self._cache.clear()

    def applies(self, group: str) -> bool:
        """True when `group` matches one of the glob patterns (`room.*`, `news`)."""
        if not self.patterns:
            return False
        known = self._cache.get(group)
        if known is None:
            known = any(fnmatch.fnmatchcase(group, pattern) for pattern in self.patterns)
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            self._cache[group] = known
        return known


def split_positioned_body(frame: str | bytes, group: str) -> str:
    """Check a frame can carry positions and return it as JSON object text.

    ValidationError for a str/bytes message (positions need a JSON object) and for an object
    that already has an `offset` or `epoch` key.
    """
    if isinstance(frame, bytes):
        raise ValidationError(
            f"group {group!r} keeps history: send a JSON object (dict, Message or model), not text "
            "or bytes (or send with history=False); history is JSON, so a serializer that makes "
            "bytes (WS_SERIALIZER=pickle) cannot be used with it",
            error_code="HISTORY_NEEDS_OBJECT",
            details={"group": group},
        )
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not frame.startswith("{"):
        raise ValidationError(
            f"group {group!r} keeps history: send a JSON object (dict, Message or model), not text",
            error_code="HISTORY_NEEDS_OBJECT",
            details={"group": group},
        )
    taken = [key for key in POSITION_KEYS if key in value]
    if taken:
        raise ValidationError(
            f"{' and '.join(taken)} are set by history groups: rename those keys",
            error_code="RESERVED_KEY",
            details={"group": group, "keys": taken},
        )
    return frame


def positioned_frame(body: str, offset: int, epoch: str) -> str:
    """`body` (a JSON object's text) with `"offset"` and `"epoch"` first. The Lua store builds
    the same bytes; this is the memory backend's and the tests' version."""
    head = f'{{"offset":{offset},"epoch":"{epoch}"'
    rest = body[1:].lstrip()
    return head + "}" if rest.startswith("}") else head + "," + rest


class Sequencer:
    """One server's place in one history group: what it delivered to its members last.

    Live frames arrive in offset order unless the pub/sub connection dropped some; then the
    next one shows a gap, and the missing offsets are read from the store. Duplicates (a
    frame both filled from the store and received live) are dropped by offset.
    """

    __slots__ = (
        "anchor_next",
        "early",
        "epoch",
        "filling",
        "generation",
        "held",
        "last",
        "limit",
        "starting",
    )

    def __init__(
        self, epoch: str | None = None, last: int = 0, *, limit: int = 10_000, starting: bool = False
    ) -> None:
        self.epoch = epoch
        self.last = last
        self.limit = limit
        self.filling = False
        self.held: dict[int, Any] = {}  # offset -> payload waiting for a gap to be filled
        # Until the first local member's join has read the group's position (`starting`), live
        # frames wait in `early` as they came: where this server's place begins is not known.
        self.starting = starting
        self.early: list[tuple[str, int, Any]] = []  # (epoch, offset, payload), at most `limit`
        self.anchor_next = False  # the position could not be read: begin at the next frame
        # Bumped when the place jumps (a new epoch): a store read begun before it is stale.
        self.generation = 0

    def keep_early(self, epoch: str, offset: int, payload: Any) -> bool:
        """Keep a frame that came while the position is being read; False past the bound."""
        if len(self.early) >= self.limit:
            return False
        self.early.append((epoch, offset, payload))
        return True

    def accept(self, epoch: str, offset: int) -> str:
        """Decide a live frame: "deliver", "drop" (seen already), "hold" (after a gap, or
        while a fill runs), or "reset" (a new epoch: the group's history was lost; hold it and
        fill from the new epoch's first message)."""
        if self.epoch != epoch:
            if self.epoch is None:
                # The group had no history when this server's place began: this is its epoch,
                # and `last` (0) is where it starts.
                self.epoch = epoch
            else:
                # A new epoch: the group's history was lost. Start again from its first
                # message (the caller holds this one and reads the rest from the store).
                self.epoch, self.last = epoch, 0
                self.held.clear()
                self.generation += 1
                return "reset"
        if offset <= self.last:
            return "drop"
        if offset == self.last + 1 and not self.filling:
            self.last = offset
            return "deliver"
        return "hold"

    def hold(self, offset: int, payload: Any) -> bool:
        """Keep a frame that came after a gap; False when the bound is reached (then the
        caller gives up filling and resets)."""
        if len(self.held) >= self.limit:
            return False
        self.held[offset] = payload
        return True

    def release(self) -> tuple[list[tuple[int, Any]], int]:
        """After a fill: the held frames that now follow on, in order, and how many holes the
        store could not fill were given up to deliver them (each a gap its members see)."""
        released: list[tuple[int, Any]] = []
        holes = 0
        for offset in sorted(self.held):
            if offset <= self.last:
                continue
            if offset > self.last + 1:
                holes += 1
            self.last = offset
            released.append((offset, self.held[offset]))
        self.held.clear()
        return released, holes
        self.held.clear()
