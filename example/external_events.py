"""Sending from outside a WebSocket or request: background tasks, database hooks, worker threads.

Code that is not handling a connection reaches the clients through `get_manager()`, the
first `ConnectionManager` of the process (the app's). Two situations:

* on the event loop (an asyncio background task): just `await get_manager().broadcast(...)`,
  as `send_broadcast_from_external_code` and `send_group_message_from_background_task` do;
* in another thread (an SQLAlchemy event fired inside a flush, a Celery-style worker, the
  chat database's own thread): a manager's coroutines belong to its event loop, so hand
  them over with `asyncio.run_coroutine_threadsafe`. `EventBridge` remembers the app's
  loop at start-up and does that.

The app wires `EventBridge.on_room_created` to `ChatDatabase.listen("room_created", ...)`:
every room inserted into the database is announced to everyone, whoever inserted it.

Delayed announcements are held in memory until they are due, so they are bounded: at most
`max_scheduled` on this server, `max_scheduled_per_owner` for one caller, each at most
`max_delay` seconds ahead. Over a bound, `schedule_announcement` raises `ScheduleFullError`
(the REST API answers 429 with `Retry-After`: when the earliest place frees) and nothing is
held; what is already scheduled is never dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from example.protocol import AnnouncementFrame, BackgroundUpdateFrame, RoomCreatedFrame, frame
from fastapi_channels import ConnectionManager, get_manager

__all__ = [
    "EventBridge",
    "ScheduleFullError",
    "send_broadcast_from_external_code",
    "send_group_message_from_background_task",
]

logger = logging.getLogger(__name__)


async def send_broadcast_from_external_code(
    message: str, *, source: str = "external_event", manager: ConnectionManager | None = None
) -> None:
    """Send a broadcast from external code (e.g. an SQLAlchemy event) — the spec's example."""
    manager = manager or get_manager()
    await manager.broadcast(frame(AnnouncementFrame(message=message, source=source)))


async def send_group_message_from_background_task(
    group_name: str, data: dict[str, Any], *, manager: ConnectionManager | None = None
) -> None:
    """Send a group message from a background task (e.g. a Celery task) — the spec's example."""
    manager = manager or get_manager()
    # Ephemeral: a status update, not a room message (not kept in a room's history).
    await manager.send_to_group(
        group_name, frame(BackgroundUpdateFrame(group=group_name, data=data)), history=False
    )


class ScheduleFullError(Exception):
    """No place for another delayed announcement; `retry_after` seconds until one frees."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EventBridge:
    """Runs sends on the app's event loop for code that lives elsewhere.

    `manager=None` means `get_manager()`, resolved at each send. `bind()` at start-up (in the
    lifespan), `aclose()` at shutdown; sends submitted while unbound are dropped and logged.
    """

    def __init__(
        self,
        manager: ConnectionManager | None = None,
        *,
        max_scheduled: int = 100,
        max_scheduled_per_owner: int = 10,
        max_delay: float = 300.0,
    ) -> None:
        self._manager = manager
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[concurrent.futures.Future[Any] | asyncio.Future[Any]] = set()
        self._lock = threading.Lock()
        self.max_scheduled = max_scheduled
        self.max_scheduled_per_owner = max_scheduled_per_owner
        self.max_delay = max_delay
        # id -> (owner, due time): what is held, for the bounds and Retry-After.
        self._scheduled: dict[int, tuple[str | None, float]] = {}
        self._ids = itertools.count()

    @property
    def manager(self) -> ConnectionManager:
        return self._manager if self._manager is not None else get_manager()

    def bind(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop if loop is not None else asyncio.get_running_loop()

    async def aclose(self) -> None:
        """Stop accepting work and cancel what has not run yet."""
        self._loop = None
        with self._lock:
            pending, self._pending = list(self._pending), set()
        for future in pending:
            future.cancel()
        waiting = [asyncio.wrap_future(f) if isinstance(f, concurrent.futures.Future) else f for f in pending]
        if waiting:
            await asyncio.wait(waiting, timeout=2)

    def submit(
        self, coro: Coroutine[Any, Any, Any], on_done: Callable[[], None] | None = None
    ) -> concurrent.futures.Future[Any] | None:
        """Run `coro` on the app's loop from any thread; failures are logged, not raised.

        From another thread it returns a concurrent Future (`.result(timeout)` to wait for it).
        `on_done()` runs once the coroutine is over: done, failed, cancelled or never started.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            logger.warning("event dropped: the app is not running")
            if on_done is not None:
                on_done()
            return None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(coro)
            self._track(task, on_done)
            return None
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        self._track(future, on_done)
        return future

    def _track(
        self,
        future: concurrent.futures.Future[Any] | asyncio.Future[Any],
        on_done: Callable[[], None] | None = None,
    ) -> None:
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        if on_done is not None:
            future.add_done_callback(lambda _: on_done())

    def _done(self, future: concurrent.futures.Future[Any] | asyncio.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.error("external event failed", exc_info=future.exception())

    # --- the hooks and jobs of the chat --------------------------------------------------------
    def on_room_created(self, room: dict[str, Any]) -> None:
        """SQLAlchemy-style `after_insert` hook: runs in the database thread, after the commit."""
        message = RoomCreatedFrame(
            room=room["room"],
            description=room["description"],
            user_id=room["created_by"],
            username=room["created_by"],
        )
        self.submit(self._broadcast(frame(message)))

    async def _broadcast(self, message: dict[str, Any]) -> None:
        await self.manager.broadcast(message)

    def schedule_announcement(self, message: str, delay: float, owner: str | None = None) -> None:
        """A background task: broadcast `message` after `delay` seconds (e.g. a reminder).

        Raises ValueError over `max_delay`, `ScheduleFullError` when this server holds
        `max_scheduled` announcements or `owner` holds `max_scheduled_per_owner`.
        """
        if delay > self.max_delay:
            raise ValueError(f"delay_seconds is at most {self.max_delay:g} here")
        handle = self._reserve(owner, delay)

        async def later() -> None:
            await asyncio.sleep(delay)
            await send_broadcast_from_external_code(message, source="background_task", manager=self._manager)

        self.submit(later(), on_done=lambda: self._release(handle))

    def scheduled_count(self) -> int:
        """Delayed announcements held on this server now."""
        with self._lock:
            return len(self._scheduled)

    def _reserve(self, owner: str | None, delay: float) -> int:
        now = time.monotonic()
        with self._lock:
            held = list(self._scheduled.values())
            mine = [due for who, due in held if who == owner]
            if len(held) >= self.max_scheduled:
                raise ScheduleFullError(
                    f"{self.max_scheduled} announcements are scheduled on this server",
                    min(due for _, due in held) - now,
                )
            if len(mine) >= self.max_scheduled_per_owner:
                raise ScheduleFullError(
                    f"you have {self.max_scheduled_per_owner} announcements scheduled", min(mine) - now
                )
            handle = next(self._ids)
            self._scheduled[handle] = (owner, now + delay)
            return handle

    def _release(self, handle: int) -> None:
        with self._lock:
            self._scheduled.pop(handle, None)

    def run_job_in_thread(self, group_name: str, data: dict[str, Any], timeout: float = 10.0) -> None:
        """A Celery-style job body: blocking code in a worker thread that sends to a group.

        Waits until the send is done (so a job can report success); never call it on the loop.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("run_job_in_thread blocks: call it from a worker thread, not an event loop")
        future = self.submit(send_group_message_from_background_task(group_name, data, manager=self._manager))
        if future is None:
            raise RuntimeError("the app is not running")
        future.result(timeout=timeout)
