"""The README's first example, saved as app.py and served with `fastapi-channels run app:app`.

The console script is what users type; unlike `python -m`, it does not put the current
directory on sys.path, so the app next to it must be found through `--app-dir` (default: the
current directory), as uvicorn's own CLI does. Its log carries the library's records too
(`LOG_STATS`'s line), not only uvicorn's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

from fastapi_channels.testing import free_port
from tests.support.server_process import wait_listening

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "fastapi-channels"


def readme_example() -> str:
    """The first Python block of README.md's *Use it*, as written there."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use it") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "README's *Use it* has no python block"
    return match.group(1)


async def test_the_readme_example_runs_with_the_console_script_from_its_directory(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(readme_example())
    port = free_port()
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"BACKEND_TYPE": "memory", "LOG_STATS": "true", "WS_STATS_INTERVAL": "0.2"}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "run", "app:app", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=output,
        )
    try:
        wait_listening(process, port, lambda: f"log:\n{log.read_text()}", timeout=30)
        async with connect(f"ws://127.0.0.1:{port}/ws/alice") as alice:
            welcome = json.loads(await alice.recv())
            assert welcome["type"] == "welcome" and welcome["channel_name"]
            await alice.send(json.dumps({"type": "say", "data": "hi"}))
            assert json.loads(await alice.recv()) == {"type": "said", "user": "alice", "text": "hi"}
            # LOG_STATS: the library's stats line reaches the server's log under its own CLI.
            deadline = time.monotonic() + 10
            while "stats connections=1 " not in log.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert "stats connections=1 " in log.read_text(), log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(20)
    # uvicorn shuts down, then re-raises the signal it caught so the exit status tells of it.
    assert code in (0, -signal.SIGTERM), log.read_text()
    assert "Finished server process" in log.read_text()
    assert "Traceback" not in log.read_text()
