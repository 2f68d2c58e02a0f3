"""A client that joins a busy group and never reads: the server's memory stays bounded.

Servers run in processes of their own so each RSS (VmRSS from /proc) is the server's alone.
The single-server case uses drop_oldest, the worst case for retention: the non-reader is
never closed, so whatever it costs stays allocated for the whole test. The cluster case is
the issue's: 50 MB through a group on two servers sharing Redis, under each policy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.abuse.conftest import WS_IDS, WS_IMPLEMENTATIONS
from tests.redis.conftest import ClusterFactory
from tests.redis.test_resilience import stats
from tests.support.client import Client
from tests.support.eventually import eventually
from tests.support.raw_socket import OP_TEXT, RawSocket, frame
from tests.support.server_process import ServerProcess

QUEUE_BYTES = 1 << 20  # WS_OUTBOUND_QUEUE_BYTES
PAYLOAD = 60_000
MESSAGES = 400  # 24 MB pushed at the non-reader, 24x its buffer

GROUP_PAYLOAD = 62_500
GROUP_MESSAGES = 800  # 50 MB through the group
IN_FLIGHT = 8  # messages the sender may be ahead of the slowest reader: 500 KB < QUEUE_BYTES
# Server A's RSS may grow by at most this much (peak while the 50 MB flow, sampled every
# 20 ms): the non-reader's 1 MiB buffer plus 7 MiB for uvicorn's buffers, the readers' 8
# messages in flight and allocator slack. Measured (docs/reliability.md): 0.9 to 2.1 MiB.
GROUP_RSS_BOUND_MIB = 8


async def open_non_reader(port: int, group: str) -> RawSocket:
    """A hand-built client that reads its hello, asks to join `group`, and never reads again."""
    raw = await RawSocket.open(port, "/ws/sleeper")
    await raw.next_json()
    await raw.send(frame(OP_TEXT, json.dumps({"op": "join", "group": group}).encode()))
    return raw


async def sample_rss(server: ServerProcess, samples: list[float]) -> None:
    """Appends the server's RSS every 20 ms until cancelled: the bound is on the peak."""
    while True:
        samples.append(server.rss_mib())
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("ws", WS_IMPLEMENTATIONS, ids=WS_IDS)
async def test_a_non_reading_member_costs_a_bounded_amount_of_server_memory(
    ws: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    server = ServerProcess(
        {
            "BACKEND_TYPE": "memory",
            "WS_OUTBOUND_QUEUE_BYTES": str(QUEUE_BYTES),
            "WS_SLOW_CONSUMER_POLICY": "drop_oldest",
            "WS_ENABLE_HEARTBEAT": "false",
        },
        ws=ws,
        log_path=tmp_path / "server.log",
    )
    server.start()
    raw: RawSocket | None = None
    try:
        sender = await Client.open(server.ws_url, "sender")
        await sender.call("echo", op="echo", data="warm-up")
        raw = await open_non_reader(server.port, "busy")
        async with httpx.AsyncClient() as http:

            async def joined() -> bool:
                return bool((await http.get(f"{server.http_url}/stats")).json()["groups"] == 1)

            await eventually(joined, what="the non-reader's join")
        before = server.rss_mib()

        data = "x" * PAYLOAD
        for index in range(MESSAGES):
            await sender.send(op="group", group="busy", data=data)
            if index % 50 == 49:  # keep the sender itself in step
                await sender.call("echo", op="echo", data=index)
        await sender.call("echo", op="echo", data="done")
        async with httpx.AsyncClient() as http:
            stats = (await http.get(f"{server.http_url}/stats")).json()
        growth = server.rss_mib() - before
        record_property(f"rss_growth_mib_{ws.rsplit(':', 1)[-1]}", round(growth, 1))
        record_property(f"messages_dropped_{ws.rsplit(':', 1)[-1]}", stats["messages_dropped"])

        assert stats["connections"] == 2  # the non-reader is kept (drop_oldest) ...
        assert stats["messages_dropped"] > 0  # ... and what it could not take was dropped, counted
        # Bounded: its buffer (1 MiB) + uvicorn's and the kernel's, plus allocator slack; the
        # 24 MB pushed at it are not retained.
        assert growth < 16, f"server RSS grew by {growth:.1f} MiB"
        assert "Traceback" not in server.log()
    finally:
        if raw is not None:
            await raw.close()
        server.kill()


@pytest.mark.parametrize("policy", ["close", "drop_oldest"])
@pytest.mark.parametrize("ws", WS_IMPLEMENTATIONS, ids=WS_IDS)
async def test_fifty_megabytes_to_a_group_with_a_non_reading_member_on_a_cluster(
    cluster: ClusterFactory, ws: str, policy: str, record_property: Callable[[str, object], None]
) -> None:
    """Server A holds a non-reader and a reader, server B a reader and the sender."""
    a, b = cluster(
        2,
        ws=ws,
        WS_OUTBOUND_QUEUE_BYTES=QUEUE_BYTES,
        WS_SLOW_CONSUMER_POLICY=policy,
        WS_ENABLE_HEARTBEAT="false",
        # Long enough that the close is still pending when the test reads the non-reader's
        # socket: its close frame then arrives after what was queued, on both protocols.
        WS_CLOSE_TIMEOUT=30,
    )
    readers = [await Client.open(a.ws_url, "reader-a"), await Client.open(b.ws_url, "reader-b")]
    for reader in readers:
        await reader.call("joined", op="join", group="big")
    sender = await Client.open(b.ws_url, "sender")
    raw = await open_non_reader(a.port, "big")
    try:
        async with httpx.AsyncClient() as http:

            async def joined() -> bool:
                view = (await http.get(f"{a.http_url}/cluster", params={"group": "big"})).json()
                return bool(view["group_size"] == 3)

            await eventually(joined, what="the non-reader's join")
        await sender.call("echo", op="echo", data="warm-up")
        before = a.rss_mib()

        received: list[list[int]] = [[], []]

        async def read_group(reader: Client, got: list[int]) -> None:
            while len(got) < GROUP_MESSAGES:
                message = await reader.next(timeout=10)
                assert message["type"] == "group", message
                got.append(int(message["data"][:6]))

        samples: list[float] = []
        sampler = asyncio.create_task(sample_rss(a, samples))
        reading = [asyncio.create_task(read_group(r, got)) for r, got in zip(readers, received, strict=True)]
        filler = "x" * (GROUP_PAYLOAD - 6)
        async with asyncio.timeout(60):
            for index in range(GROUP_MESSAGES):
                while index - min(map(len, received)) >= IN_FLIGHT:
                    for task in reading:
                        if task.done():
                            task.result()  # a reader failed: raise its error here
                    await asyncio.sleep(0.002)
                await sender.send(op="group", group="big", data=f"{index:06d}{filler}")
            await asyncio.gather(*reading)
        sampler.cancel()
        after = a.rss_mib()
        view = await stats(a.http_url)

        name = f"{ws.rsplit(':', 1)[-1]}_{policy}"
        peak_growth = max([*samples, after]) - before
        record_property(f"rss_peak_growth_mib_{name}", round(peak_growth, 1))
        record_property(f"rss_end_growth_mib_{name}", round(after - before, 1))
        record_property(f"messages_dropped_{name}", view["messages_dropped"])
        record_property(f"slow_consumer_closes_{name}", view["slow_consumer_closes"])

        # Every other member got all 800 messages, in order.
        assert received == [list(range(GROUP_MESSAGES))] * 2
        if policy == "close":
            assert view["slow_consumer_closes"] == 1
            assert view["connections"] == 1  # unregistered at once; only reader-a is left
            # Reading at last, it gets what was already written, then the close frame.
            assert await raw.close_code() == 1013
        else:
            assert view["slow_consumer_closes"] == 0
            assert view["connections"] == 2  # kept ...
            assert view["messages_dropped"] > 0  # ... and its losses counted
        assert peak_growth < GROUP_RSS_BOUND_MIB, f"server A's RSS grew by {peak_growth:.1f} MiB"
        for server in (a, b):
            assert server.alive
            assert "Traceback" not in server.log()
    finally:
        await raw.close()
