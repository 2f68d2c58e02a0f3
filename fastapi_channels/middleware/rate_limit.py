"""RateLimitMiddleware: a sliding-window limit per user or per connection.

With a redis-py asyncio client the window lives in Redis and one Lua script checks and
records atomically, so the limit holds across servers. Without one, or while Redis is
unreachable (logged), the window is kept in this process. Excluded types pass untouched.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from fastapi_channels.backends.redis_keys import key_part
from fastapi_channels.exceptions import RateLimitError
from fastapi_channels.messages import Message
from fastapi_channels.middleware.base import Middleware

if TYPE_CHECKING:
    from fastapi_channels.connection import Connection

__all__ = ["RateLimitMiddleware", "SlidingWindow"]

logger = logging.getLogger(__name__)


class SlidingWindow:
    """In-process sliding-window log: at most `limit` hits per key in any `window` seconds.

    Memory is bounded: `limit` timestamps per key and at most `max_keys` keys (least recently
    used keys are forgotten first). Time is passed in, so tests need no sleeping.
    """

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def hit(self, key: str, now: float) -> float | None:
        """Record a hit; None when allowed, else the seconds until one is allowed again."""
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque(maxlen=self.limit)
            if len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        horizon = now - self.window
        while hits and hits[0] <= horizon:
            hits.popleft()
        if len(hits) < self.limit:
            hits.append(now)
            return None
        return max(hits[0] + self.window - now, 0.001)

    def __len__(self) -> int:
        return len(self._hits)


class RateLimitMiddleware(Middleware):
    def __init__(
        self,
        messages_per_window: int,
        window_seconds: float,
        redis: Any = None,
        excluded_message_types: Iterable[str] = (),
        key: Literal["user", "connection"] = "user",
        prefix: str = "ws:",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if messages_per_window < 1 or window_seconds <= 0:
            raise ValueError("messages_per_window must be >= 1 and window_seconds > 0")
        self.messages_per_window = messages_per_window
        self.window_seconds = window_seconds
        self.redis = redis
        self.excluded_message_types = frozenset(excluded_message_types)
        self.key = key
        self.prefix = prefix
        self.clock = clock
        self.local = SlidingWindow(messages_per_window, window_seconds)
        self._script: Any = None
        self._last_redis_warning: float | None = None

    def _key_of(self, connection: Connection) -> str:
        # Names escaped as in every Redis key (`<prefix>ratelimit:user:<user>`).
        if self.key == "user" and connection.user_id is not None:
            return "user:" + key_part(connection.user_id)
        return "conn:" + key_part(connection.channel_name)

    async def process(self, message: Message, connection: Connection, consumer: Any) -> Message | None:
        if message.type in self.excluded_message_types:
            return message
        key = self._key_of(connection)
        retry_after = await self._hit(key)
        if retry_after is None:
            return message
        retry_after = round(retry_after, 3)
        raise RateLimitError(
            f"rate limit of {self.messages_per_window} messages per {self.window_seconds:g}s exceeded",
            retry_after=retry_after,
            details={"limit": self.messages_per_window, "window_seconds": self.window_seconds},
            user_id=connection.user_id,
            connection_id=connection.channel_name,
            message_type=message.type,
            component="rate_limit",
        )

    async def _hit(self, key: str) -> float | None:
        if self.redis is not None:
            try:
                return await self._hit_redis(key)
            except Exception as exc:
                now = time.monotonic()
                if self._last_redis_warning is None or now - self._last_redis_warning > 60:
                    self._last_redis_warning = now
                    logger.warning("rate limit falls back to this process: Redis failed (%s)", exc)
        return self.local.hit(key, self.clock())

    async def _hit_redis(self, key: str) -> float | None:
        if self._script is None:
            source = (resources.files("fastapi_channels.backends") / "scripts" / "rate_limit.lua").read_text()
            self._script = self.redis.register_script(source)
        wait_ms = int(
            await self._script(
                keys=[f"{self.prefix}ratelimit:{key}"],
                args=[self.messages_per_window, int(self.window_seconds * 1000), uuid.uuid4().hex],
            )
        )
        return None if wait_ms < 0 else wait_ms / 1000
