"""The chat's security and abuse bounds: who reads admin rooms, REST authentication, and a
limit on everything a client can make the server hold (scheduled announcements, rooms,
typing fan-out). Each test names the finding it closes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from example.database import ChatDatabase
from example.typing_indicators import TypingCoalescer, TypingSend
from tests.example.conftest import ChatFactory, RunningChat
from tests.example.support import ChatClient
from tests.support.eventually import eventually

TOKENS = {"alice": "alice-token", "bob": "bob-token", "carol": "carol-token"}
SECURED: dict[str, Any] = {
    "CHAT_ACCESS_TOKENS": ",".join(f"{user}:{token}" for user, token in TOKENS.items()),
    "CHAT_ADMINS": "alice",
}
SECRET = "the launch code is 0000"


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


async def client(chat: RunningChat, user: str) -> ChatClient:
    return await ChatClient.open(chat.ws_url, user, token=TOKENS[user])


async def in_room(chat: RunningChat, user: str, room: str, *, token: bool = True) -> ChatClient:
    member = await client(chat, user) if token else await ChatClient.open(chat.ws_url, user)
    await member.send("join_room", room=room)
    await member.expect("room_users", room=room)
    return member


@pytest.fixture
async def secured(chat_factory: ChatFactory) -> AsyncIterator[RunningChat]:
    async with chat_factory(**SECURED) as running:
        yield running


@pytest.fixture
async def http(secured: RunningChat) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=secured.http_url, timeout=10) as session:
        yield session


async def admin_room_with_secret(chat: RunningChat) -> ChatClient:
    alice = await client(chat, "alice")
    await alice.send("create_room", room="admin-ops")
    await alice.expect("room_users", room="admin-ops")
    await alice.send("chat_message", room="admin-ops", text=SECRET)
    await alice.expect("chat_message", text=SECRET)
    await alice.sync()
    return alice


# --- admin rooms: their history is for admins only ---------------------------------------------


async def test_socket_history_of_an_admin_room_is_refused_to_non_admins(secured: RunningChat) -> None:
    alice = await admin_room_with_secret(secured)
    bob = await client(secured, "bob")
    await bob.send("get_message_history", room="admin-ops")
    error = await bob.expect_error("ROOM_FORBIDDEN")
    assert error["category"] == "authorization" and error["details"]["room"] == "admin-ops"
    assert SECRET not in json.dumps(await bob.sync())
    # the same answer whether or not the admin room exists: nothing to probe
    await bob.send("get_message_history", room="admin-nothing-here")
    await bob.expect_error("ROOM_FORBIDDEN")

    await alice.send("get_message_history", room="admin-ops")
    history = await alice.expect("message_history", room="admin-ops")
    assert [m["text"] for m in history["messages"]] == [SECRET]


async def test_rest_history_of_an_admin_room_needs_an_admins_token(
    secured: RunningChat, http: httpx.AsyncClient
) -> None:
    await admin_room_with_secret(secured)
    anonymous = await http.get("/api/rooms/admin-ops/messages")
    assert anonymous.status_code == 401 and SECRET not in anonymous.text
    assert anonymous.json()["error_code"] == "AUTHENTICATION_REQUIRED"
    as_bob = await http.get("/api/rooms/admin-ops/messages", headers=bearer("bob"))
    assert as_bob.status_code == 403 and SECRET not in as_bob.text
    assert as_bob.json()["error_code"] == "ROOM_FORBIDDEN"
    as_alice = await http.get("/api/rooms/admin-ops/messages", headers=bearer("alice"))
    assert as_alice.status_code == 200
    assert [m["text"] for m in as_alice.json()["messages"]] == [SECRET]
    # ordinary rooms: any authenticated user
    assert (await http.get("/api/rooms/general/messages", headers=bearer("bob"))).status_code == 200


async def test_without_tokens_an_anonymous_caller_cannot_read_admin_rooms(chat_factory: ChatFactory) -> None:
    """Tokens off: the REST API stays open (no identity at all), except admin-only rooms."""
    async with chat_factory(CHAT_ADMINS="alice") as chat:
        alice = await in_room(chat, "alice", "admin-ops", token=False)
        await alice.send("chat_message", room="admin-ops", text=SECRET)
        await alice.expect("chat_message", text=SECRET)
        async with httpx.AsyncClient(base_url=chat.http_url, timeout=10) as http:
            refused = await http.get("/api/rooms/admin-ops/messages")
            assert refused.status_code == 403 and SECRET not in refused.text
            assert refused.json()["error_code"] == "ROOM_FORBIDDEN"
            posted = await http.post("/api/room/admin-ops/message", json={"text": "injected"})
            assert posted.status_code == 403
            grouped = await http.post("/api/group/room.admin-ops/message", json={"data": {"x": 1}})
            assert grouped.status_code == 403
            assert (await http.get("/api/rooms/general/messages")).status_code == 200  # open as before
        frames = await alice.sync()
        assert not [f for f in frames if f["type"] in ("chat_message", "background_update")], frames


# --- the REST API is authenticated with the socket's tokens ------------------------------------

PROTECTED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/rooms/general/messages", None),
    ("POST", "/api/announce", {"message": "hi"}),
    ("POST", "/api/room/general/message", {"text": "hi"}),
    ("POST", "/api/user/bob/notification", {"text": "hi"}),
    ("POST", "/api/group/room.general/message", {"data": {"x": 1}}),
]


async def test_every_rest_endpoint_but_the_public_ones_needs_a_token(http: httpx.AsyncClient) -> None:
    for method, path, body in PROTECTED:
        for headers, code in (
            ({}, "AUTHENTICATION_REQUIRED"),
            ({"Authorization": "Bearer wrong"}, "AUTHENTICATION_FAILED"),
            ({"Authorization": f"Basic {TOKENS['bob']}"}, "AUTHENTICATION_REQUIRED"),
        ):
            response = await http.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error_code"] == code, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
        # the socket's other places for a token are not credentials here (logs, CSRF)
        in_query = await http.request(method, path, json=body, params={"token": TOKENS["bob"]})
        assert in_query.status_code == 401, (method, path)
        with_cookie = await http.request(
            method, path, json=body, headers={"Cookie": f"token={TOKENS['bob']}"}
        )
        assert with_cookie.status_code == 401, (method, path)
        accepted = await http.request(method, path, json=body, headers=bearer("bob"))
        assert accepted.status_code == 200, (method, path, accepted.text)
    for public in ("/", "/api/status", "/openapi.json", "/docs"):
        assert (await http.get(public)).status_code == 200, public


async def test_rest_room_message_is_sent_as_the_tokens_user(
    secured: RunningChat, http: httpx.AsyncClient
) -> None:
    carol = await in_room(secured, "carol", "general")
    forged = await http.post("/api/room/general/message", json={"text": "forged", "username": "alice"})
    assert forged.status_code == 401
    impersonating = await http.post(
        "/api/room/general/message", json={"text": "forged", "username": "alice"}, headers=bearer("bob")
    )
    assert impersonating.status_code == 403
    assert impersonating.json()["error_code"] == "USERNAME_MISMATCH"
    own = await http.post("/api/room/general/message", json={"text": "from bob"}, headers=bearer("bob"))
    assert own.status_code == 200 and own.json()["message"]["user_id"] == "bob"
    named = await http.post(
        "/api/room/general/message", json={"text": "bob again", "username": "bob"}, headers=bearer("bob")
    )
    assert named.status_code == 200
    received = [f for f in await carol.sync() if f["type"] == "chat_message"]
    assert [(f["user_id"], f["text"]) for f in received] == [("bob", "from bob"), ("bob", "bob again")]
    stored = await secured.app.state.db.recent_messages("general", 10)
    assert [m["user_id"] for m in stored] == ["bob", "bob"]


# --- scheduled announcements: a cap on how many and how far ahead --------------------------------


async def test_scheduled_announcements_are_capped_in_number_and_delay(chat_factory: ChatFactory) -> None:
    async with (
        chat_factory(
            **SECURED,
            CHAT_MAX_SCHEDULED_ANNOUNCEMENTS=5,
            CHAT_MAX_SCHEDULED_PER_USER=3,
            CHAT_MAX_ANNOUNCE_DELAY=60,
        ) as chat,
        httpx.AsyncClient(base_url=chat.http_url, timeout=10) as http,
    ):
        events = chat.app.state.events

        async def schedule(user: str | None, delay: float = 50) -> httpx.Response:
            headers = bearer(user) if user is not None else {}
            return await http.post(
                "/api/announce", json={"message": "m", "delay_seconds": delay}, headers=headers
            )

        assert (await schedule(None)).status_code == 401
        too_far = await schedule("bob", delay=3600)
        assert too_far.status_code == 400 and too_far.json()["error_code"] == "DELAY_TOO_LONG"
        assert "60" in too_far.json()["detail"]
        bad = await http.post(
            "/api/announce", json={"message": "m", "delay_seconds": "soon"}, headers=bearer("bob")
        )
        assert bad.status_code == 422

        assert [(await schedule("bob")).status_code for _ in range(3)] == [200, 200, 200]
        per_user = await schedule("bob")
        assert per_user.status_code == 429 and per_user.json()["error_code"] == "TOO_MANY_SCHEDULED"
        assert 0 < int(per_user.headers["retry-after"]) <= 60
        assert [(await schedule("carol")).status_code for _ in range(3)] == [200, 200, 429]
        full = await schedule("alice")
        assert full.status_code == 429 and full.json()["error_code"] == "TOO_MANY_SCHEDULED"
        assert events.scheduled_count() == 5  # 2 + 3 of the 3,000 the finding scheduled

        # an immediate announcement is not held, so the cap does not apply to it
        now = await http.post("/api/announce", json={"message": "now"}, headers=bearer("alice"))
        assert now.status_code == 200 and now.json()["status"] == "sent"


async def test_a_sent_announcement_frees_its_place(chat_factory: ChatFactory) -> None:
    async with (
        chat_factory(**SECURED, CHAT_MAX_SCHEDULED_ANNOUNCEMENTS=1) as chat,
        httpx.AsyncClient(base_url=chat.http_url, timeout=10) as http,
    ):
        bob = await client(chat, "bob")
        first = await http.post(
            "/api/announce", json={"message": "soon", "delay_seconds": 0.1}, headers=bearer("bob")
        )
        assert first.status_code == 200
        await bob.expect("announcement", message="soon")
        await eventually(lambda: chat.app.state.events.scheduled_count() == 0, what="place freed")
        again = await http.post(
            "/api/announce", json={"message": "again", "delay_seconds": 0.1}, headers=bearer("bob")
        )
        assert again.status_code == 200


# --- rooms: a total cap, a per-user cap, built-in rooms listed first -----------------------------


def outcome(frames: list[dict[str, Any]]) -> str:
    """What a create_room came to: an error code, or "created" (the creator joined it)."""
    errors = [f["error_code"] for f in frames if f["type"] == "error"]
    if errors:
        return str(errors[0])
    assert any(f["type"] == "room_joined" for f in frames), frames
    return "created"


async def test_room_creation_is_capped_and_the_built_in_rooms_stay_listed_first(
    chat_factory: ChatFactory,
) -> None:
    async with chat_factory(CHAT_MAX_ROOMS=7, CHAT_MAX_ROOMS_PER_USER=2) as chat:
        outcomes: list[str] = []
        for user in ("throwaway-1", "throwaway-2", "throwaway-3"):
            creator = await ChatClient.open(chat.ws_url, user)
            for index in range(3):
                await creator.send("create_room", room=f"a-{user[-1]}-{index}")
                outcomes.append(outcome(await creator.sync()))
        assert outcomes == [
            "created", "created", "USER_ROOM_LIMIT_REACHED",
            "created", "created", "USER_ROOM_LIMIT_REACHED",
            "created", "ROOM_LIMIT_REACHED", "ROOM_LIMIT_REACHED",
        ]  # fmt: skip

        newcomer = await ChatClient.open(chat.ws_url, "newcomer")
        names = [room["room"] for room in newcomer.welcome["rooms"]]
        assert names[:2] == ["general", "random"] and len(names) == 7
        await newcomer.send("join_room", room="brand-new")
        error = await newcomer.expect_error("ROOM_LIMIT_REACHED")
        assert error["details"] == {"field": "data.room", "room": "brand-new", "max_rooms": 7}
        assert await chat.app.state.db.get_room("brand-new") is None


async def test_a_database_with_more_rooms_than_the_list_shows_lists_built_in_rooms_first(
    chat_factory: ChatFactory, tmp_path: Path
) -> None:
    db_path = tmp_path / "crowded.db"
    crowded = ChatDatabase(db_path, max_rooms=1000)
    try:
        for index in range(30):  # all sort before "general"
            assert await crowded.create_room(f"a{index:03d}", "", f"throwaway-{index}") is not None
    finally:
        crowded.close()
    async with chat_factory(db_path=db_path, CHAT_MAX_ROOMS=10) as chat:
        alice = await ChatClient.open(chat.ws_url, "alice")
        names = [room["room"] for room in alice.welcome["rooms"]]
        assert names == ["general", "random", *(f"a{index:03d}" for index in range(8))]
        await alice.send("list_rooms")
        assert [r["room"] for r in (await alice.expect("rooms_list"))["rooms"]] == names


async def test_join_room_creates_a_missing_room_but_never_an_admin_room_for_others(
    secured: RunningChat,
) -> None:
    bob = await client(secured, "bob")
    carol = await client(secured, "carol")
    await bob.send("join_room", room="fresh")
    await bob.expect("room_joined", room="fresh")
    info = await bob.expect("room_info", room="fresh")
    assert info["created_by"] == "bob" and info["description"] == ""
    assert (await bob.expect("message_history", room="fresh"))["messages"] == []
    assert (await carol.expect("room_created", room="fresh"))["user_id"] == "bob"
    # joining it again, or from another user, joins the same room
    await carol.send("join_room", room="fresh")
    assert (await carol.expect("room_users", room="fresh"))["users"] == [
        {"user_id": "bob", "username": "bob"},
        {"user_id": "carol", "username": "carol"},
    ]

    for kind in ("join_room", "create_room"):
        await bob.send(kind, room="admin-squat")
        error = await bob.expect_error("JOIN_FORBIDDEN")
        assert error["category"] == "authorization"
    assert await secured.app.state.db.get_room("admin-squat") is None
    assert not [f for f in await carol.sync() if f["type"] == "room_created"]

    alice = await client(secured, "alice")
    await alice.send("join_room", room="admin-new")
    assert (await alice.expect("room_info", room="admin-new"))["created_by"] == "alice"


# --- typing: coalesced per (user, room), at most one fan-out per interval ------------------------


async def test_a_typing_flood_reaches_the_others_once_per_interval(chat_factory: ChatFactory) -> None:
    async with chat_factory(CHAT_TYPING_INTERVAL=60) as chat:
        alice = await in_room(chat, "alice", "general", token=False)
        bob = await in_room(chat, "bob", "general", token=False)
        await bob.send("join_room", room="random")
        await bob.expect("room_users", room="random")
        await alice.send("join_room", room="random")
        await alice.expect("room_users", room="random")
        await alice.sync()
        for index in range(500):
            await bob.send("typing_start" if index % 2 == 0 else "typing_stop", room="general")
        await bob.send("typing_start", room="random")  # another room: its own budget
        await bob.sync()  # every typing message has been handled
        typing = [f for f in await alice.sync() if f["type"].startswith("user_typing")]
        assert [(f["type"], f["room"]) for f in typing] == [
            ("user_typing_start", "general"),
            ("user_typing_start", "random"),
        ]
        assert chat.app.state.typing.stats()["coalesced"] == 499


async def test_the_latest_typing_state_arrives_after_the_interval(chat_factory: ChatFactory) -> None:
    async with chat_factory(CHAT_TYPING_INTERVAL=0.2) as chat:
        alice = await in_room(chat, "alice", "general", token=False)
        bob = await in_room(chat, "bob", "general", token=False)
        typing = chat.app.state.typing
        await bob.send("typing_start", room="general")
        await bob.send("typing_stop", room="general")
        await alice.expect("user_typing_start", user_id="bob")
        await alice.expect("user_typing_stop", user_id="bob")  # held, then sent: the state is right
        await eventually(lambda: typing.stats()["entries"] == 0, what="the entry expired")
        assert not [f for f in await alice.sync() if f["type"].startswith("user_typing")]


Sent = list[tuple[str, str, bool, str]]


def recorder(sent: Sent, fail_after: int | None = None) -> TypingSend:
    """A fan-out that records, never yields to the loop, and fails from call `fail_after` on."""

    async def send(room: str, user_id: str, typing: bool, exclude: str) -> None:
        if fail_after is not None and len(sent) >= fail_after:
            raise ConnectionError("broker down")
        sent.append((room, user_id, typing, exclude))

    return send


async def test_a_state_back_to_what_the_room_saw_is_not_sent_again() -> None:
    sent: Sent = []
    typing = TypingCoalescer(recorder(sent), interval=0.05, max_entries=10)
    # No offer yields to the loop, so all three land within one interval, whatever the machine.
    for state in (True, False, True):
        await typing.offer("bob", "general", state, "bob-1")
    await eventually(lambda: typing.stats()["entries"] == 0, what="the entry expired")
    assert sent == [("general", "bob", True, "bob-1")]
    assert typing.stats() == {"entries": 0, "sent": 1, "coalesced": 2, "dropped": 0}


async def test_a_failed_held_send_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    sent: Sent = []
    typing = TypingCoalescer(recorder(sent, fail_after=1), interval=0.05, max_entries=10)
    await typing.offer("bob", "general", True, "bob-1")
    await typing.offer("bob", "general", False, "bob-2")
    await eventually(lambda: typing.stats()["entries"] == 0, what="the entry expired")
    assert sent == [("general", "bob", True, "bob-1")]
    assert "typing fan-out to general for bob failed" in caplog.text
    await typing.aclose()


async def test_typing_state_is_bounded_and_drops_new_typers_when_full(chat_factory: ChatFactory) -> None:
    async with chat_factory(CHAT_TYPING_INTERVAL=60, CHAT_TYPING_MAX_ENTRIES=2) as chat:
        watcher = await ChatClient.open(chat.ws_url, "watcher")
        typists = []
        for user in ("t1", "t2", "t3"):
            typists.append(await in_room(chat, user, "general", token=False))
        await watcher.send("join_room", room="general")
        await watcher.expect("room_users", room="general")
        await watcher.sync()
        for typist in typists:
            await typist.send("typing_start", room="general")
            await typist.sync()
        started = [f["user_id"] for f in await watcher.sync() if f["type"] == "user_typing_start"]
        assert started == ["t1", "t2"]
        stats = chat.app.state.typing.stats()
        assert stats["entries"] == 2 and stats["dropped"] == 1
        # a dropped typing event is never an error for the sender
        assert not [f for f in await typists[2].sync() if f["type"] == "error"]


async def test_typing_timers_end_with_the_app(chat_factory: ChatFactory) -> None:
    async with chat_factory(CHAT_TYPING_INTERVAL=60) as chat:
        bob = await in_room(chat, "bob", "general", token=False)
        await bob.send("typing_start", room="general")
        await bob.send("typing_stop", room="general")
        await bob.sync()
        typing = chat.app.state.typing
        assert typing.stats()["entries"] == 1
    assert typing.stats()["entries"] == 0
