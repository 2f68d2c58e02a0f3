"""Redis memory per retained message of a history group (issue 12's figure).

    python -m benchmarks.history_memory [--messages 10000] [--payload 80]

Starts its own redis-server, sends `--messages` JSON objects `{"p": <payload>}` to one
history group as a server does (one script call each) and prints `INFO memory` growth per
message next to the stored frame's length.
"""

from __future__ import annotations

import argparse
import asyncio

import redis.asyncio as aioredis

from benchmarks.run import redis_server
from fastapi_channels import ConnectionManager, WSConfig


async def measure(url: str, messages: int, payload: str) -> tuple[float, int, int]:
    manager = ConnectionManager(
        WSConfig(
            BACKEND_TYPE="redis",
            REDIS_URL=url,
            LOG_STATS=False,
            WS_ENABLE_HEARTBEAT=False,
            WS_HISTORY_GROUPS="bench",
            WS_HISTORY_SIZE=messages,
        )
    )
    await manager.start_tasks()
    admin = aioredis.Redis.from_url(url)
    try:
        await manager.send_to_group("bench", {"p": payload})  # the stream and its keys exist
        before = int((await admin.info("memory"))["used_memory"])
        for _ in range(messages):
            await manager.send_to_group("bench", {"p": payload})
        after = int((await admin.info("memory"))["used_memory"])
        page = await manager.history("bench", limit=1)
        frame = len(manager.encode(page.messages[0]))
    finally:
        await admin.aclose()
        await manager.stop_tasks()
    return (after - before) / messages, frame, page.offset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument(
        "--payload", type=int, default=80, help="characters of payload (100-byte benchmark: 80)"
    )
    args = parser.parse_args()
    with redis_server() as url:
        per_message, frame, _ = asyncio.run(measure(url, args.messages, "x" * args.payload))
    print(f"{per_message:.1f} bytes of Redis memory per retained message (frame: {frame} bytes)")


if __name__ == "__main__":
    main()
