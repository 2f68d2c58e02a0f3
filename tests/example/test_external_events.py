"""Sending from outside a connection: a database event hook, a worker thread, a background task."""

from __future__ import annotations

import asyncio
import threading

import pytest

from example.external_events import EventBridge
from tests.example.conftest import RunningChat
from tests.example.support import ChatClient


async def test_database_hook_announces_rooms_created_by_any_code(chat: RunningChat) -> None:
    bob = await ChatClient.open(chat.ws_url, "bob")
    # Some other code (an admin script, a migration) inserts a room: the SQLAlchemy-style
    # "room_created" hook runs in the database thread and hands the broadcast to the loop.
    created = await chat.app.state.db.create_room("ops", "Operations", "admin-script")
    assert created is not None
    frame = await bob.expect("room_created", room="ops")
    assert frame["user_id"] == "admin-script" and frame["description"] == "Operations"


async def test_celery_style_job_in_a_worker_thread_sends_to_a_group(chat: RunningChat) -> None:
    alice = await ChatClient.open(chat.ws_url, "alice")
    await alice.send("join_room", room="general")
    await alice.expect("room_users", room="general")
    events: EventBridge = chat.app.state.events
    threads: list[str] = []

    def job() -> None:  # blocking code, as in a Celery worker
        threads.append(threading.current_thread().name)
        events.run_job_in_thread("room.general", {"report": "ready", "rows": 3})

    await asyncio.to_thread(job)
    frame = await alice.expect("background_update")
    assert frame["group"] == "room.general" and frame["data"] == {"report": "ready", "rows": 3}
    assert threads and threads[0] != threading.current_thread().name

    with pytest.raises(RuntimeError, match="worker thread"):
        events.run_job_in_thread("room.general", {})  # on the event loop it would block it


async def test_unbound_bridge_drops_work_without_raising() -> None:
    bridge = EventBridge(manager=None)

    async def never() -> None:
        raise AssertionError("must not run")

    assert bridge.submit(never()) is None
