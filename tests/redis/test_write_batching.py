"""A burst that reaches a server through Redis leaves in shared writes, as a local burst does.

Each pub/sub message is dispatched on its own, so before the coalescer wrote a slice of
connections per loop iteration every message cost one write per member: the cost of the
bare ASGI loop. The servers run the fast-path protocol over a real Redis; the counters
`messages_sent` and `socket_writes` say how many frames each write carried.
"""

from __future__ import annotations

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

        async def burst() -> None:
            # One after another, each awaited, as one client's messages are: each reaches
            # the receiver on its own, while it is still writing the previous ones.
            for n in range(30):
                await publisher.send_to_group("burst", {"type": "n", "data": n})
            for member in members:
                numbers = [(await member.next())["data"] for _ in range(30)]
                assert numbers == list(range(30))

        await burst()  # the publisher's pool opens its Redis connections
        before = receiver.get_stats()
        await burst()
        after = receiver.get_stats()
        frames = after["messages_sent"] - before["messages_sent"]
        writes = after["socket_writes"] - before["socket_writes"]
        assert frames == 40 * 30
        # Before slices: one write per frame (1,200). Measured here since: about 440.
        assert writes * 2 <= frames, f"{frames} frames took {writes} writes"
