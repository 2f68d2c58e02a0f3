"""The README's demo command, as a subprocess: memory backend without Redis, history across restarts.

`./run demo` (`python -m fastapi_channels.cli run example.main:app --host 127.0.0.1 --port <free>`) serves the
module-level app, whose manager is the process's first: `get_manager()` in
example.external_events reaches it from the database thread and from background tasks.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.example.support import ChatClient, ExampleServer, example_env
from tests.support.client import close_all_clients

NO_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: any Redis use would fail


@pytest.fixture
def servers() -> Iterator[list[ExampleServer]]:
    started: list[ExampleServer] = []
    yield started
    for server in started:
        server.kill()


def start(servers: list[ExampleServer], db_path: Path, log: Path) -> ExampleServer:
    server = ExampleServer(example_env(db_path, BACKEND_TYPE="memory", REDIS_URL=NO_REDIS), log_path=log)
    servers.append(server)
    server.start()
    return server


def stop(server: ExampleServer) -> None:
    """SIGTERM: uvicorn shuts down gracefully (lifespan included), then re-raises the signal."""
    assert server.terminate() in (0, -signal.SIGTERM), server.log()
    assert "Traceback" not in server.log(), server.log()


async def test_demo_runs_without_redis_and_history_survives_a_restart(
    servers: list[ExampleServer], tmp_path: Path
) -> None:
    db_path = tmp_path / "chat.db"
    first = start(servers, db_path, tmp_path / "first.log")

    alice = await ChatClient.open(first.ws_url, "alice")
    bob = await ChatClient.open(first.ws_url, "bob")
    await alice.send("join_room", room="general")
    await alice.expect("room_users", room="general")
    for text in ("first!", "still here"):
        await alice.send("chat_message", room="general", text=text)
        await alice.expect("chat_message", text=text)
    await alice.send("file_message", room="general", name="notes.txt", mime_type="text/plain", data="aGk=")
    await alice.expect("file_message")

    # External events through get_manager(): the database hook and a background task.
    await alice.send("create_room", room="ops", description="Operations")
    assert (await bob.expect("room_created", room="ops"))["user_id"] == "alice"
    async with httpx.AsyncClient(base_url=first.http_url, timeout=10) as http:
        scheduled = await http.post("/api/announce", json={"message": "restarting", "delay_seconds": 0.1})
        assert scheduled.json()["status"] == "scheduled"
        status = (await http.get("/api/status")).json()
    assert (await bob.expect("announcement", message="restarting"))["source"] == "background_task"
    assert status["backend_type"] == "memory" and status["connections"] == 2

    await close_all_clients()
    stop(first)
    assert not Path(f"{db_path}-wal").exists(), "the lifespan did not close the database"
    conn = sqlite3.connect(db_path)
    try:  # WAL is a persistent property of the file
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()

    second = start(servers, db_path, tmp_path / "second.log")
    carol = await ChatClient.open(second.ws_url, "carol")
    assert "ops" in {room["room"] for room in carol.welcome["rooms"]}
    await carol.send("join_room", room="general")
    history = (await carol.expect("message_history", room="general"))["messages"]
    assert [(m["type"], m["text"], m["name"]) for m in history] == [
        ("chat_message", "first!", None),
        ("chat_message", "still here", None),
        ("file_message", "", "notes.txt"),
    ]
    async with httpx.AsyncClient(base_url=second.http_url, timeout=10) as http:
        rest = (await http.get("/api/rooms/general/messages", params={"limit": 2})).json()
    assert [m["text"] for m in rest["messages"]] == ["still here", ""]
    await close_all_clients()
    stop(second)
