"""The error tree: categories, close codes, retry/disconnect flags and the client's error frame."""

from __future__ import annotations

import builtins
import time

import orjson
import pytest
from starlette.exceptions import WebSocketException

from fastapi_channels.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BackendError,
    BaseError,
    CloseCode,
    ConnectionError,
    DeliveryError,
    ErrorCategory,
    ErrorContext,
    ErrorResponse,
    ErrorSeverity,
    InvalidHandshakeName,
    MessageError,
    RateLimitError,
    SystemError,
    TimeoutError,
    ValidationError,
)

RESERVED_CLOSE_CODES = {1004, 1005, 1006, 1015}

# class, category, ws_code, retryable, should_disconnect, default error code
TABLE = [
    (AuthenticationError, "authentication", 4001, False, True, "AUTHENTICATION_FAILED"),
    (AuthorizationError, "authorization", 4003, False, False, "FORBIDDEN"),
    (ValidationError, "validation", 1008, False, False, "VALIDATION_ERROR"),
    (InvalidHandshakeName, "validation", 1008, False, False, "INVALID_NAME"),
    (RateLimitError, "rate_limit", 4029, True, False, "RATE_LIMIT_EXCEEDED"),
    (ConnectionError, "connection", 1013, True, False, "CONNECTION_ERROR"),
    (MessageError, "message", 1003, False, False, "MESSAGE_ERROR"),
    (BackendError, "backend", 1011, True, False, "BACKEND_UNAVAILABLE"),
    (DeliveryError, "backend", 1011, True, False, "DELIVERY_SHORTFALL"),
    (TimeoutError, "system", 1013, True, False, "TIMEOUT"),
    (SystemError, "system", 1011, False, False, "INTERNAL_ERROR"),
]
CONCRETE = [row[0] for row in TABLE]


@pytest.mark.parametrize(("cls", "category", "ws_code", "retryable", "disconnect", "code"), TABLE)
def test_concrete_error_defaults(
    cls: type[BaseError], category: str, ws_code: int, retryable: bool, disconnect: bool, code: str
) -> None:
    error = cls("something happened")
    assert isinstance(error, BaseError)
    assert isinstance(error, Exception)
    assert error.category == category
    assert isinstance(error.category, ErrorCategory)
    assert error.ws_code == ws_code
    assert type(error.ws_code) is int
    assert error.retryable is retryable
    assert error.should_disconnect() is disconnect
    assert error.error_code == code
    assert error.message == "something happened"
    assert error.retry_after is None


def test_every_concrete_error_is_in_the_table() -> None:
    def subclasses(cls: type) -> set[type]:
        out = set()
        for sub in cls.__subclasses__():
            out |= {sub} | subclasses(sub)
        return out

    library = {c for c in subclasses(BaseError) if c.__module__ == "fastapi_channels.exceptions"}
    assert library == set(CONCRETE)


@pytest.mark.parametrize("cls", CONCRETE)
def test_message_defaults_to_the_error_code(cls: type[BaseError]) -> None:
    error = cls()
    assert error.message == error.error_code


@pytest.mark.parametrize("cls", CONCRETE)
def test_str_is_the_message(cls: type[BaseError]) -> None:
    """str(error) is what logs and `pytest.raises(match=...)` see: the human message, for every error."""
    assert str(cls("limit reached for alice")) == "limit reached for alice"
    assert str(cls()) == cls.default_code


@pytest.mark.parametrize("cls", CONCRETE)
def test_overrides(cls: type[BaseError]) -> None:
    error = cls(
        "msg",
        error_code="CUSTOM",
        severity=ErrorSeverity.CRITICAL,
        ws_code=CloseCode.POLICY_VIOLATION,
        retryable=not cls.default_retryable,
        disconnect=not cls.disconnects,
        details={"k": "v"},
    )
    assert error.error_code == "CUSTOM"
    assert error.severity == ErrorSeverity.CRITICAL
    assert error.ws_code == 1008
    assert error.retryable is (not cls.default_retryable)
    assert error.should_disconnect() is (not cls.disconnects)
    assert error.details == {"k": "v"}
    # the override is per instance: the class default is unchanged
    assert cls().severity == cls.severity
    assert cls().ws_code == int(cls.default_ws_code)


def test_details_are_copied() -> None:
    details = {"a": 1}
    error = ValidationError("x", details=details)
    error.details["b"] = 2
    assert details == {"a": 1}


def test_context_fields() -> None:
    error = AuthorizationError(
        "no", user_id="u1", connection_id="srv!c", message_type="join", component="groups"
    )
    ctx = error.context
    assert (ctx.user_id, ctx.connection_id, ctx.message_type, ctx.component) == (
        "u1",
        "srv!c",
        "join",
        "groups",
    )
    assert len(ctx.error_id) == 32
    assert ctx.error_id != AuthorizationError("no").context.error_id
    assert abs(ctx.timestamp - time.time()) < 60


def test_explicit_context_is_used() -> None:
    ctx = ErrorContext(error_id="abc", timestamp=12.5)
    error = SystemError("boom", context=ctx, component="x")
    assert error.context is ctx
    assert ctx.component == "x"
    response = error.to_response()
    assert response.error_id == "abc"
    assert response.timestamp == 12.5


@pytest.mark.parametrize("cls", [BaseError, ValidationError, RateLimitError, AuthorizationError])
def test_error_id_and_timestamp_are_keywords_too(cls: type[BaseError]) -> None:
    """README: every field of the context is also a keyword of its own."""
    error = cls("x", error_id="abc", timestamp=12.5, user_id="u1")
    assert (error.context.error_id, error.context.timestamp, error.context.user_id) == ("abc", 12.5, "u1")
    frame = error.to_response().to_dict()
    assert (frame["error_id"], frame["timestamp"]) == ("abc", 12.5)
    assert error.to_dict() == frame  # README: `to_dict()` is the frame, on the error too


