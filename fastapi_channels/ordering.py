"""EchoBarrier: one order per sender, whether a send goes through the broker or not.

A group, user or broadcast send travels through Redis and reaches this server's own members
when the reader gets it back (its *echo*); a send to a local connection could be enqueued at
once and overtake it. So a cluster send to a topic this server listens to is numbered, and a
local frame issued while such echoes are outstanding waits here until every one issued before
it came back, or can no longer come (the topic was dropped, the reader lost its connection,
or `max_wait` passed). Pure bookkeeping: no I/O, time is passed in.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

__all__ = ["EchoBarrier"]

logger = logging.getLogger(__name__)

Deliver = Callable[[], object]


class EchoBarrier:
    """Outstanding echoes by sequence number, and the local frames queued behind them.

    Bounded: at most `limit` outstanding echoes and `limit` waiting frames; past either, the
    oldest outstanding echoes are given up (logged) so nothing waits behind them.
    """

    def __init__(self, *, limit: int = 100_000, max_wait: float = 5.0) -> None:
        self.limit = limit
        self.max_wait = max_wait
        self._next = 0
        self._outstanding: dict[
            int, tuple[str, float]
        ] = {}  # seq -> (topic, issued at); insertion = seq order
        self._waiting: deque[tuple[int, Deliver]] = deque()  # (the last seq issued before it, deliver)
        self.given_up = 0

    @property
    def idle(self) -> bool:
        return not self._outstanding

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def issue(self, topic: str, now: float) -> int:
        """Number a cluster send to `topic` whose echo this server will receive."""
        self._next += 1
        seq = self._next
        self._outstanding[seq] = (topic, now)
        if len(self._outstanding) > self.limit:
            self._give_up(next(iter(self._outstanding)), "too many outstanding echoes")
            self._release()
        return seq

    def echoed(self, seq: int) -> None:
        """The echo of `seq` was fanned out (or the send failed and none will come)."""
        if self._outstanding.pop(seq, None) is not None:
            self._release()

    cancel = echoed

    def forget_topic(self, topic: str) -> None:
        """This server stopped listening to `topic`: its echoes will not come."""
        for seq in [s for s, (t, _) in self._outstanding.items() if t == topic]:
            del self._outstanding[seq]
        self._release()

    def forget_all(self) -> None:
        """The reader lost its connection: no outstanding echo will come."""
        self._outstanding.clear()
        self._release()

    def expire(self, now: float) -> None:
        """Give up echoes older than `max_wait` (a message lost on the way must not stall sends)."""
        while self._outstanding:
            seq, (_, issued) = next(iter(self._outstanding.items()))
            if now - issued < self.max_wait:
                break
            self._give_up(seq, f"no echo within {self.max_wait:g}s")
        self._release()

    def defer(self, deliver: Deliver) -> bool:
        """Queue `deliver` behind the outstanding echoes; False when none is outstanding.

        On False nothing was queued: the caller delivers now.
        """
        if not self._outstanding and not self._waiting:
            return False
        if len(self._waiting) >= self.limit:
            self.forget_all()
            if not self._waiting:
                return False
        self._waiting.append((self._next, deliver))
        self._release()
        return True

    def _give_up(self, seq: int, why: str) -> None:
        topic, _ = self._outstanding.pop(seq)
        self.given_up += 1
        logger.warning("echo %d of %s given up: %s", seq, topic, why)

    def _release(self) -> None:
        waiting = self._waiting
        while waiting:
            barrier, deliver = waiting[0]
            if self._outstanding and next(iter(self._outstanding)) <= barrier:
                return
            waiting.popleft()
            try:
                deliver()
            except Exception:
                logger.exception("a deferred local send failed")
