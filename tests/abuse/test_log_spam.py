"""Invalid UTF-8 from many clients cannot fill the server log with tracebacks.

uvicorn's sans-I/O protocol logs each such message with a traceback at ERROR. The fast-path
protocol answers it with one INFO line; `fastapi-channels run` installs a filter that turns
uvicorn's record into one WARNING line, at most 10 a minute. The server runs in its own
process and its whole output goes to a file, so the count is of what an operator would see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.abuse.conftest import FAST
from tests.redis.test_resilience import stats
from tests.support.eventually import eventually
from tests.support.raw_socket import OP_TEXT, RawSocket, frame
from tests.support.server_process import ServerProcess

CLIENTS = 200
BATCH = 20


async def send_invalid_utf8(port: int) -> int | None:
    """One connection, one text frame that is not UTF-8; returns the server's close code."""
    raw = await RawSocket.open(port, "/ws/bad")
    try:
        await raw.next_json()  # hello
        await raw.send(frame(OP_TEXT, b'{"op": "echo", "data": "\xff\xfe"}'))
        return await raw.close_code()
    finally:
        await raw.close()


@pytest.mark.parametrize(
    ("cli", "ws", "most_lines"),
    [
        pytest.param(False, FAST, 0, id="uvicorn-fastpath"),  # its INFO line is below --log-level warning
        pytest.param(True, FAST, CLIENTS, id="cli-fastpath"),  # one INFO line per connection
        pytest.param(True, "websockets-sansio", 10, id="cli-sansio"),  # the filter's burst
    ],
)
async def test_invalid_utf8_from_200_clients_writes_no_traceback(
    cli: bool,
    ws: str,
    most_lines: int,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    server = ServerProcess(
        {"BACKEND_TYPE": "memory", "WS_ENABLE_HEARTBEAT": "false", "LOG_LEVEL": "INFO"},
        ws=ws,
        log_path=tmp_path / "server.log",
        cli=cli,
    )
    server.start()
    try:
        codes: list[int | None] = []
        for _ in range(CLIENTS // BATCH):
            codes += await asyncio.gather(*(send_invalid_utf8(server.port) for _ in range(BATCH)))
        assert codes == [1007] * CLIENTS

        async def all_closed() -> bool:
            return bool((await stats(server.http_url))["connections_closed"] == CLIENTS)

        await eventually(all_closed, what="every connection's cleanup", interval=0.05)
        view = await stats(server.http_url)
        assert (view["connections"], view["connections_closed"]) == (0, CLIENTS)

        lines = server.log().splitlines()
        tracebacks = sum("Traceback" in line for line in lines)
        utf8_lines = [line for line in lines if "UTF-8" in line]
        record_property("traceback_lines", tracebacks)
        record_property("utf8_log_lines", len(utf8_lines))
        assert tracebacks == 0, "\n".join(lines[:40])
        assert len(utf8_lines) <= most_lines, utf8_lines[:3]
        if cli and ws != FAST:
            assert "Invalid UTF-8 sequence received from client." in utf8_lines[0]
            assert "ERROR" not in utf8_lines[0]
    finally:
        server.kill()
