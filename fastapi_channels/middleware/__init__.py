"""Middleware steps for client messages: validation, rate limiting, logging, and the chain."""

from fastapi_channels.middleware.base import Middleware, MiddlewareChain
from fastapi_channels.middleware.logging import LoggingMiddleware
from fastapi_channels.middleware.rate_limit import RateLimitMiddleware, SlidingWindow
from fastapi_channels.middleware.validation import ValidationMiddleware

__all__ = [
    "LoggingMiddleware",
    "Middleware",
    "MiddlewareChain",
    "RateLimitMiddleware",
    "SlidingWindow",
    "ValidationMiddleware",
]
