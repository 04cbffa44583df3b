"""Stages for the framework's benchmark pipeline (``bench/configs/http.yaml``).

They do the same per-item work as the baselines: the source yields
`bench.common.reading` (with ``t`` = `time.monotonic()` at production, for latency) and
the baseline's transform (add ``value_f``) is one of three per-chunk transforms.
"""

from __future__ import annotations

import asyncio
import os
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


GATE_POLL = 0.005
"""Seconds between two looks for the gate file."""
GATE_TIMEOUT = 120.0
"""A gate that never opens ends the source (empty) after this many seconds."""
PACE_TICK = 0.001


async def gated_readings(
    *, count: int = 20_000, gate: str = "", rate: float = 0.0
) -> AsyncIterator[Any]:
    """Wait until the file ``gate`` exists, then yield ``count`` baseline readings.

    ``rate`` = 0: as fast as they are read; otherwise paced at ``rate`` per second
    (each ~1 ms tick yields the readings that are due, so the rate holds at 10 k/s where
    one ``asyncio.sleep`` per reading would not). The fan-out benchmark
    (`bench.fanout_fw`) connects every client before it creates the gate, so no client
    misses the start. The wait is bounded by `GATE_TIMEOUT`.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + GATE_TIMEOUT
    # one stat of a local file every 5 ms, before the run proper: not worth a thread
    while gate and not os.path.exists(gate):  # noqa: ASYNC240
        if loop.time() > give_up:
            return
        await asyncio.sleep(GATE_POLL)
    if not rate:
        for i in range(1, count + 1):
            yield reading(i)
        return
    t0 = loop.time()
    i = 0
    while i < count:
        due = min(count, int((loop.time() - t0) * rate) + 1)
        while i < due:
            i += 1
            yield reading(i)
        await asyncio.sleep(PACE_TICK)
