"""`fastapi-channels`: run an app with the settings this library needs, or check the configuration.

fastapi-channels run example.main:app --port 8000
fastapi-channels run example.main:app --workers 4   # BACKEND_TYPE=redis: 4 servers of one cluster
fastapi-channels config          # the effective settings, or which variable is invalid
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi_channels.config import WSConfig

__all__ = ["main", "metrics_directory", "resolve_ws", "run_logging_config", "workers_refusal"]


def _run(args: argparse.Namespace) -> int:
    from fastapi_channels.config import WSConfig

    config = WSConfig()
    several = args.workers is not None and args.workers > 1
    if several:
        refusal = workers_refusal(config, args.workers)
        if refusal is not None:
            print(refusal, file=sys.stderr)
            return 2
    with metrics_directory(several):
        _serve(args, config)
    return 0


def _serve(args: argparse.Namespace, config: WSConfig) -> None:
    import uvicorn

    uvicorn.run(
        args.app,
        # Where APP is looked for first, as uvicorn's own CLI does: a console script does not
        # put the current directory on sys.path, so `fastapi-channels run app:app` would not
        # find the app.py next to it.
        app_dir=args.app_dir,
        host=args.host,
        port=args.port,
        # A class, not its import path: older uvicorn releases only look names up in a table.
        ws=resolve_ws(args.ws),
        # The server refuses frames above the size the library accepts (close 1009).
        ws_max_size=config.WS_MAX_MESSAGE_SIZE,
        ws_per_message_deflate=args.ws_per_message_deflate,
        access_log=not args.no_access_log,
        log_level=config.LOG_LEVEL.lower(),
        # A client must not be able to write a traceback into the log per bad frame; the
        # library's own records (the stats line, closes, outages) go where uvicorn's do.
        log_config=run_logging_config(config.LOG_LEVEL),
        factory=args.factory,
        workers=args.workers,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
    )


def run_logging_config(level: str) -> dict[str, Any]:
    """The log configuration of `fastapi-channels run`: uvicorn's, with the protocol error
    filter, and the library's logger (`fastapi_channels`) at `level` on uvicorn's handler.

    Imported as a library it configures no logging; but a server started with its own CLI
    would otherwise drop the library's INFO records (the LOG_STATS line among them): uvicorn
    configures only its own loggers. The records do not propagate further, so an app that
    configures the root logger does not print them twice.
    """
    from fastapi_channels.logfilter import logging_config

    config = logging_config()
    library = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"]["fastapi_channels"] = library
    return config


@contextlib.contextmanager
def metrics_directory(several_workers: bool) -> Iterator[None]:
    """prometheus-client's multiprocess mode for several workers, as its documentation asks.

    With prometheus-client installed: PROMETHEUS_MULTIPROC_DIR, when set, is emptied of the
    metric files of an earlier run; when unset, a fresh directory is made for this run (and
    removed after it). The workers inherit the variable and merge their metrics through it.
    """
    if not several_workers or importlib.util.find_spec("prometheus_client") is None:
        yield
        return
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
        yield
        return
    made = tempfile.mkdtemp(prefix="fastapi-channels-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(made, ignore_errors=True)


def workers_refusal(config: WSConfig, workers: int) -> str | None:
    """Why `--workers N` (N > 1) cannot work with these settings, or None when it can.

    Each worker is a server of its own: on Redis they form a cluster; in memory they could
    never reach each other's clients. Each needs its own server id, so a fixed one is refused.
    """
    if config.BACKEND_TYPE == "memory":
        return (
            f"--workers {workers} needs BACKEND_TYPE=redis: with BACKEND_TYPE=memory each worker "
            "process would hold its own clients and no send could reach the others'. "
            "Set BACKEND_TYPE=redis and REDIS_URL, or run one worker."
        )
    if "SERVER_INSTANCE_ID" in config.model_fields_set:
        return (
            f"--workers {workers} with SERVER_INSTANCE_ID={config.SERVER_INSTANCE_ID} would give "
            "every worker the same server id (each worker is a server of the cluster and needs its "
            "own): unset SERVER_INSTANCE_ID, and each worker generates one."
        )
    return None


def resolve_ws(ws: str) -> Any:
    """uvicorn's --ws value: a protocol class for a `module:Class` path, the name otherwise."""
    if ":" not in ws:
        return ws
    module, _, name = ws.partition(":")
    return getattr(importlib.import_module(module), name)


def _config(_: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fastapi_channels.config import WSConfig
    from fastapi_channels.redact import redact_url

    try:
        config = WSConfig()
    except ValidationError as exc:
        # Each variable and why, without the value given: a URL may carry a password.
        problems = [
            ": ".join(part for part in (".".join(str(p) for p in error["loc"]), error["msg"]) if part)
            for error in exc.errors(include_url=False, include_input=False)
        ]  # a whole-config rule has no location: its message names the variables
        print("invalid configuration:\n" + "\n".join(problems), file=sys.stderr)
        return 2
    for name, value in config.model_dump().items():
        shown = redact_url(value) if name.endswith("_URL") and isinstance(value, str) else value
        print(f"{name}={shown}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastapi-channels")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve an ASGI app under uvicorn")
    run.add_argument("app", help="import path, e.g. example.main:app")
    run.add_argument(
        "--app-dir",
        default=".",
        help="look for APP in this directory first (default: the current directory)",
    )
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
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes, each a server of the cluster (needs BACKEND_TYPE=redis)",
    )
    run.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        default=None,
        help="seconds to let connections close on SIGTERM before cancelling them (default: no limit)",
    )
    run.set_defaults(handler=_run)
    show = commands.add_parser("config", help="print the effective configuration")
    show.set_defaults(handler=_config)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
