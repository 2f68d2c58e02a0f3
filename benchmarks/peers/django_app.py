"""Django Channels 4 as an ASGI app, serving the benchmark protocol at /ws.

Settings are configured in code. One server uses InMemoryChannelLayer (W1); across servers
channels_redis's RedisChannelLayer (W3). An AsyncWebsocketConsumer does `group_add` on
`join` and `group_send` on `P<payload>` (or `R<room> <payload>`), and sends the text
verbatim.

Both layers drop messages for a channel whose queue holds `capacity` of them (default 100);
a burst of hundreds of messages would overflow it, so capacity is raised to 10,000 here, as
a user expecting bursts would.

redis-py 8 reads with a 5 s socket timeout by default; channels_redis 4.3's consumers wait
in a blocking BZPOPMIN with a 5 s server-side timeout, so a consumer idle for about 5 s
dies with `TimeoutError: Timeout reading from ...` and, with the process's shared receive
loop, every consumer of that server stops receiving (django/channels_redis#422,
redis/redis-py#4091). The redis host disables the client-side timeout, the documented fix.
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.conf import settings

CAPACITY = 10_000

if not settings.configured:
    if os.environ.get("BACKEND_TYPE") == "redis":
        layer: dict[str, Any] = {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": os.environ["REDIS_URL"], "socket_timeout": None}],
                "prefix": os.environ.get("REDIS_CHANNEL_PREFIX", "asgi:"),
                "capacity": CAPACITY,
            },
        }
    else:
        layer = {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": CAPACITY}}
    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-only",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={"default": layer},
        USE_TZ=True,
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from benchmarks.protocol import parse  # noqa: E402


class BenchConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.joined: list[str] = []

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        action, group, payload = parse(text_data or "")
        if action == "join":
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.append(group)
            await self.send(text_data="joined")
        elif action == "publish":
            await self.channel_layer.group_send(group, {"type": "bench.message", "text": payload})

    async def bench_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])

    async def disconnect(self, code: int) -> None:
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)


app = ProtocolTypeRouter({"websocket": URLRouter([path("ws", BenchConsumer.as_asgi())])})
