"""Where an idle connection's memory goes: a heap profile of one server process.

    python -m benchmarks.heap --connections 2000              # the fast path
    python -m benchmarks.heap --connections 2000 --ws websockets-sansio
    python -m benchmarks.heap --app benchmarks.systems:bare   # the bare Starlette loop

The server runs in this process under tracemalloc (uvicorn, fastapi-channels with its
default settings: heartbeat on); a load generator process opens `--connections` idle
members of one group. The difference between a snapshot before and one after, divided by
the connections, is what one connection costs on the Python heap, by the line that
allocated it. RSS per connection is printed beside it: the rest of RSS is the allocator's
slack and C-level buffers tracemalloc does not see. Profiling slows allocation, so this
measures bytes, never speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import json
import os
import resource
import sys
import tracemalloc
from pathlib import Path
from typing import Any

FAST = "fastapi_channels.fastpath:FastWebSocketProtocol"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def load_app(target: str) -> Any:
    if target == "channels":  # as a user runs it: default settings, heartbeat included
        target = "benchmarks.systems:channels_capacity"
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


async def open_clients(url: str, count: int) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """A load generator process holding `count` idle members, once they all joined."""
    generator = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--mode",
        "idle",
        "--clients",
        str(count),
        "--url",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert generator.stdout is not None
    line = await generator.stdout.readline()
    if not line:
        raise RuntimeError("the load generator exited before its clients were ready")
    return generator, json.loads(line)


async def profile(args: argparse.Namespace) -> str:
    import uvicorn

    from fastapi_channels.cli import resolve_ws
    from fastapi_channels.testing import free_port

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            load_app(args.app),
            host="127.0.0.1",
            port=port,
            ws=resolve_ws(args.ws),
            ws_per_message_deflate=False,
            log_level="warning",
            access_log=False,
        )
    )
    serving = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        # A few connections first: what the first one allocates once (imports, caches,
        # pools) is not a per-connection cost.
        warm, _ = await open_clients(f"ws://127.0.0.1:{port}/ws", 20)
        gc.collect()
        before, rss_before = tracemalloc.take_snapshot(), rss()
        generator, ready = await open_clients(f"ws://127.0.0.1:{port}/ws", args.connections)
        await asyncio.sleep(args.settle)  # past the first heartbeat sweep's allocations
        gc.collect()
        after, rss_after = tracemalloc.take_snapshot(), rss()
        for process in (generator, warm):
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
            await process.wait()
    finally:
        server.should_exit = True
        await serving
    count = args.connections
    if args.trace:
        return _stacks(after.compare_to(before, "traceback"), args.trace, count)
    stats = after.compare_to(before, "lineno")
    traced = sum(stat.size_diff for stat in stats)
    by_package: dict[str, int] = {}
    for stat in stats:
        package = _package(stat.traceback[-1].filename)
        by_package[package] = by_package.get(package, 0) + stat.size_diff
    lines = [
        f"{args.app} [{args.ws}], {count} idle connections (connect {ready['connect_s']} s):",
        f"  Python heap per connection (tracemalloc): {traced / count / 1024:.2f} KiB",
        f"  RSS per connection (tracemalloc's own too): {(rss_after - rss_before) / count / 1024:.1f} KiB",
        "  by package: "
        + ", ".join(
            f"{name} {size / count:.0f} B"
            for name, size in sorted(by_package.items(), key=lambda i: -i[1])
            if size / count >= args.min_bytes
        ),
        "",
        "  bytes/conn  objects/conn  allocated at",
    ]
    shown = 0
    for stat in stats:
        if stat.size_diff / count < args.min_bytes:
            continue
        frame = stat.traceback[-1]
        where = f"{_short(frame.filename)}:{frame.lineno}"
        lines.append(f"  {stat.size_diff / count:10.1f}  {stat.count_diff / count:12.2f}  {where}")
        shown += 1
        if shown >= args.top:
            break
    return "\n".join(lines)


def _stacks(stats: list[tracemalloc.StatisticDiff], site: str, count: int) -> str:
    """Each call stack whose innermost frame is `site` (FILE:LINE, FILE a path suffix)."""
    filename, _, line = site.rpartition(":")
    out = []
    for stat in stats:
        frame = stat.traceback[-1]  # the innermost: tracemalloc lists the oldest frame first
        if frame.filename.endswith(filename) and frame.lineno == int(line) and stat.size_diff > 0:
            out.append(
                f"{stat.size_diff / count:.1f} bytes/conn, {stat.count_diff / count:.2f} objects/conn:"
            )
            out.extend(f"    {_short(f.filename)}:{f.lineno}" for f in stat.traceback)
    return "\n".join(out) or f"nothing allocated at {site}"


def _package(filename: str) -> str:
    """The library a file belongs to: the first directory under site-packages, the standard
    library's module (asyncio, ...), or this repository's top directory."""
    for marker in ("site-packages/", "/lib/python3"):
        if marker in filename:
            rest = filename.split(marker, 1)[1]
            if marker == "/lib/python3":
                rest = rest.split("/", 1)[1] if "/" in rest else rest
            return rest.split("/", 1)[0].removesuffix(".py")
    parent = Path(filename).resolve().parent
    root = Path(__file__).resolve().parents[1]
    inside = parent.relative_to(root).parts if parent.is_relative_to(root) else ()
    return inside[0] if inside else "other"


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.heap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--app", default="channels", help="channels (default settings) or module:attribute")
    parser.add_argument("--ws", default=FAST, help="uvicorn's --ws: the fast path by default")
    parser.add_argument("--top", type=int, default=25, help="allocation sites shown")
    parser.add_argument(
        "--min-bytes", type=float, default=8.0, help="leave out sites under this per connection"
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds between connecting and the snapshot"
    )
    parser.add_argument(
        "--trace", metavar="FILE:LINE", help="print the call stacks that allocated at this site instead"
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tracemalloc.start(12 if args.trace else 1)
    with contextlib.suppress(KeyboardInterrupt):
        print(asyncio.run(profile(args)))


if __name__ == "__main__":
    main()
