"""Stages for the framework's benchmark pipeline (``bench/configs/http.yaml``).

They do the same per-item work as the baselines: the source yields
`bench.common.reading` (with ``t`` = `time.monotonic()` at production, for latency) and
the baseline's transform (add ``value_f``) is one of three per-chunk transforms.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from bench.common import reading


async def readings(*, count: int = 200_000, interval: float = 0.0) -> AsyncIterator[Any]:
    """Yield ``count`` baseline readings, ``interval`` seconds apart (0: as fast as read)."""
    for i in range(1, count + 1):
        if interval:
            await asyncio.sleep(interval)
        yield reading(i)


def enrich(chunk: dict[str, Any], *, factor: float = 1.8, offset: float = 32.0) -> dict[str, Any]:
    """Add ``value_f`` (Fahrenheit), exactly as the baselines' transform does."""
    chunk["value_f"] = chunk["value"] * factor + offset
    return chunk


def tag(chunk: dict[str, Any], *, unit: str = "celsius") -> dict[str, Any]:
    """Set the reading's unit."""
    chunk["unit"] = unit
    return chunk


def keep_all(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """A filter that keeps every chunk (returning None would drop it)."""
    return chunk if chunk["id"] >= 0 else None
