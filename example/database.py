"""ChatDatabase: users, rooms, messages and room presence in SQLite, off the event loop.

One worker thread owns the only `sqlite3` connection; the async methods hand their query
to it and await the result, so no query or commit ever runs on the event loop. The few
sync methods (`get_recent_messages`, used by the spec's REST handler) submit to the same
thread and wait: call them from a threadpool (a plain `def` FastAPI endpoint), never from
the event loop (they raise there). WAL mode lets readers and one writer work together,
also across processes sharing the file (two servers of one chat on one host).
Every query is parameterised.

`listen(event, fn)` registers a hook called synchronously in the database thread after
the change is committed, like SQLAlchemy's `event.listen(Model, "after_insert", fn)`:
events are "room_created" and "message_saved", with the new row as a dict.

Rooms are bounded here, where every creator passes (a client, the REST API, an admin
script): at most `max_rooms` in all and `max_rooms_per_user` created by one user, checked
and inserted in one statement, so two servers sharing the file cannot both take the last
place. Over a limit `create_room` raises `RoomLimitError`; nothing is evicted. The room
list puts the built-in rooms first, so however many rooms there are, newcomers see them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from example.settings import DEFAULT_DB_PATH

__all__ = [
    "DEFAULT_MAX_ROOMS",
    "DEFAULT_MAX_ROOMS_PER_USER",
    "DEFAULT_ROOMS",
    "ChatDatabase",
    "DatabaseClosedError",
    "RoomLimitError",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]
Listener = Callable[[Row], None]
Event = Literal["room_created", "message_saved"]

DEFAULT_ROOMS: tuple[tuple[str, str], ...] = (
    ("general", "Everyone"),
    ("random", "Anything goes"),
)
DEFAULT_MAX_ROOMS = 200
DEFAULT_MAX_ROOMS_PER_USER = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id    TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_seen  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_by  TEXT,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    room       TEXT NOT NULL REFERENCES rooms(name) ON DELETE CASCADE,
    user_id    TEXT NOT NULL,
    username   TEXT NOT NULL,
    kind       TEXT NOT NULL DEFAULT 'text' CHECK (kind IN ('text', 'file')),
    text       TEXT NOT NULL DEFAULT '',
    file_name  TEXT,
    file_mime  TEXT,
    file_size  INTEGER,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rooms_created_by ON rooms (created_by);
CREATE INDEX IF NOT EXISTS messages_room_id ON messages (room, id);
CREATE TABLE IF NOT EXISTS room_presence (
    channel_name TEXT NOT NULL,
    room         TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    server_id    TEXT NOT NULL,
    joined_at    REAL NOT NULL,
    PRIMARY KEY (channel_name, room)
);
CREATE INDEX IF NOT EXISTS room_presence_room ON room_presence (room);
CREATE INDEX IF NOT EXISTS room_presence_server ON room_presence (server_id);
"""

_MESSAGE_COLUMNS = "id, room, user_id, username, kind, text, file_name, file_mime, file_size, created_at"


class DatabaseClosedError(RuntimeError):
    """The database was closed (the app is shutting down)."""


class RoomLimitError(Exception):
    """A room was not created: `limit` is "rooms" (all rooms) or "rooms_per_user" (its creator's)."""

    def __init__(self, limit: Literal["rooms", "rooms_per_user"], maximum: int) -> None:
        super().__init__(f"room limit reached: {limit} <= {maximum}")
        self.limit = limit
        self.maximum = maximum


def _message(row: sqlite3.Row) -> Row:
    is_file = row["kind"] == "file"
    return {
        "id": row["id"],
        "type": "file_message" if is_file else "chat_message",
        "room": row["room"],
        "user_id": row["user_id"],
        "username": row["username"],
        "text": row["text"],
        "timestamp": row["created_at"],
        "name": row["file_name"] if is_file else None,
        "mime_type": row["file_mime"] if is_file else None,
        "size": row["file_size"] if is_file else None,
    }


