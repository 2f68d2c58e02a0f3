"""One lock per (room, user) while a connection of that user changes its presence there.

"User joined" and "user left" frames are sent once per user, not per connection: the first
connection to arrive and the last to go decide. Two connections of one user acting at once
(both leaving a room, both closing) used to each see the other as gone already and both send
it. Taking this lock around "change my presence, then look at the others" makes one of them
see the other. Entries exist only while someone holds or waits for them, so the dict is
bounded by the operations under way.

Per process: a user's connections on two servers acting in the same instant may still each
send the frame (docs/protocol.md, `user_left`, says so).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["PresenceLocks"]


class PresenceLocks:
    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}  # key -> (lock, users)

    @asynccontextmanager
    async def hold(self, room: str, user_id: str) -> AsyncIterator[None]:
        key = (room, user_id)
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


PRESENCE = PresenceLocks()
"""The process's locks: every consumer of the chat shares them."""
