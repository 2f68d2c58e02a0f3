"""A burst that reaches a server through Redis leaves in shared writes, as a local burst does.

Each pub/sub message is dispatched on its own, so before the coalescer wrote a slice of
connections per loop iteration every message cost one write per member: the cost of the
bare ASGI loop. The servers run the fast-path protocol over a real Redis; the counters
`messages_sent` and `socket_writes` say how many frames each write carried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi_channels import WSConfig
from fastapi_channels.testing import serve
from tests.app import create_app
from tests.support.client import Client
from tests.support.redis_server import RedisProcess

FAST = "fastapi_channels.fastpath:FastWebSocketProtocol"


def _config(redis_server: RedisProcess, prefix: str) -> WSConfig:
    return WSConfig(
        BACKEND_TYPE="redis",
        REDIS_URL=redis_server.url,
        REDIS_CHANNEL_PREFIX=prefix,
        LOG_STATS=False,
        WS_ENABLE_HEARTBEAT=False,
    )


async def test_messages_from_another_server_share_writes_while_a_fan_out_is_under_way(
    redis_server: RedisProcess, redis_prefix: str
) -> None:
    app1, publisher = create_app(_config(redis_server, redis_prefix))
    app2, receiver = create_app(_config(redis_server, redis_prefix))
    async with serve(app1, ws=FAST), serve(app2, ws=FAST) as s2:
        # No permessage-deflate: a compressed connection takes the ASGI path.
        members = [await Client.open(s2.ws_url, f"m{index}", compression=None) for index in range(40)]
        for member in members:
            await member.call("joined", op="join", group="burst")

        async def stream() -> None:
            # One after another, each awaited, as one client's messages are: each reaches
            # the receiver on its own, while it may still be writing the previous ones.
            for n in range(30):
                await publisher.send_to_group("burst", {"type": "n", "data": n})
            for member in members:
                numbers = [(await member.next())["data"] for _ in range(30)]
                assert numbers == list(range(30))

        async def burst() -> None:
            # All at once: Redis hands the receiver 30 messages back to back.
            await asyncio.gather(
                *(publisher.send_to_group("burst", {"type": "n", "data": n}) for n in range(30))
            )
            for member in members:
                numbers = [(await member.next())["data"] for _ in range(30)]
                assert sorted(numbers) == list(range(30))

        async def frames_and_writes(send: Callable[[], Awaitable[None]]) -> tuple[int, int]:
            before = receiver.get_stats()
            await send()
            after = receiver.get_stats()
            return (
                after["messages_sent"] - before["messages_sent"],
                after["socket_writes"] - before["socket_writes"],
            )

        await stream()  # the publisher's pool opens its Redis connections
        frames, writes = await frames_and_writes(stream)
        assert frames == 40 * 30
        # How much a stream shares depends on how the messages and the writes interleave:
        # about 440 writes on a quiet machine, 900 on a busy one; one per frame (1,200)
        # before slices.
        assert writes < frames, f"{frames} frames took {writes} writes"
        frames, writes = await frames_and_writes(burst)
        assert frames == 40 * 30
        # A burst waits in the reader's buffer while the first message's fan-out is written.
        assert writes * 4 <= frames, f"{frames} frames took {writes} writes"
