"""The spec's promises, tested from its own words (spec/seed-readme.txt and DESIGN.md §2).

Apps written for the original system copy its example: its import paths, its keywords, its
coroutines, a `Middleware` subclass that overrides `process`, and errors built and read the
way its README describes them ("BaseError with typed categories ... and severity levels",
"Structured error context (error_id, timestamps, user/connection ids, message type,
component, metadata)", "Standardized responses via ErrorResponse with retry hints and
WebSocket close codes", "Concrete errors: ConnectionError, MessageError, ValidationError,
RateLimitError, AuthorizationError, SystemError, TimeoutError, etc.").
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest

import fastapi_channels
from fastapi_channels import ConnectionManager
from fastapi_channels.exceptions import (
    AuthorizationError,
    BaseError,
    CloseCode,
    ConnectionError,
    ErrorCategory,
    ErrorContext,
    ErrorResponse,
    ErrorSeverity,
    MessageError,
    RateLimitError,
    SystemError,
    TimeoutError,
    ValidationError,
)
from fastapi_channels.messages import Message
from fastapi_channels.middleware import LoggingMiddleware, Middleware, MiddlewareChain

# --- import paths the original's example uses ------------------------------------------------------


def test_the_original_example_import_paths_work() -> None:
    from fastapi_channels.consumer import BaseConsumer as FromPackage
    from fastapi_channels.consumer.base import BaseConsumer
    from fastapi_channels.typed import Message as TypedMessage

    # One class per name, whichever path imported it.
    assert BaseConsumer is FromPackage is fastapi_channels.BaseConsumer
    assert TypedMessage is Message is fastapi_channels.Message


# --- ConnectionManager coroutines (DESIGN.md §2) ---------------------------------------------------


def test_get_user_connections_is_a_coroutine_as_the_design_lists_it() -> None:
    assert inspect.iscoroutinefunction(ConnectionManager.get_user_connections)


async def test_get_user_connections_awaited_gives_a_list() -> None:
    manager = ConnectionManager(fastapi_channels.WSConfig(LOG_STATS=False))
    assert await manager.get_user_connections("alice") == []
    assert await manager.get_user_connections("Carol Smith") == []


def test_send_group_except_takes_the_originals_keyword() -> None:
    from fastapi_channels.consumer.base import BaseConsumer

    for method in (ConnectionManager.send_group_except, BaseConsumer.send_group_except):
        parameters = inspect.signature(method).parameters
        assert "exclude_connection_id" in parameters, method
        assert "exclude" in parameters, method


def test_a_consumers_send_group_except_takes_its_parameters_in_the_readmes_order() -> None:
    """README: `send_group_except(group, message, exclude=None, exclude_connection_id=None)`."""
    from fastapi_channels.consumer.base import BaseConsumer

    parameters = inspect.signature(BaseConsumer.send_group_except).parameters
    assert [(name, p.kind, p.default) for name, p in parameters.items()] == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("group", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("message", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("exclude", inspect.Parameter.POSITIONAL_OR_KEYWORD, None),
        ("exclude_connection_id", inspect.Parameter.POSITIONAL_OR_KEYWORD, None),
    ]


async def test_a_consumers_send_group_except_passes_an_id_given_by_position() -> None:
    from fastapi_channels.consumer.base import BaseConsumer

    calls: list[tuple[Any, ...]] = []

    class Manager:
        async def send_group_except(self, *args: Any, **kwargs: Any) -> None:
            calls.append((args, kwargs))

    connection = SimpleNamespace(user_id="ann", channel_name="srv!c1", set_close_hook=lambda hook: None)
    consumer = BaseConsumer(connection, Manager())  # type: ignore[arg-type]
    await consumer.send_group_except("room", {"type": "x"}, None, "srv!other")
    await consumer.send_group_except("room", {"type": "x"})
    assert calls == [
        (("room", {"type": "x"}, None), {"exclude_connection_id": "srv!other"}),
        (("room", {"type": "x"}, "srv!c1"), {"exclude_connection_id": None}),
    ]


async def test_send_group_except_takes_exclude_or_exclude_connection_id_not_both() -> None:
    manager = ConnectionManager(fastapi_channels.WSConfig(LOG_STATS=False))
    with pytest.raises(TypeError, match="not both"):
        await manager.send_group_except("room", {"type": "x"}, "srv!a", exclude_connection_id="srv!b")
    with pytest.raises(TypeError, match="needs exclude"):
        await manager.send_group_except("room", {"type": "x"})


# --- custom middleware via the Middleware base class -------------------------------------------------


# LoggingMiddleware names the connection when its logger is enabled (an earlier test may have
# left it so): a chain with it always runs for a connection.
A_CONNECTION: Any = SimpleNamespace(user_id="ann", channel_name="srv!c1")


class Shout(Middleware):
    """Written as the spec describes custom middleware: subclass Middleware, override process."""

    async def process(self, message: Message, connection: Any, consumer: Any) -> Message | None:
        if isinstance(message.data, str):
            message.data = message.data.upper()
        return message


class DropSecret(Middleware):
    """A step with its own settings, passing the next step to the base class as the original did."""

    def __init__(self, word: str, next_middleware: Middleware | None = None) -> None:
        super().__init__(next_middleware)
        self.word = word

    async def process(self, message: Message, connection: Any, consumer: Any) -> Message | None:
        return None if message.data == self.word else message


async def test_a_middleware_subclass_that_overrides_process_runs_alone_and_in_a_chain() -> None:
    alone = await Shout().process(Message(type="say", data="hi"), None, None)
    assert alone is not None and alone.data == "HI"

    chain = LoggingMiddleware() >> Shout() >> DropSecret("SECRET")
    assert isinstance(chain, MiddlewareChain)
    said = await chain.process(Message(type="say", data="hello"), A_CONNECTION, None)
    assert said is not None and said.data == "HELLO"
    assert await chain.process(Message(type="say", data="secret"), A_CONNECTION, None) is None


async def test_a_middleware_is_callable_and_follows_its_next_middleware() -> None:
    step = DropSecret("quiet", next_middleware=Shout())
    assert step.next_middleware is not None
    # Called as the original's consumer called its stack: `await middleware(message, connection, consumer)`.
    called = await step(Message(type="say", data="loud"), None, None)
    assert called is not None and called.data == "LOUD"
    assert await step(Message(type="say", data="quiet"), None, None) is None
    # In a chain, a step's own next_middleware runs right after it.
    chained = await (LoggingMiddleware() >> step).process(Message(type="say", data="x"), A_CONNECTION, None)
    assert chained is not None and chained.data == "X"
    # A subclass that never calls Middleware.__init__ has no next step.
    assert Shout().next_middleware is None


# --- errors: constructors, context, responses ------------------------------------------------------

CONCRETE_IN_THE_SPEC = [
    ConnectionError,
    MessageError,
    ValidationError,
    RateLimitError,
    AuthorizationError,
    SystemError,
    TimeoutError,
]


@pytest.mark.parametrize("cls", CONCRETE_IN_THE_SPEC)
def test_concrete_errors_are_built_with_a_message_and_a_code(cls: type[BaseError]) -> None:
    error = cls("Room name is required", "ROOM_REQUIRED")
    assert (error.message, error.error_code) == ("Room name is required", "ROOM_REQUIRED")
    keywords = cls(message="Room name is required", error_code="ROOM_REQUIRED")
    assert (keywords.message, keywords.error_code) == ("Room name is required", "ROOM_REQUIRED")
    assert isinstance(error, BaseError)
    assert isinstance(error.category, ErrorCategory)
    assert isinstance(error.severity, ErrorSeverity)


@pytest.mark.parametrize("cls", CONCRETE_IN_THE_SPEC)
def test_concrete_errors_take_context_details_retry_hints_and_a_cause(cls: type[BaseError]) -> None:
    context = ErrorContext(user_id="carol", connection_id="srv!1", message_type="join", component="rooms")
    cause = KeyError("room")
    error = cls(
        "no such room",
        error_code="ROOM_NOT_FOUND",
        severity=ErrorSeverity.HIGH,
        context=context,
        details={"room": "My Room"},
        retryable=True,
        cause=cause,
        metadata={"attempt": 2},
    )
    assert error.context is context
    assert context.metadata == {"attempt": 2}
    assert error.details == {"room": "My Room"}
    assert error.retryable is True
    assert error.severity is ErrorSeverity.HIGH
    assert error.cause is cause and error.__cause__ is cause


def test_a_base_error_takes_a_category_and_a_severity() -> None:
    error = BaseError("quota", "QUOTA", category=ErrorCategory.RATE_LIMIT, severity=ErrorSeverity.LOW)
    assert error.category is ErrorCategory.RATE_LIMIT
    assert error.severity is ErrorSeverity.LOW
    assert error.to_response().category is ErrorCategory.RATE_LIMIT
    assert BaseError("x").category is ErrorCategory.SYSTEM  # the class default is unchanged


def test_the_error_context_has_the_fields_the_spec_lists() -> None:
    context = ErrorContext()
    for name in (
        "error_id",
        "timestamp",
        "user_id",
        "connection_id",
        "message_type",
        "component",
        "metadata",
    ):
        assert hasattr(context, name), name


def test_error_response_fields_are_typed_as_the_enums() -> None:
    response = RateLimitError("slow down", retry_after=1.5).to_response()
    assert isinstance(response, ErrorResponse)
    assert response.category is ErrorCategory.RATE_LIMIT
    assert response.severity is ErrorSeverity.LOW
    # ... and the client's frame holds their values.
    frame = response.to_dict()
    assert (frame["category"], frame["severity"]) == ("rate_limit", "low")
    assert type(frame["category"]) is str and type(frame["severity"]) is str


def test_error_response_carries_retry_hints_and_the_close_code() -> None:
    response = RateLimitError("slow down", retry_after=1.5).to_response()
    assert response.retryable is True
    assert response.retry_after == 1.5
    assert response.ws_code == CloseCode.RATE_LIMITED
    assert response.to_dict()["details"]["retry_after"] == 1.5
    closing = ValidationError("too big", error_code="MESSAGE_TOO_LARGE", ws_code=1009).to_response()
    assert (closing.ws_code, closing.retryable, closing.retry_after) == (1009, False, None)
