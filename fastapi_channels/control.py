"""RemoteCalls: join, leave and disconnect of a connection that another server owns, as
request and reply.

The caller publishes a command with a correlation id to the owner's inbox and waits for the
owner's answer: done, or the owner's own error (refused join, unknown connection), or a
timeout with a clear error. Pure bookkeeping of the calls in flight; the manager does the I/O.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

from fastapi_channels.exceptions import BackendError, BaseError, error_from_response

__all__ = ["RemoteCalls", "reply_for"]

MAX_CALLS_IN_FLIGHT = 10_000


class RemoteCalls:
    """Calls this server made to others and still waits for: correlation id -> future."""

    def __init__(self, limit: int = MAX_CALLS_IN_FLIGHT) -> None:
        self.limit = limit
        # A nonce per instance: a late answer to a call of an earlier run (a restarted manager
        # with the same server id) can never settle a call of this one.
        self._nonce = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any] | None]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def open(
        self, command: dict[str, Any], reply_to: str
    ) -> tuple[str, asyncio.Future[dict[str, Any] | None]]:
        """Register a call; adds `id` and `reply_to` to `command`. BackendError when too many wait."""
        if len(self._pending) >= self.limit:
            raise BackendError(
                f"{self.limit} calls to other servers already wait for an answer",
                error_code="REMOTE_BUSY",
                component="manager",
            )
        call_id = f"{self._nonce}-{next(self._ids)}"
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        command["id"] = call_id
        command["reply_to"] = reply_to
        return call_id, future

    def close(self, call_id: str) -> None:
        self._pending.pop(call_id, None)

    def settle(self, reply: dict[str, Any]) -> bool:
        """Resolve the call a reply answers; False when nobody waits for it any more."""
        future = self._pending.pop(str(reply.get("id")), None)
        if future is None or future.done():
            return False
        error = reply.get("error")
        if isinstance(error, dict):
            future.set_exception(error_from_response(error))
        else:
            result = reply.get("result")
            future.set_result(result if isinstance(result, dict) else None)
        return True

    def fail_all(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)


def reply_for(
    command: dict[str, Any], error: BaseError | None, result: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The owner's answer to `command`: done (with what it returned), or its error as the
    client would see it."""
    reply: dict[str, Any] = {"op": "reply", "id": command.get("id")}
    if error is not None:
        reply["error"] = error.to_response().to_dict()
    elif result is not None:
        reply["result"] = result
    return reply
