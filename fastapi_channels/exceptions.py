"""Typed errors, the JSON a client receives for them, and the table of close codes.

Errors are raised where the cause is known and turned into a frame or a close code in one
place (`ErrorResponse`, `BaseError.ws_code`). The tree::

    BaseError
    ├── AuthenticationError      authentication   4001, closes
    ├── AuthorizationError       authorization    4003
    ├── ValidationError          validation       1008 (MESSAGE_TOO_LARGE: 1009)
    ├── RateLimitError           rate_limit       4029, retryable
    ├── ConnectionError          connection       1013, retryable (limits, unknown connection)
    ├── MessageError             message          1003
    ├── BackendError             backend          1011, retryable (broker unreachable)
    │   └── DeliveryError        backend          a send reached fewer servers than had members
    ├── TimeoutError             system           1013, retryable
    └── SystemError              system           1011 (unexpected failure; details stay in the log)

`ConnectionError`, `TimeoutError` and `SystemError` shadow the builtins inside this module on
purpose: the names are the spec's. Import them qualified if that bothers you.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from starlette.exceptions import WebSocketException

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "BackendError",
    "BaseError",
    "CloseCode",
    "ConnectionError",
    "DeliveryError",
    "ErrorCategory",
    "ErrorContext",
    "ErrorResponse",
    "ErrorSeverity",
    "InvalidHandshakeName",
    "MessageError",
    "RateLimitError",
    "SystemError",
    "TimeoutError",
    "ValidationError",
    "error_from_response",
]


class CloseCode(IntEnum):
    """WebSocket close codes the library sends. 1005, 1006 and 1015 are reserved: never sent."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001  # server shutting down
    UNSUPPORTED_DATA = 1003  # a frame kind the endpoint does not accept
    INVALID_PAYLOAD = 1007  # e.g. invalid UTF-8 in a text frame
    POLICY_VIOLATION = 1008  # validation failures that end the connection
    MESSAGE_TOO_BIG = 1009  # frame above WS_MAX_MESSAGE_SIZE
    INTERNAL_ERROR = 1011  # unexpected server failure
    TRY_AGAIN_LATER = 1013  # connection limit reached, or slow consumer
    HEARTBEAT_TIMEOUT = 4000  # client silent past WS_HEARTBEAT_TIMEOUT
    AUTHENTICATION_FAILED = 4001
    AUTHORIZATION_FAILED = 4003
    RATE_LIMITED = 4029


class ErrorCategory(StrEnum):
    AUTHENTICATION = "authentication"
    AUTHORIZATION = "authorization"
    VALIDATION = "validation"
    RATE_LIMIT = "rate_limit"
    CONNECTION = "connection"
    BACKEND = "backend"
    MESSAGE = "message"
    SYSTEM = "system"


