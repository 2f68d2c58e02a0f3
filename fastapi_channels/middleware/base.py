"""Middleware: steps every client message passes through before the consumer's `receive`.

A step returns the message (possibly changed) to go on, or None to stop it quietly; it
raises a BaseError to answer the client with an error frame. `a >> b >> c` (or `a | b | c`)
builds a chain, itself a Middleware. A chain is shared by every connection, so a step keeps
per-connection state keyed by connection, never on itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fastapi_channels.messages import Message

if TYPE_CHECKING:
    from fastapi_channels.connection import Connection

__all__ = ["Middleware", "MiddlewareChain"]


class Middleware:
    """One step. Override `process`; the default passes every message on unchanged.

    `next_middleware` (optional, as in the spec's original base class) is a step that runs right
    after this one whenever this one passes the message on; `>>` chains are the usual way.
    Calling a step (`await step(message, connection, consumer)`) runs it and its next step.
    """

    next_middleware: Middleware | None = None

    def __init__(self, next_middleware: Middleware | None = None) -> None:
        if next_middleware is not None and not isinstance(next_middleware, Middleware):
            raise TypeError(f"{next_middleware!r} is not a Middleware")
        self.next_middleware = next_middleware

    async def process(self, message: Message, connection: Connection, consumer: Any) -> Message | None:
        return message

    async def __call__(self, message: Message, connection: Connection, consumer: Any) -> Message | None:
        result = await self.process(message, connection, consumer)
        if result is not None and self.next_middleware is not None:
            return await self.next_middleware(result, connection, consumer)
        return result

    def __rshift__(self, other: Middleware) -> MiddlewareChain:
        return MiddlewareChain([self, other])

    __or__ = __rshift__


class MiddlewareChain(Middleware):
    """Steps run in order; the first None stops the message."""

    def __init__(self, steps: Iterable[Middleware]) -> None:
        flat: list[Middleware] = []
        for step in steps:
            if not isinstance(step, Middleware):
                raise TypeError(f"{step!r} is not a Middleware")
            flat.extend(step.steps if isinstance(step, MiddlewareChain) else [step])
        self.steps: tuple[Middleware, ...] = tuple(flat)

    async def process(self, message: Message, connection: Connection, consumer: Any) -> Message | None:
        current = message
        for step in self.steps:
            result = await step(current, connection, consumer)
            if result is None:
                return None
            current = result
        return current

    def __rshift__(self, other: Middleware) -> MiddlewareChain:
        return MiddlewareChain([*self.steps, other])

    __or__ = __rshift__

    def __repr__(self) -> str:
        return " >> ".join(type(step).__name__ for step in self.steps)
