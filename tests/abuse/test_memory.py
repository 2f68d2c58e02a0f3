"""A client that joins a busy group and never reads: the server's memory stays bounded.

The server runs in a process of its own so its RSS (VmRSS from /proc) is its alone. The
policy is drop_oldest, the worst case for retention: the non-reader is never closed, so
whatever it costs stays allocated for the whole test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.abuse.conftest import FAST
from tests.abuse.test_frames import OP_TEXT, RawSocket, frame
from tests.support.client import Client
from tests.support.server_process import ServerProcess

QUEUE_BYTES = 1 << 20  # WS_OUTBOUND_QUEUE_BYTES
PAYLOAD = 60_000
MESSAGES = 400  # 24 MB pushed at the non-reader, 24x its buffer


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("ws", ["websockets-sansio", FAST], ids=["sansio", "fastpath"])
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
        assert server.process is not None
        pid = server.process.pid
        sender = await Client.open(server.ws_url, "sender")
        await sender.call("echo", op="echo", data="warm-up")
        raw = await RawSocket.open(server.port, "/ws/sleeper")
        await raw.next_json()  # hello; from here on it never reads
        await raw.send(frame(OP_TEXT, json.dumps({"op": "join", "group": "busy"}).encode()))
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                if (await http.get(f"{server.http_url}/stats")).json()["groups"] == 1:
                    break
                await asyncio.sleep(0.02)
        before = rss_mib(pid)

        data = "x" * PAYLOAD
        for index in range(MESSAGES):
            await sender.send(op="group", group="busy", data=data)
            if index % 50 == 49:  # keep the sender itself in step
                await sender.call("echo", op="echo", data=index)
        await sender.call("echo", op="echo", data="done")
        async with httpx.AsyncClient() as http:
            stats = (await http.get(f"{server.http_url}/stats")).json()
        growth = rss_mib(pid) - before
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
