"""What every baseline server shares: query parsing, pacing, the uvicorn runner."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping
from typing import Any, Literal

from bench.common import HOST

MAX_CHUNK = 256 * 1024
"""Coalesced chunks stop growing at this size (fairness between clients)."""


def query_int(query: Mapping[str, str], name: str, default: int) -> int:
    """An integer query parameter."""
    value = query.get(name)
    return int(value) if value else default


def query_float(query: Mapping[str, str], name: str, default: float) -> float:
    """A float query parameter."""
    value = query.get(name)
    return float(value) if value else default


class Pacer:
    """Sleep until item ``i`` is due at ``start + i * interval`` (no drift)."""

    __slots__ = ("interval", "start")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.start = time.monotonic()

    async def wait(self, i: int) -> None:
        """Wait for item ``i``'s slot."""
        delay = self.start + i * self.interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def serve(
    app: Any, argv: list[str] | None = None, *, lifespan: Literal["auto", "on", "off"] = "off"
) -> int:
    """Run ``app`` on uvicorn (httptools + uvloop, no access log) on 127.0.0.1."""
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--http", default="httptools", choices=["httptools", "h11"])
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    args = ap.parse_args(argv)
    config = uvicorn.Config(
        app,
        host=HOST,
        port=args.port,
        http=args.http,
        loop=args.loop,
        access_log=False,
        log_level="warning",
        lifespan=lifespan,
        backlog=2048,
    )
    uvicorn.Server(config).run()
    return 0
