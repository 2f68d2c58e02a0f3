"""`eventually`: wait, within a bound, until a condition holds.

For effects a test causes but cannot await: a server cleaning up after a client closed,
another process reaping a dead server's state. Not for "nothing arrived": ask for a marker
and check that it is the next thing to arrive (`Client.echo_marker`, `Client.frames_before`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

__all__ = ["eventually"]

Condition = Callable[[], bool | Awaitable[bool]]


async def eventually(
    condition: Condition, timeout: float = 5.0, what: str = "condition", interval: float = 0.01
) -> None:
    """Return once `condition()` is true; fail the test after `timeout` seconds (a bound, not
    a measurement). `condition` may be a coroutine function, e.g. one that asks a server over
    HTTP; `interval` is the pause between two checks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _holds(condition):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


async def _holds(condition: Condition) -> bool:
    result = condition()
    return bool(await result) if inspect.isawaitable(result) else bool(result)
