"""Typing indicators, coalesced: at most one fan-out per (user, room) per interval.

Typing events are not rate limited (the spec excludes them, so typing never eats into a
user's message budget), yet each one used to go to the whole room: 500 from one client
reached every member. Here the first event of a (user, room) goes out at once, so an honest
user's indicator shows without delay. Events within `interval` of the last fan-out only
record the latest state; at the end of the interval one timer sends that state if it
differs from what the room last saw. The room always ends up with the right state, and a
flood costs it one frame per interval.

Bounds: one entry per (user, room) that fanned out within the last interval, at most
`max_entries`; its timer removes it once an interval passes with nothing new. When full,
the events of a (user, room) without an entry are dropped and counted (`dropped`): typing is
a hint, and losing one never loses a message. Each server coalesces on its own (a user
typing through two servers gets one budget on each).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["TypingCoalescer", "TypingSend"]

logger = logging.getLogger(__name__)

TypingSend = Callable[[str, str, bool, str], Awaitable[None]]
"""`send(room, user_id, typing, exclude)`: fan out one state to the room, minus channel `exclude`."""


@dataclass(slots=True)
class _Entry:
    shown: bool  # the state the room last saw
    timer: asyncio.TimerHandle
    pending: bool | None = None  # the latest state offered since, if any
    exclude: str = ""  # the channel that offered it (its own indicator is not echoed)


class TypingCoalescer:
    """Coalesces typing events per (user, room) on this server; `aclose()` at shutdown."""

    def __init__(self, send: TypingSend, *, interval: float, max_entries: int) -> None:
        if interval <= 0 or max_entries < 1:
            raise ValueError("interval must be > 0 and max_entries >= 1")
        self._send = send
        self._interval = interval
        self._max_entries = max_entries
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # trailing sends: at most one per entry
        self._sent = 0
        self._coalesced = 0
        self._dropped = 0

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "sent": self._sent,
            "coalesced": self._coalesced,
            "dropped": self._dropped,
        }

    async def offer(self, user_id: str, room: str, typing: bool, channel: str) -> None:
        """A typing event from `channel`: fanned out now, held for the timer, or dropped.

        Only the immediate fan-out is awaited, so a broker failure reaches the sender as the
        error of its own message.
        """
        key = (user_id, room)
        entry = self._entries.get(key)
        if entry is not None:
            entry.pending, entry.exclude = typing, channel
            self._coalesced += 1
            return
        if len(self._entries) >= self._max_entries:
            self._dropped += 1
            return
        timer = asyncio.get_running_loop().call_later(self._interval, self._flush, key)
        self._entries[key] = _Entry(shown=typing, timer=timer)
        self._sent += 1
        await self._send(room, user_id, typing, channel)

    def _flush(self, key: tuple[str, str]) -> None:
        """End of an interval: send the held state if it changes what the room saw, else forget."""
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry.pending is None or entry.pending == entry.shown:
            del self._entries[key]
            return
        typing, entry.shown, entry.pending = entry.pending, entry.pending, None
        loop = asyncio.get_running_loop()
        entry.timer = loop.call_later(self._interval, self._flush, key)
        self._sent += 1
        task = loop.create_task(self._send_held(key[1], key[0], typing, entry.exclude))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_held(self, room: str, user_id: str, typing: bool, exclude: str) -> None:
        # No client is waiting for this one: a failure is logged (one line), never raised.
        try:
            await self._send(room, user_id, typing, exclude)
        except Exception as exc:
            logger.warning("typing fan-out to %s for %s failed: %r", room, user_id, exc)

    async def aclose(self) -> None:
        """Cancel every timer and trailing send; entries are forgotten."""
        for entry in self._entries.values():
            entry.timer.cancel()
        self._entries.clear()
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