# --- ErrorResponse ------------------------------------------------------------------------------
RESPONSE_KEYS = {
    "type",
    "error_code",
    "message",
    "category",
    "severity",
    "error_id",
    "timestamp",
    "retryable",
    "details",
}


@pytest.mark.parametrize("cls", CONCRETE)
def test_error_response_to_dict_shape(cls: type[BaseError]) -> None:
    error = cls("went wrong", details={"field": "name"})
    frame = error.to_response().to_dict()
    assert set(frame) == RESPONSE_KEYS
    assert frame["type"] == "error"
    assert frame["error_code"] == error.error_code
    assert frame["message"] == "went wrong"
    assert frame["category"] == str(error.category)
    assert type(frame["category"]) is str
    assert frame["severity"] == str(error.severity)
    assert type(frame["severity"]) is str
    assert frame["severity"] in {s.value for s in ErrorSeverity}
    assert frame["error_id"] == error.context.error_id
    assert frame["timestamp"] == error.context.timestamp
    assert frame["retryable"] is error.retryable
    assert frame["details"] == {"field": "name"}
    # the frame is plain JSON
    assert orjson.loads(orjson.dumps(frame)) == frame


def test_error_response_from_error_matches_to_response() -> None:
    error = RateLimitError("slow down")
    assert ErrorResponse.from_error(error) == error.to_response()


def test_error_response_details_are_a_copy() -> None:
    error = MessageError("x", details={"a": 1})
    frame = error.to_response().to_dict()
    frame["details"]["b"] = 2
    assert error.details == {"a": 1}


def test_retry_after_lands_in_details() -> None:
    error = RateLimitError("slow down", retry_after=2.5)
    assert error.retry_after == 2.5
    assert error.details["retry_after"] == 2.5
    assert error.to_response().to_dict()["details"] == {"retry_after": 2.5}


def test_retry_after_does_not_override_explicit_detail() -> None:
    error = RateLimitError("slow down", retry_after=2.5, details={"retry_after": 9, "limit": 10})
    assert error.details == {"retry_after": 9, "limit": 10}


def test_no_retry_after_key_without_retry_after() -> None:
    assert "retry_after" not in RateLimitError("x").to_response().to_dict()["details"]


# --- close codes --------------------------------------------------------------------------------
def test_close_codes_never_reserved() -> None:
    for code in CloseCode:
        assert int(code) not in RESERVED_CLOSE_CODES
        assert 1000 <= code <= 1014 or 3000 <= code <= 4999


@pytest.mark.parametrize("cls", CONCRETE)
def test_error_close_codes_never_reserved(cls: type[BaseError]) -> None:
    code = cls().ws_code
    assert code not in RESERVED_CLOSE_CODES
    assert code in {int(c) for c in CloseCode}


def test_close_code_values() -> None:
    assert CloseCode.NORMAL_CLOSURE == 1000
    assert CloseCode.GOING_AWAY == 1001
    assert CloseCode.UNSUPPORTED_DATA == 1003
    assert CloseCode.INVALID_PAYLOAD == 1007
    assert CloseCode.POLICY_VIOLATION == 1008
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert CloseCode.INTERNAL_ERROR == 1011
    assert CloseCode.TRY_AGAIN_LATER == 1013
    assert CloseCode.HEARTBEAT_TIMEOUT == 4000
    assert CloseCode.AUTHENTICATION_FAILED == 4001
    assert CloseCode.AUTHORIZATION_FAILED == 4003
    assert CloseCode.RATE_LIMITED == 4029


# --- ConnectionError is a Starlette WebSocketException ------------------------------------------
def test_connection_error_is_a_websocket_exception() -> None:
    error = ConnectionError("too many connections", error_code="USER_CONNECTION_LIMIT")
    assert isinstance(error, WebSocketException)
    assert isinstance(error, BaseError)
    assert error.code == 1013
    assert error.reason == "USER_CONNECTION_LIMIT"
    with pytest.raises(WebSocketException):
        raise error


def test_connection_error_code_follows_ws_code_override() -> None:
    error = ConnectionError("gone", ws_code=CloseCode.POLICY_VIOLATION)
    assert error.code == 1008 == error.ws_code
    assert error.reason == "CONNECTION_ERROR"


def test_connection_error_reason_fits_a_close_frame() -> None:
    # A close frame's reason is at most 123 bytes of UTF-8.
    assert len(ConnectionError().reason.encode()) <= 123


def test_library_errors_do_not_replace_builtins() -> None:
    assert builtins.ConnectionError is not ConnectionError
    assert builtins.TimeoutError is not TimeoutError
    assert not issubclass(ConnectionError, builtins.ConnectionError)


def test_repr() -> None:
    assert repr(ValidationError("bad", error_code="INVALID_NAME")) == "ValidationError(INVALID_NAME: 'bad')"


def test_a_remote_error_is_rebuilt_with_its_class_code_and_details() -> None:
    from fastapi_channels.exceptions import AuthorizationError, error_from_response

    original = AuthorizationError("not allowed", error_code="JOIN_FORBIDDEN", details={"group": "g"})
    rebuilt = error_from_response(original.to_response().to_dict())
    assert type(rebuilt) is AuthorizationError
    assert (rebuilt.error_code, rebuilt.message, rebuilt.details) == (
        "JOIN_FORBIDDEN",
        "not allowed",
        {"group": "g"},
    )
    assert type(error_from_response({"category": "nonsense"})) is SystemError
