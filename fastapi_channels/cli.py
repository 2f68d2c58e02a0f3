"""`fastapi-channels`: run an app with the settings this library needs, or check the configuration.

fastapi-channels run example.main:app --port 8000
fastapi-channels config          # the effective settings, or which variable is invalid
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "resolve_ws"]


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from fastapi_channels.config import WSConfig
    from fastapi_channels.logfilter import logging_config

    config = WSConfig()
    uvicorn.run(
        args.app,
        host=args.host,
        port=args.port,
        # A class, not its import path: older uvicorn releases only look names up in a table.
        ws=resolve_ws(args.ws),
        # The server refuses frames above the size the library accepts (close 1009).
        ws_max_size=config.WS_MAX_MESSAGE_SIZE,
        ws_per_message_deflate=args.ws_per_message_deflate,
        access_log=not args.no_access_log,
        log_level=config.LOG_LEVEL.lower(),
        # A client must not be able to write a traceback into the log per bad frame.
        log_config=logging_config(),
        factory=args.factory,
        workers=args.workers,
    )
    return 0


def resolve_ws(ws: str) -> Any:
    """uvicorn's --ws value: a protocol class for a `module:Class` path, the name otherwise."""
    if ":" not in ws:
        return ws
    module, _, name = ws.partition(":")
    return getattr(importlib.import_module(module), name)


def _config(_: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fastapi_channels.config import WSConfig

    try:
        config = WSConfig()
    except ValidationError as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    for name, value in config.model_dump().items():
        print(f"{name}={value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastapi-channels")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve an ASGI app under uvicorn")
    run.add_argument("app", help="import path, e.g. example.main:app")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument(
        "--ws",
        default="fastapi_channels.fastpath:FastWebSocketProtocol",
        help="uvicorn WebSocket implementation (default: the library's fast path)",
    )
    run.add_argument("--ws-per-message-deflate", action="store_true", help="negotiate compression")
    run.add_argument("--no-access-log", action="store_true")
    run.add_argument("--factory", action="store_true", help="APP is a factory returning the app")
    run.add_argument("--workers", type=int, default=None)
    run.set_defaults(handler=_run)
    show = commands.add_parser("config", help="print the effective configuration")
    show.set_defaults(handler=_config)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