class ErrorSeverity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(slots=True)
class ErrorContext:
    """Where and when an error happened; `error_id` ties a client's frame to the server log."""

    error_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: float = field(default_factory=time.time)
    user_id: str | None = None
    connection_id: str | None = None
    message_type: str | None = None
    component: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class BaseError(Exception):
    """Root of the library's errors: a category, a stable code and what the client should do.

    Built as the spec's errors are: `ValidationError("Room name is required")`,
    `MessageError("unknown type", "UNKNOWN_TYPE")` (message, then error code), and by keyword
    `category=`, `severity=`, `context=` (an ErrorContext), `details=`, `retryable=`,
    `retry_after=`, `cause=` (the exception behind it), `ws_code=`, `disconnect=`, and the
    context's fields `error_id=`, `timestamp=`, `user_id=`, `connection_id=`, `message_type=`,
    `component=`, `metadata=` (set on `context` when both are given).
    """

    category: ErrorCategory = ErrorCategory.SYSTEM
    severity: ErrorSeverity = ErrorSeverity.MEDIUM
    default_code: str = "ERROR"
    default_ws_code: int = CloseCode.INTERNAL_ERROR
    default_retryable: bool = False
    disconnects: bool = False

    def __init__(
        self,
        message: str = "",
        error_code: str | None = None,
        *,
        category: ErrorCategory | None = None,
        severity: ErrorSeverity | None = None,
        ws_code: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        disconnect: bool | None = None,
        details: dict[str, Any] | None = None,
        context: ErrorContext | None = None,
        cause: BaseException | None = None,
        error_id: str | None = None,
        timestamp: float | None = None,
        user_id: str | None = None,
        connection_id: str | None = None,
        message_type: str | None = None,
        component: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or self.default_code)
        self.message = message or self.default_code
        self.error_code = error_code or self.default_code
        if category is not None:
            self.category = ErrorCategory(category)
        if severity is not None:
            self.severity = ErrorSeverity(severity)
        self.ws_code = int(ws_code if ws_code is not None else self.default_ws_code)
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self._disconnect = self.disconnects if disconnect is None else disconnect
        self.details: dict[str, Any] = dict(details or {})
        if retry_after is not None:
            self.details.setdefault("retry_after", retry_after)
        self.context = context or ErrorContext()
        if metadata:
            self.context.metadata.update(metadata)
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause
        for name, value in (
            ("error_id", error_id),
            ("timestamp", timestamp),
            ("user_id", user_id),
            ("connection_id", connection_id),
            ("message_type", message_type),
            ("component", component),
        ):
            if value is not None:
                setattr(self.context, name, value)

    def __str__(self) -> str:
        # Not WebSocketException's "code: reason" for the errors that are both.
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The error frame a client gets (`to_response().to_dict()`)."""
        return self.to_response().to_dict()

    def should_disconnect(self) -> bool:
        """True when the connection must be closed with `ws_code` after the error frame."""
        return self._disconnect

    def to_response(self) -> ErrorResponse:
        return ErrorResponse.from_error(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error_code}: {self.message!r})"


@dataclass(slots=True)
class ErrorResponse:
    """The error frame a client receives: `{"type": "error", ...}` (`to_dict`).

    `category` and `severity` are the enums (their values in the frame). The retry hints are
    `retryable` and `retry_after` (seconds, also in the frame's `details`); `ws_code` is the
    close code the connection ends with when the error disconnects (the close frame carries it,
    not the error frame).
    """

    error_code: str
    message: str
    category: ErrorCategory
    severity: ErrorSeverity
    error_id: str
    timestamp: float
    retryable: bool
    details: dict[str, Any]
    retry_after: float | None = None
    ws_code: int = CloseCode.INTERNAL_ERROR

    @classmethod
    def from_error(cls, error: BaseError) -> ErrorResponse:
        return cls(
            error_code=error.error_code,
            message=error.message,
            category=error.category,
            severity=error.severity,
            error_id=error.context.error_id,
            timestamp=error.context.timestamp,
            retryable=error.retryable,
            details=dict(error.details),
            retry_after=error.retry_after,
            ws_code=error.ws_code,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "error",
            "error_code": self.error_code,
            "message": self.message,
            "category": str(self.category),
            "severity": str(self.severity),
            "error_id": self.error_id,
            "timestamp": self.timestamp,
            "retryable": self.retryable,
            "details": self.details,
        }


class AuthenticationError(BaseError, WebSocketException):
    """Who is connecting is unknown. Raised at the handshake (e.g. by `auth.WebSocketAuth`),
    Starlette refuses the socket (HTTP 403); raised later, the connection closes with 4001."""

    category = ErrorCategory.AUTHENTICATION
    severity = ErrorSeverity.HIGH
    default_code = "AUTHENTICATION_FAILED"
    default_ws_code = CloseCode.AUTHENTICATION_FAILED
    disconnects = True

    def __init__(self, message: str = "", error_code: str | None = None, **kwargs: Any) -> None:
        BaseError.__init__(self, message, error_code, **kwargs)
        self.code = self.ws_code
        self.reason = self.error_code


class AuthorizationError(BaseError):
    category = ErrorCategory.AUTHORIZATION
    default_code = "FORBIDDEN"
    default_ws_code = CloseCode.AUTHORIZATION_FAILED


class ValidationError(BaseError):
    category = ErrorCategory.VALIDATION
    severity = ErrorSeverity.LOW
    default_code = "VALIDATION_ERROR"
    default_ws_code = CloseCode.POLICY_VIOLATION


class InvalidHandshakeName(ValidationError, WebSocketException):
    """A user id or connection id given to `manager.connect` that breaks the name rule.

    A `ValidationError` (`INVALID_NAME`), as every bad name is, and a Starlette
    `WebSocketException`: raised out of an endpoint before accept, Starlette refuses the
    handshake (HTTP 403) instead of answering 500 with a traceback in the log.
    """

    default_code = "INVALID_NAME"

    def __init__(self, message: str = "", error_code: str | None = None, **kwargs: Any) -> None:
        BaseError.__init__(self, message, error_code, **kwargs)
        self.code = self.ws_code
        self.reason = self.error_code


class RateLimitError(BaseError):
    category = ErrorCategory.RATE_LIMIT
    severity = ErrorSeverity.LOW
    default_code = "RATE_LIMIT_EXCEEDED"
    default_ws_code = CloseCode.RATE_LIMITED
    default_retryable = True


class ConnectionError(BaseError, WebSocketException):
    """A connection refused or not found.

    Also a Starlette `WebSocketException`: raised out of an endpoint (as `manager.connect`
    does when a limit is reached), Starlette closes the socket with `ws_code` and the
    error code as reason instead of logging a traceback.
    """

    category = ErrorCategory.CONNECTION
    default_code = "CONNECTION_ERROR"
    default_ws_code = CloseCode.TRY_AGAIN_LATER
    default_retryable = True

    def __init__(self, message: str = "", error_code: str | None = None, **kwargs: Any) -> None:
        BaseError.__init__(self, message, error_code, **kwargs)
        # WebSocketException's fields, read by Starlette's exception middleware.
        self.code = self.ws_code
        self.reason = self.error_code


class MessageError(BaseError):
    category = ErrorCategory.MESSAGE
    severity = ErrorSeverity.LOW
    default_code = "MESSAGE_ERROR"
    default_ws_code = CloseCode.UNSUPPORTED_DATA


class BackendError(BaseError):
    category = ErrorCategory.BACKEND
    severity = ErrorSeverity.HIGH
    default_code = "BACKEND_UNAVAILABLE"
    default_ws_code = CloseCode.INTERNAL_ERROR
    default_retryable = True


class DeliveryError(BackendError):
    """A group, user or broadcast send that could not confirm it reached every server with
    members of its target (raised only with WS_STRICT_DELIVERY=true; always counted).

    `details` holds `reached` and `expected` (servers; `expected` is None while Redis's state
    is being rebuilt after it lost it) and the `topic`. Sending again is safe to try: the
    members that did get it see it twice, so make messages idempotent if that matters.
    """

    default_code = "DELIVERY_SHORTFALL"


class TimeoutError(BaseError):
    category = ErrorCategory.SYSTEM
    default_code = "TIMEOUT"
    default_ws_code = CloseCode.TRY_AGAIN_LATER
    default_retryable = True


class SystemError(BaseError):
    category = ErrorCategory.SYSTEM
    severity = ErrorSeverity.HIGH
    default_code = "INTERNAL_ERROR"
    default_ws_code = CloseCode.INTERNAL_ERROR


_BY_CATEGORY: dict[str, type[BaseError]] = {
    ErrorCategory.AUTHENTICATION: AuthorizationError,  # after the handshake it is a refusal
    ErrorCategory.AUTHORIZATION: AuthorizationError,
    ErrorCategory.VALIDATION: ValidationError,
    ErrorCategory.RATE_LIMIT: RateLimitError,
    ErrorCategory.CONNECTION: ConnectionError,
    ErrorCategory.MESSAGE: MessageError,
    ErrorCategory.BACKEND: BackendError,
    ErrorCategory.SYSTEM: SystemError,
}


def error_from_response(frame: dict[str, Any]) -> BaseError:
    """Rebuild the error another server answered with (its `ErrorResponse.to_dict()`).

    Keeps the class (by category), code, message, retryability and details, so a caller on
    this server handles a remote refusal exactly like a local one.
    """
    cls = _BY_CATEGORY.get(str(frame.get("category")), SystemError)
    details = frame.get("details")
    return cls(
        str(frame.get("message") or ""),
        error_code=str(frame.get("error_code") or cls.default_code),
        retryable=bool(frame.get("retryable", cls.default_retryable)),
        details=details if isinstance(details, dict) else None,
    )
