"""The middleware chain behind the README's endpoint, through the test kit's Communicator:
order, short-circuit, errors that close, and the in-process rate limit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from fastapi_channels import Message
from fastapi_channels.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BaseError,
    CloseCode,
    MessageError,
    RateLimitError,
    ValidationError,
)
from fastapi_channels.middleware import MiddlewareChain, RateLimitMiddleware, ValidationMiddleware
from fastapi_channels.testing import free_port
from tests.consumer.app import EXCLUDED_TYPES, ChatConsumer, DropType, RaiseOn, Tag
from tests.consumer.support import (
    Harness,
    expect_error,
    frames_until_closed,
    replies_before_echo,
    request,
    roundtrip,
)


# --- order and short-circuit -------------------------------------------------------------------------
@pytest.mark.parametrize("operator", [">>", "|"])
async def test_chain_runs_in_order_and_none_stops_the_message(harness: Harness, operator: str) -> None:
    log: list[tuple[str, str]] = []
    a, b, c = Tag("a", log), DropType("drop"), Tag("c", log)
    d = Tag("d", log)
    chain = (a >> b >> c) >> d if operator == ">>" else (a | b | c) | d
    assert isinstance(chain, MiddlewareChain) and len(chain.steps) == 4  # flat, not nested

    server = await harness.start(chain)
    client, _ = await harness.client(server)

    echo = await request(client, "echo", type="echo", data=1)
    assert echo["metadata"]["trail"] == ["a", "c", "d"]  # the order the steps saw the message
    assert log == [("a", "echo"), ("c", "echo"), ("d", "echo")]

    log.clear()
    await client.send_json_to({"type": "drop", "data": 2})  # b returns None: c, d, receive never see it
    assert await replies_before_echo(client) == []
    assert ("c", "drop") not in log and ("d", "drop") not in log
    assert ("a", "drop") in log
    assert server.events.on_disconnect == []


async def test_a_step_can_change_the_message(harness: Harness) -> None:
    class Upper(Tag):
        async def process(self, message: Message, connection: object, consumer: object) -> Message | None:
            message.data = str(message.data).upper()
            return Message(type="echo", data=message.data, metadata={"rewritten_from": message.type})

    server = await harness.start(Upper("upper") >> Tag("after"))
    client, _ = await harness.client(server)
    reply = await request(client, "echo", type="shout", data="hello")
    assert reply["data"] == "HELLO"
    assert reply["metadata"] == {"rewritten_from": "shout", "trail": ["after"]}


# --- errors from middleware --------------------------------------------------------------------------
CLOSING: list[tuple[Callable[[], BaseError], int, str, str]] = [
    (lambda: AuthenticationError("who are you"), 4001, "AUTHENTICATION_FAILED", "authentication"),
    (lambda: AuthorizationError("no", disconnect=True), 4003, "FORBIDDEN", "authorization"),
    (lambda: RateLimitError("slow down", disconnect=True, retry_after=1.0), 4029, "RATE_LIMIT_EXCEEDED",
     "rate_limit"),
    (lambda: ValidationError("bad", disconnect=True), 1008, "VALIDATION_ERROR", "validation"),
    (lambda: MessageError("bad kind", disconnect=True), 1003, "MESSAGE_ERROR", "message"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make_error", "close_code", "error_code", "category"),
    CLOSING,
    ids=["authentication-4001", "authorization-4003", "rate-limit-4029", "validation-1008", "message-1003"],
)
async def test_an_error_that_disconnects_sends_its_frame_then_closes_with_its_code(
    harness: Harness, make_error: Callable[[], BaseError], close_code: int, error_code: str, category: str
) -> None:
    log: list[tuple[str, str]] = []
    server = await harness.start(Tag("first", log) >> RaiseOn("secret", make_error) >> Tag("never", log))
    client, welcome = await harness.client(server)
    await roundtrip(client)

    await client.send_json_to({"type": "secret"})
    frames, code = await frames_until_closed(client)
    assert [(f["type"], f["error_code"], f["category"]) for f in frames] == [("error", error_code, category)]
    assert code == close_code
    assert ("never", "secret") not in log
    await client.disconnect()  # returns once the endpoint has ended
    assert len(server.manager.registry) == 0
    assert server.events.on_disconnect == [(welcome["channel_name"], close_code)]


async def test_an_error_that_does_not_disconnect_is_answered_and_the_connection_stays(
    harness: Harness,
) -> None:
    server = await harness.start(RaiseOn("admin", lambda: AuthorizationError("admins only")))
    client, _ = await harness.client(server)
    await client.send_json_to({"type": "admin"})
    error = await expect_error(client, "FORBIDDEN")
    assert error["category"] == "authorization"
    await roundtrip(client)
    assert server.events.on_disconnect == []


async def test_authentication_error_in_the_connect_hook_closes_4001(harness: Harness) -> None:
    class NeedsToken(ChatConsumer):
        async def connect(self) -> None:
            raise AuthenticationError("no token")

    server = await harness.start(None, consumer_class=NeedsToken)
    client = await harness.open(server, "intruder")
    _, code = await frames_until_closed(client)
    assert code == CloseCode.AUTHENTICATION_FAILED
    await client.disconnect()  # returns once the endpoint has ended
    assert len(server.manager.registry) == 0


def test_message_too_large_carries_close_code_1009() -> None:
    """exceptions.py: `ValidationError ... 1008 (MESSAGE_TOO_LARGE: 1009)`; CloseCode 1009 is
    "frame above WS_MAX_MESSAGE_SIZE". An app closing on this error must close with 1009."""
    middleware = ValidationMiddleware(10)
    message = Message(type="echo", data="x" * 50, raw_size=64)
    with pytest.raises(ValidationError) as caught:
        asyncio.run(middleware.process(message, None, None))  # type: ignore[arg-type]
    assert caught.value.error_code == "MESSAGE_TOO_LARGE"
    assert caught.value.should_disconnect() is False  # "close 1009 not forced"
    assert caught.value.ws_code == CloseCode.MESSAGE_TOO_BIG


# --- the rate limit in this process (no Redis) --------------------------------------------------------
async def test_in_process_rate_limit_per_user(harness: Harness) -> None:
    window = 1.0
    limiter = RateLimitMiddleware(
        messages_per_window=3, window_seconds=window, excluded_message_types=EXCLUDED_TYPES
    )
    assert limiter.redis is None
    server = await harness.start(ValidationMiddleware(4096) >> limiter)
    first, _ = await harness.client(server, "carol")
    second, _ = await harness.client(server, "carol")  # the same user: one window for both
    other, _ = await harness.client(server, "dave")

    await roundtrip(first)
    await roundtrip(first)
    await roundtrip(second)
    refusals = []
    for client in (second, first):
        await client.send_json_to({"type": "echo", "data": "over"})
        refusals.append(await expect_error(client, "RATE_LIMIT_EXCEEDED"))
    for error in refusals:
        assert error["category"] == "rate_limit" and error["retryable"] is True
        assert 0 < error["details"]["retry_after"] <= window
        assert error["details"]["limit"] == 3 and error["details"]["window_seconds"] == window

    assert await request(first, "typing_ok", type="typing_start")  # excluded types pass
    await first.send_json_to({"type": "ping"})
    assert (await first.receive_json_from())["type"] == "pong"
    await roundtrip(other)  # another user has a window of his own

    await asyncio.sleep(max(e["details"]["retry_after"] for e in refusals) + 0.05)
    await roundtrip(first)  # allowed again once the oldest message left the window
    assert server.events.on_disconnect == []


async def test_in_process_rate_limit_per_connection(harness: Harness) -> None:
    limiter = RateLimitMiddleware(messages_per_window=2, window_seconds=30, key="connection")
    server = await harness.start(limiter)
    first, _ = await harness.client(server, "erin")
    second, _ = await harness.client(server, "erin")
    for client in (first, second):
        await roundtrip(client)
        await roundtrip(client)
        await client.send_json_to({"type": "echo", "data": "third"})
        error = await expect_error(client, "RATE_LIMIT_EXCEEDED")
        assert 29 < error["details"]["retry_after"] <= 30


async def test_rate_limit_falls_back_to_this_process_while_redis_is_unreachable(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapi_channels.middleware.rate_limit")
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        server = await harness.start(
            RateLimitMiddleware(messages_per_window=2, window_seconds=30, redis=dead)
        )
        client, _ = await harness.client(server)
        await roundtrip(client)
        await roundtrip(client)
        await client.send_json_to({"type": "echo", "data": "third"})
        error = await expect_error(client, "RATE_LIMIT_EXCEEDED")
        assert 0 < error["details"]["retry_after"] <= 30
        await request(client, "pong", type="ping")
    finally:
        await dead.aclose()
    warnings = [r for r in caplog.records if "falls back" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]  # logged once, not per message