def _room(row: sqlite3.Row) -> Row:
    return {
        "room": row["name"],
        "description": row["description"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
    }


class ChatDatabase:
    """SQLite persistence of the chat. Opens lazily on first use; `close()` is final."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_rooms: int = DEFAULT_MAX_ROOMS,
        max_rooms_per_user: int = DEFAULT_MAX_ROOMS_PER_USER,
    ) -> None:
        self.path = Path(path if path is not None else os.environ.get("CHAT_DB_PATH") or DEFAULT_DB_PATH)
        self.max_rooms = max_rooms
        self.max_rooms_per_user = max_rooms_per_user
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._worker: int | None = None  # thread id of the database thread
        self._conn: sqlite3.Connection | None = None  # used only in the database thread
        self._closed = False
        self._listeners: dict[str, list[Listener]] = {"room_created": [], "message_saved": []}

    # --- plumbing ------------------------------------------------------------------------------
    def listen(self, event: Event, fn: Listener) -> None:
        """Call `fn(row)` in the database thread after each committed `event`."""
        self._listeners[event].append(fn)

    def _emit(self, event: Event, row: Row) -> None:
        for fn in tuple(self._listeners[event]):
            try:
                fn(dict(row))
            except Exception:
                logger.exception("%s listener %r failed", event, fn)

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        with self._lock:
            if self._closed:
                raise DatabaseClosedError("the chat database is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-db")
            return self._executor.submit(self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._worker = threading.get_ident()
            self._conn = self._open()
        return fn(self._conn)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.wrap_future(self._submit(fn))

    def _run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if threading.get_ident() == self._worker and self._conn is not None:
            return fn(self._conn)  # a listener calling back into the database
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._submit(fn).result()
        raise RuntimeError(
            "ChatDatabase sync methods block: call them from a threadpool (a `def` endpoint, "
            "asyncio.to_thread) or use the async method"
        )

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 10000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            logger.warning("SQLite refused WAL mode for %s (got %s)", self.path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Autocommit mode: every statement is its own transaction. The schema statements are
        # idempotent, so two servers opening one file at once both succeed (busy_timeout waits).
        conn.executescript(_SCHEMA)
        now = time.time()
        conn.executemany(
            "INSERT OR IGNORE INTO rooms (name, description, created_by, created_at) VALUES (?, ?, NULL, ?)",
            [(name, description, now) for name, description in DEFAULT_ROOMS],
        )
        return conn

    def close(self) -> None:
        """Finish pending queries, close the connection and the thread. Idempotent and final."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.submit(self._close_connection)
            executor.shutdown(wait=True)

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def closed(self) -> bool:
        return self._closed

    # --- sync API (threadpool only) ------------------------------------------------------------
    def get_recent_messages(self, room_name: str, limit: int = 50) -> list[Row]:
        """The last `limit` messages of a room, oldest first (the spec's REST handler calls this)."""
        return self._run_sync(lambda conn: self._recent(conn, room_name, limit, None))

    def journal_mode(self) -> str:
        return str(self._run_sync(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0]))

    # --- async API -----------------------------------------------------------------------------
    async def recent_messages(self, room: str, limit: int = 50, before_id: int | None = None) -> list[Row]:
        return await self._run(lambda conn: self._recent(conn, room, limit, before_id))

    @staticmethod
    def _recent(conn: sqlite3.Connection, room: str, limit: int, before_id: int | None) -> list[Row]:
        if before_id is None:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",  # noqa: S608 - constant column list
                (room, limit),
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?",  # noqa: S608 - constant column list
                (room, before_id, limit),
            ).fetchall()
        return [_message(row) for row in reversed(rows)]

    async def upsert_user(self, user_id: str, username: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT INTO users (user_id, username, created_at, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET "
                "username = excluded.username, last_seen = excluded.last_seen",
                (user_id, username, now, now),
            )

        await self._run(run)

    async def get_user(self, user_id: str) -> Row | None:
        def run(conn: sqlite3.Connection) -> Row | None:
            row = conn.execute(
                "SELECT user_id, username, created_at, last_seen FROM users WHERE user_id = ?", (user_id,)
            ).fetchone()
            return dict(row) if row is not None else None

        return await self._run(run)

    async def create_room(self, name: str, description: str, created_by: str | None) -> Row | None:
        """The new room, or None when a room of that name exists. Emits "room_created".

        Raises `RoomLimitError` when there are `max_rooms` rooms, or when `created_by` has
        created `max_rooms_per_user` (rooms created by no user, `None`, count in the total only).
        """

        def run(conn: sqlite3.Connection) -> Row | None:
            # One statement: the checks and the insert are atomic, also across processes.
            cursor = conn.execute(
                "INSERT INTO rooms (name, description, created_by, created_at) SELECT ?, ?, ?, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM rooms WHERE name = ?) "
                "AND (SELECT COUNT(*) FROM rooms) < ? "
                "AND (? IS NULL OR (SELECT COUNT(*) FROM rooms WHERE created_by = ?) < ?)",
                (
                    name,
                    description,
                    created_by,
                    time.time(),
                    name,
                    self.max_rooms,
                    created_by,
                    created_by,
                    self.max_rooms_per_user,
                ),
            )
            if cursor.rowcount == 0:
                self._raise_limit_unless_exists(conn, name)
                return None
            row = conn.execute(
                "SELECT name, description, created_by, created_at FROM rooms WHERE name = ?", (name,)
            ).fetchone()
            room = _room(row)
            self._emit("room_created", room)
            return room

        return await self._run(run)

    def _raise_limit_unless_exists(self, conn: sqlite3.Connection, name: str) -> None:
        """An insert of room `name` inserted nothing: fine when it exists, else a limit refused it."""
        if conn.execute("SELECT 1 FROM rooms WHERE name = ?", (name,)).fetchone() is not None:
            return
        if int(conn.execute("SELECT COUNT(*) FROM rooms").fetchone()[0]) >= self.max_rooms:
            raise RoomLimitError("rooms", self.max_rooms)
        raise RoomLimitError("rooms_per_user", self.max_rooms_per_user)

    async def get_room(self, name: str) -> Row | None:
        def run(conn: sqlite3.Connection) -> Row | None:
            row = conn.execute(
                "SELECT name, description, created_by, created_at FROM rooms WHERE name = ?", (name,)
            ).fetchone()
            return _room(row) if row is not None else None

        return await self._run(run)

    async def list_rooms(self, limit: int | None = None) -> list[Row]:
        """The built-in rooms in their order, then the others by name: `limit` in all
        (default `max_rooms`, so every room when the file keeps to the limit)."""
        defaults = [name for name, _ in DEFAULT_ROOMS]
        order = " ".join("WHEN ? THEN ?" for _ in defaults)

        def run(conn: sqlite3.Connection) -> list[Row]:
            rows = conn.execute(
                "SELECT name, description, created_by, created_at FROM rooms "  # noqa: S608 - placeholders only
                f"ORDER BY CASE name {order} ELSE ? END, name LIMIT ?",
                (
                    *(value for index, name in enumerate(defaults) for value in (name, index)),
                    len(defaults),
                    limit if limit is not None else self.max_rooms,
                ),
            ).fetchall()
            return [_room(row) for row in rows]

        return await self._run(run)

    async def save_message(
        self,
        room: str,
        user_id: str,
        username: str,
        text: str = "",
        *,
        file_name: str | None = None,
        file_mime: str | None = None,
        file_size: int | None = None,
    ) -> Row:
        """Store a message (a file when `file_name` is given) and return it. Emits "message_saved"."""
        kind = "file" if file_name is not None else "text"

        def run(conn: sqlite3.Connection) -> Row:
            cursor = conn.execute(
                "INSERT INTO messages (room, user_id, username, kind, text, file_name, file_mime, file_size, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (room, user_id, username, kind, text, file_name, file_mime, file_size, time.time()),
            )
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?",  # noqa: S608 - constant column list
                (cursor.lastrowid,),
            ).fetchone()
            message = _message(row)
            self._emit("message_saved", message)
            return message

        return await self._run(run)

    async def count_messages(self, room: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM messages WHERE room = ?", (room,)).fetchone()[0])

        return await self._run(run)

    # --- presence: which connection of which user is in which room ----------------------------
    async def add_presence(self, channel_name: str, room: str, user_id: str, server_id: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO room_presence (channel_name, room, user_id, server_id, joined_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (channel_name, room, user_id, server_id, time.time()),
            )
        )

    async def remove_presence(self, channel_name: str, room: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "DELETE FROM room_presence WHERE channel_name = ? AND room = ?", (channel_name, room)
            )
        )

    async def remove_channel_presence(self, channel_name: str) -> None:
        await self._run(
            lambda conn: conn.execute("DELETE FROM room_presence WHERE channel_name = ?", (channel_name,))
        )

    async def clear_server_presence(self, server_id: str) -> None:
        """Forget every presence row of a server (at its start and its stop)."""
        await self._run(
            lambda conn: conn.execute("DELETE FROM room_presence WHERE server_id = ?", (server_id,))
        )

    async def room_presence(self, room: str) -> list[tuple[str, str]]:
        """(channel_name, user_id) of every connection recorded in a room, on every server."""

        def run(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(
                "SELECT channel_name, user_id FROM room_presence WHERE room = ?", (room,)
            ).fetchall()
            return [(row["channel_name"], row["user_id"]) for row in rows]

        return await self._run(run)
