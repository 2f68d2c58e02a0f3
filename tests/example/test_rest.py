"""The chat's REST API over real HTTP, with WebSocket clients seeing what it sends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.example.conftest import RunningChat
from tests.example.support import ChatClient


@pytest.fixture
async def http(chat: RunningChat) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=chat.http_url, timeout=10) as client:
        yield client


async def in_general(chat: RunningChat, user: str) -> ChatClient:
    client = await ChatClient.open(chat.ws_url, user)
    await client.send("join_room", room="general")
    await client.expect("room_users", room="general")
    return client


async def test_room_history_endpoint_validates_limit(chat: RunningChat, http: httpx.AsyncClient) -> None:
    alice = await in_general(chat, "alice")
    for text in ("a", "b", "c"):
        await alice.send("chat_message", room="general", text=text)
        await alice.expect("chat_message", text=text)
    response = await http.get("/api/rooms/general/messages", params={"limit": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["room"] == "general" and body["count"] == 2
    assert [m["text"] for m in body["messages"]] == ["b", "c"]
    assert (await http.get("/api/rooms/general/messages")).json()["count"] == 3
    for bad in (0, 1001, -5):
        response = await http.get("/api/rooms/general/messages", params={"limit": bad})
        assert response.status_code == 400, bad
        assert response.json() == {
            "detail": "Limit must be between 1 and 1000",
            "error_code": "INVALID_LIMIT",
        }
    assert (await http.get("/api/rooms/empty-room/messages")).json() == {
        "room": "empty-room",
        "messages": [],
        "count": 0,
    }


async def test_announce_now_and_later(chat: RunningChat, http: httpx.AsyncClient) -> None:
    alice = await ChatClient.open(chat.ws_url, "alice")
    bob = await ChatClient.open(chat.ws_url, "bob")
    response = await http.post("/api/announce", json={"message": "Maintenance at 18:00"})
    assert response.json() == {"status": "sent", "delay_seconds": 0}
    for client in (alice, bob):
        frame = await client.expect("announcement")
        assert frame["message"] == "Maintenance at 18:00" and frame["source"] == "api"

    response = await http.post("/api/announce", json={"message": "later", "delay_seconds": 0.2})
    assert response.json() == {"status": "scheduled", "delay_seconds": 0.2}
    frame = await bob.expect("announcement", message="later")
    assert frame["source"] == "background_task"

    assert (await http.post("/api/announce", json={"message": ""})).status_code == 422
    assert (await http.post("/api/announce", json={"message": "x", "delay_seconds": -1})).status_code == 422


async def test_room_message_is_stored_and_sent_to_members(chat: RunningChat, http: httpx.AsyncClient) -> None:
    alice = await in_general(chat, "alice")
    outsider = await ChatClient.open(chat.ws_url, "carol")
    response = await http.post(
        "/api/room/general/message", json={"text": "deploy done", "username": "ci-bot"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "sent" and body["message"]["text"] == "deploy done"
    frame = await alice.expect("chat_message")
    assert (
        frame["user_id"] == "ci-bot"
        and frame["text"] == "deploy done"
        and frame["id"] == body["message"]["id"]
    )
    assert not [f for f in await outsider.sync() if f["type"] == "chat_message"]
    history = (await http.get("/api/rooms/general/messages")).json()
    assert [m["text"] for m in history["messages"]] == ["deploy done"]

    missing = await http.post("/api/room/ghost/message", json={"text": "hello"})
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no room named 'ghost'", "error_code": "ROOM_NOT_FOUND"}
    assert (await http.post("/api/room/bad%20name/message", json={"text": "x"})).status_code == 422
    assert (await http.post("/api/room/general/message", json={"text": "x", "extra": 1})).status_code == 422


async def test_user_notification(chat: RunningChat, http: httpx.AsyncClient) -> None:
    bob_1 = await ChatClient.open(chat.ws_url, "bob")
    bob_2 = await ChatClient.open(chat.ws_url, "bob")
    response = await http.post("/api/user/bob/notification", json={"text": "stand-up", "title": "Reminder"})
    assert response.json() == {"status": "sent", "user_id": "bob", "delivered": 2}
    for client in (bob_1, bob_2):
        frame = await client.expect("notification")
        assert frame["title"] == "Reminder" and frame["text"] == "stand-up" and frame["user_id"] == "bob"
    response = await http.post("/api/user/nobody/notification", json={"text": "hello"})
    assert response.json()["delivered"] == 0


async def test_group_message(chat: RunningChat, http: httpx.AsyncClient) -> None:
    alice = await in_general(chat, "alice")
    response = await http.post("/api/group/room.general/message", json={"data": {"build": "passed"}})
    assert response.json() == {"status": "sent", "group": "room.general"}
    frame = await alice.expect("background_update")
    assert frame["group"] == "room.general" and frame["data"] == {"build": "passed"}
    assert (await http.post("/api/group/no%20spaces/message", json={"data": {}})).status_code == 422


async def test_status(chat: RunningChat, http: httpx.AsyncClient) -> None:
    await in_general(chat, "alice")
    await ChatClient.open(chat.ws_url, "bob")
    body = (await http.get("/api/status")).json()
    assert body["status"] == "ok" and body["backend_type"] == "memory"
    assert body["server_id"] == chat.app.state.manager.server_id
    assert body["connections"] == 2 and body["local_connections"] == 2 and body["users"] == 2
    assert body["groups"] == 1
    assert body["stats"]["connections_opened"] >= 2


async def test_every_endpoint_is_in_openapi_with_models(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    paths = spec["paths"]
    expected = {
        ("get", "/api/rooms/{room_name}/messages"): None,
        ("post", "/api/announce"): "AnnounceIn",
        ("post", "/api/room/{room_name}/message"): "RoomMessageIn",
        ("post", "/api/user/{user_id}/notification"): "NotificationIn",
        ("post", "/api/group/{group_name}/message"): "GroupMessageIn",
        ("get", "/api/status"): None,
    }
    for (method, path), request_model in expected.items():
        operation = paths[path][method]
        response_schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert response_schema.get("$ref", "").startswith("#/components/schemas/"), (path, response_schema)
        if request_model is not None:
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            assert body["$ref"] == f"#/components/schemas/{request_model}", path
    assert "400" in paths["/api/rooms/{room_name}/messages"]["get"]["responses"]


async def test_html_client_is_served(http: httpx.AsyncClient) -> None:
    response = await http.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for element in (
        'id="messages"',
        'id="room-list"',
        'id="user-list"',
        'id="typing-indicator"',
        'id="file-input"',
    ):
        assert element in page
    # user text is only ever inserted as text
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page


async def test_every_refusal_carries_an_error_code(http: httpx.AsyncClient) -> None:
    """docs/protocol.md: refusals are JSON `{"detail": ..., "error_code": ...}`, every one."""
    invalid = await http.post("/api/announce", json={"message": ""})
    assert invalid.status_code == 422
    body = invalid.json()
    assert body["error_code"] == "INVALID_REQUEST"
    assert [error["loc"] for error in body["detail"]] == [["body", "message"]]
    not_an_integer = await http.get("/api/rooms/general/messages", params={"limit": "abc"})
    assert not_an_integer.status_code == 422 and not_an_integer.json()["error_code"] == "INVALID_REQUEST"
    unknown = await http.get("/api/no-such-endpoint")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "Not Found", "error_code": "NOT_FOUND"}
    wrong_method = await http.delete("/api/status")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error_code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in wrong_method.headers["allow"]
