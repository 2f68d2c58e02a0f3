"""The HTML client in a real browser: Playwright (async API) driving Debian's Chromium.

Needs `pip install playwright` (the Python package only; no `playwright install`) and
`apt-get install chromium`. Without /usr/bin/chromium the test fails, it does not skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.example.conftest import ChatFactory, RunningChat
from tests.support.eventually import eventually

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail(
            "the playwright Python package is missing: `pip install playwright` (no `playwright install`)"
        )
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
async def chat(chat_factory: ChatFactory) -> AsyncIterator[RunningChat]:
    async with chat_factory() as running:
        yield running


async def open_as(browser: Any, chat: RunningChat, user: str) -> Any:
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1100, "height": 700})
    page = await context.new_page()
    await page.goto(chat.http_url)
    await page.fill("#username", user)
    await page.click("#connect-btn")
    await expect(page.locator("#status")).to_have_text(f"connected as {user}", timeout=10_000)
    await expect(page.locator("#room-title")).to_have_text("#general", timeout=10_000)  # joined by default
    return page


async def test_two_users_chat_in_the_browser(browser: Any, chat: RunningChat, tmp_path: Path) -> None:
    from playwright.async_api import expect

    alice = await open_as(browser, chat, "alice")
    bob = await open_as(browser, chat, "bob")
    await expect(alice.locator("#user-list li")).to_have_count(2)
    await expect(bob.locator("#user-list li")).to_have_count(2)

    # typing shows on the other page, then the message arrives and the indicator clears
    await alice.locator("#message-input").press_sequentially("Hello Bob")
    await expect(bob.locator("#typing-indicator")).to_have_text("alice is typing…")
    await alice.click("#send-btn")
    await expect(bob.locator("#messages .msg").last).to_contain_text("Hello Bob")
    await expect(bob.locator("#typing-indicator")).to_have_text("")

    # user text is shown as text, never interpreted as HTML
    hostile = '<img src=x onerror="document.title=1">'
    await bob.fill("#message-input", hostile)
    await bob.click("#send-btn")
    await expect(alice.locator("#messages .msg").last).to_contain_text(hostile)
    assert await alice.locator("#messages img").count() == 0

    # an error frame is shown to the user
    await alice.fill("#new-room-name", "general")
    await alice.click("#create-room-btn")
    await expect(alice.locator("#errors .toast")).to_contain_text("ROOM_EXISTS")

    # private message from the user list
    await bob.locator("#user-list li[data-user=alice]").click()
    await bob.fill("#pm-text", "just between us")
    await bob.click("#pm-send")
    await expect(alice.locator("#private-messages")).to_contain_text("just between us")

    screenshot = tmp_path / "chat-bob.png"
    await bob.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 1000

    # a dropped connection: the page reconnects with backoff and joins its rooms again
    manager = chat.app.state.manager
    [old] = await manager.get_user_connections("alice")
    await manager.disconnect(old.channel_name, 1012)

    async def reconnected() -> bool:
        channels = [c.channel_name for c in await manager.get_user_connections("alice")]
        return channels not in ([], [old.channel_name])

    await eventually(reconnected, timeout=15, what="alice reconnected")
    await expect(alice.locator("#status")).to_have_text(re.compile("connected as alice"), timeout=15_000)
    await bob.fill("#message-input", "welcome back")
    await bob.click("#send-btn")
    await expect(alice.locator("#messages .msg").last).to_contain_text("welcome back", timeout=10_000)
    await alice.screenshot(path=str(tmp_path / "chat-alice.png"), full_page=True)


async def test_page_reconnects_and_recovers_what_it_missed(browser: Any, chat: RunningChat) -> None:
    """Rooms are history groups: a page whose socket was dropped reconnects by itself, re-joins
    with `since` and shows what was sent meanwhile exactly once, in order."""
    from playwright.async_api import WebSocketRoute, expect

    alice = await open_as(browser, chat, "alice")
    bob = await open_as(browser, chat, "bob")
    await expect(alice.locator("#user-list li")).to_have_count(2)
    await bob.fill("#message-input", "before the drop")
    await bob.click("#send-btn")
    chat_lines = "#messages .msg:not(.system)"
    await expect(alice.locator(chat_lines)).to_have_count(1)

    # Alice's next sockets go through this route: refused while `held`, so that all five
    # messages are sent while she is away, then passed to the server.
    held = True

    async def route(ws: WebSocketRoute) -> None:
        if held:
            await ws.close(code=1013, reason="held by the test")
        else:
            ws.connect_to_server()

    await alice.route_web_socket(re.compile(r"/ws/alice$"), route)

    manager = chat.app.state.manager
    [old] = await manager.get_user_connections("alice")
    await manager.disconnect(old.channel_name, 1012)  # the server drops her socket
    await expect(alice.locator("#status")).to_have_text(re.compile(r"connection lost"), timeout=10_000)

    texts = [f"missed {n}" for n in range(1, 6)]
    for text in texts:
        await bob.fill("#message-input", text)
        await bob.click("#send-btn")
    await expect(bob.locator(chat_lines).last).to_contain_text("missed 5", timeout=10_000)
    assert await manager.get_user_connections("alice") == []
    assert "missed" not in (await alice.locator("#messages").text_content() or "")

    held = False  # the page's backoff (at most 10 s) brings her back by itself
    await expect(alice.locator("#status")).to_have_text("connected as alice", timeout=30_000)
    await expect(alice.locator("#room-notice")).to_have_text("recovered 5 messages", timeout=10_000)
    lines = alice.locator(chat_lines)
    await expect(lines).to_have_count(6)
    shown = await lines.evaluate_all("nodes => nodes.map((n) => n.lastChild.textContent)")
    assert shown == ["before the drop", *texts]

    # and live messages keep coming, still once each
    await bob.fill("#message-input", "welcome back")
    await bob.click("#send-btn")
    await expect(lines).to_have_count(7)
    assert await lines.last.evaluate("n => n.lastChild.textContent") == "welcome back"
