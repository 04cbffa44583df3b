"""Stages of the sensors example: simulated temperature probes, cleaned and watched live.

The source plays a handful of DS18B20-style probes on a random walk. Like real probes
they sometimes glitch: a reading now and then is malformed (no value, ``"ERR"``,
``null``, a value written with a decimal comma, no sensor id) and `validate` turns each
of those into a ``chunk_error``; a probe sometimes reports its power-on value ``85.0``
or its disconnected value ``-127.0``, and a spike now and then, which
`detect_anomalies` flags. The flow::

    readings -> validate -> convert -> locate -> detect_anomalies -> rolling_mean

Example:
    >>> validate({"sensor": "s-1", "seq": 1, "ts": "2024-01-01T00:00:00Z", "celsius": 21})
    {'sensor': 's-1', 'seq': 1, 'ts': '2024-01-01T00:00:00Z', 'celsius': 21.0}
    >>> convert({"celsius": 100.0}, unit="fahrenheit")
    {'celsius': 100.0, 'temperature': 212.0, 'unit': 'fahrenheit'}
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from pipeline import Chunk, stream_transform

__all__ = [
    "SITES",
    "convert",
    "detect_anomalies",
    "locate",
    "readings",
    "rolling_mean",
    "simulate",
    "validate",
]

Unit = Literal["celsius", "fahrenheit", "kelvin"]

POWER_ON_RESET = 85.0
"""What a DS18B20 probe reports before its first conversion."""

DISCONNECTED = -127.0
"""What a DS18B20 driver reports for a probe that does not answer."""

SITES: dict[str, dict[str, Any]] = {
    "s-1": {"site": "greenhouse", "zone": "north"},
    "s-2": {"site": "greenhouse", "zone": "south"},
    "s-3": {"site": "cold-store", "zone": "bay-1"},
    "s-4": {"site": "server-room", "zone": "rack-a"},
}
"""The asset registry `locate` looks sensors up in; other sensors are ``unassigned``."""


_BASELINE = (21.5, 23.0, 3.5, 26.0)
"""Typical degrees Celsius of the probes in `SITES`, in turn."""


# -- source -------------------------------------------------------------------------------


def simulate(
    *, sensors: int = 4, count: int = 200, seed: int = 7, malformed_every: int = 25
) -> Iterator[dict[str, Any]]:
    """Yield the readings of `readings`, without timestamps and without waiting.

    The values depend only on the arguments, so a test can recompute what the source
    yields. Reading ``seq`` (counted from 1) is malformed when ``malformed_every`` divides
    it; ``malformed_every: 0`` never sends a malformed reading.

    Args:
        sensors: How many probes take turns (``s-1``, ``s-2``, ...).
        count: How many readings in all.
        seed: Seed of the pseudo-random values.
        malformed_every: Every this many readings, one is malformed.

    Example:
        >>> [r["sensor"] for r in simulate(sensors=2, count=3)]
        ['s-1', 's-2', 's-1']
    """
    rng = random.Random(seed)
    level = [_BASELINE[i % len(_BASELINE)] + rng.uniform(-1.0, 1.0) for i in range(sensors)]
    for seq in range(1, count + 1):
        i = (seq - 1) % sensors
        level[i] += rng.gauss(0.0, 0.35)
        reading: dict[str, Any] = {
            "sensor": f"s-{i + 1}",
            "seq": seq,
            "celsius": _glitch(rng, level[i]),
        }
        if malformed_every and seq % malformed_every == 0:
            _break(reading, seq // malformed_every)
        yield reading


def _glitch(rng: random.Random, level: float) -> float:
    """The value a probe reports: usually its level, now and then a glitch."""
    roll = rng.random()
    if roll < 0.006:
        return POWER_ON_RESET
    if roll < 0.012:
        return DISCONNECTED
    if roll < 0.03:
        return round(level + rng.choice((-1, 1)) * rng.uniform(9.0, 14.0), 1)
    return round(level, 1)


def _break(reading: dict[str, Any], nth: int) -> None:
    """Make ``reading`` malformed, a different way each time."""
    kind = nth % 5
    if kind == 0:
        del reading["sensor"]
    elif kind == 1:
        del reading["celsius"]
    elif kind == 2:
        reading["celsius"] = "ERR"
    elif kind == 3:
        reading["celsius"] = None
    else:
        reading["celsius"] = f"{reading['celsius']:.1f}".replace(".", ",")


async def readings(
    *,
    sensors: int = 4,
    count: int = 200,
    interval: float = 0.01,
    seed: int = 7,
    malformed_every: int = 25,
) -> AsyncGenerator[Chunk, None]:
    """Simulated temperature probes: one reading every ``interval`` seconds.

    Yields ``{"sensor": "s-1", "seq": 1, "celsius": 21.3, "ts": "...Z"}``, the probes
    taking turns. Values are pseudo-random but repeatable (see `simulate`); ``ts`` is
    the wall-clock time the reading was taken.

    Args:
        sensors: How many probes take turns (``s-1``, ``s-2``, ...).
        count: How many readings in all.
        interval: Seconds between two readings.
        seed: Seed of the pseudo-random values.
        malformed_every: Every this many readings, one is malformed; ``0`` for never.

    Example:
        source:
          use: examples.sensors.stages:readings
          with: {sensors: 4, count: 200, interval: 0.01}
    """
    _at_least("sensors", sensors, 1)
    _at_least("count", count, 0)
    _at_least("interval", interval, 0)
    _at_least("malformed_every", malformed_every, 0)
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    for reading in simulate(
        sensors=sensors, count=count, seed=seed, malformed_every=malformed_every
    ):
        if reading["seq"] > 1:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        reading["ts"] = _now()
        yield reading


def _at_least(name: str, value: float, minimum: float) -> None:
    if value < minimum:
        msg = f"`{name}` must be {minimum} or more, got {value}"
        raise ValueError(msg)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- per-chunk transforms -----------------------------------------------------------------


def validate(chunk: Chunk) -> Chunk:
    """Check one reading and return it clean; a malformed one raises ``ValueError``.

    The engine turns the error into a ``chunk_error`` envelope holding the reading, and
    the run goes on with the next one.

    Args:
        chunk: A reading from `readings`.

    Returns:
        ``{"sensor", "seq", "ts", "celsius"}`` with ``celsius`` a finite float.

    Raises:
        ValueError: The reading is not a dict, lacks a field, or has no usable value.

    Example:
        transforms:
          - use: examples.sensors.stages:validate
    """
    if not isinstance(chunk, dict):
        msg = f"expected a reading (an object), got `{type(chunk).__name__}`"
        raise ValueError(msg)
    missing = [f for f in ("sensor", "seq", "ts", "celsius") if f not in chunk]
    if missing:
        msg = f"reading has no `{missing[0]}`"
        raise ValueError(msg)
    value = chunk["celsius"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"`celsius` must be a number, got {json.dumps(value)} from sensor `{chunk['sensor']}`"
        raise ValueError(msg)
    if not math.isfinite(value):
        msg = f"`celsius` must be finite, got {value} from sensor `{chunk['sensor']}`"
        raise ValueError(msg)
    return {
        "sensor": str(chunk["sensor"]),
        "seq": chunk["seq"],
        "ts": chunk["ts"],
        "celsius": float(value),
    }


def convert(chunk: Chunk, *, unit: Unit = "celsius") -> Chunk:
    """Add ``temperature`` in ``unit`` (and ``unit`` itself) to a valid reading.

    Args:
        chunk: A reading that went through `validate`.
        unit: The unit of ``temperature``.

    Example:
        transforms:
          - use: examples.sensors.stages:convert
            with: {unit: fahrenheit}
    """
    celsius: float = chunk["celsius"]
    if unit == "fahrenheit":
        value = celsius * 9 / 5 + 32
    elif unit == "kelvin":
        value = celsius + 273.15
    else:
        value = celsius
    return {**chunk, "temperature": round(value, 2), "unit": unit}


async def locate(chunk: Chunk, *, latency: float = 0.005) -> Chunk:
    """Add the probe's ``site`` and ``zone`` from the asset registry (`SITES`).

    The lookup stands in for a call to an inventory service: it takes ``latency``
    seconds, which is why the example runs it with ``concurrency`` and a ``timeout``.

    Args:
        chunk: A reading with a ``sensor``.
        latency: Seconds the simulated lookup takes.

    Example:
        transforms:
          - use: examples.sensors.stages:locate
            concurrency: 4
            timeout: 1.0
    """
    await asyncio.sleep(latency)
    place = SITES.get(chunk["sensor"], {"site": "unassigned", "zone": None})
    return {**chunk, **place}


# -- whole-stream transforms --------------------------------------------------------------


@stream_transform
async def detect_anomalies(
    chunks: AsyncIterator[Chunk], *, low: float = -10.0, high: float = 45.0, jump: float = 8.0
) -> AsyncGenerator[Chunk, None]:
    """Flag readings out of range or jumping from the same probe's previous reading.

    Each reading gets ``anomalies``: a list of ``below_range``, ``above_range`` and
    ``jump`` (empty for a normal reading). Thresholds are in degrees Celsius, whatever
    unit `convert` was given.

    Args:
        chunks: Valid readings (given by the engine).
        low: Readings below this are ``below_range``.
        high: Readings above this are ``above_range``.
        jump: A change of more than this from the probe's previous reading is a ``jump``.

    Example:
        transforms:
          - use: examples.sensors.stages:detect_anomalies
            with: {low: -10, high: 45, jump: 8}
    """
    previous: dict[str, float] = {}
    async for chunk in chunks:
        celsius: float = chunk["celsius"]
        found = []
        if celsius < low:
            found.append("below_range")
        if celsius > high:
            found.append("above_range")
        before = previous.get(chunk["sensor"])
        if before is not None and abs(celsius - before) > jump:
            found.append("jump")
        previous[chunk["sensor"]] = celsius
        yield {**chunk, "anomalies": found}


@stream_transform
async def rolling_mean(
    chunks: AsyncIterator[Chunk], *, window: int = 10
) -> AsyncGenerator[Chunk, None]:
    """Add ``mean``: the mean ``temperature`` of the probe's last ``window`` good readings.

    Readings flagged by `detect_anomalies` pass through but stay out of the mean, so
    one glitch does not drag it; ``mean`` is ``null`` until a probe has a good reading.

    Args:
        chunks: Readings with ``temperature`` (given by the engine).
        window: How many of each probe's latest good readings are averaged.

    Example:
        transforms:
          - use: examples.sensors.stages:rolling_mean
            with: {window: 10}
    """
    if window < 1:
        msg = f"`window` must be 1 or more, got {window}"
        raise ValueError(msg)
    recent: dict[str, deque[float]] = {}
    async for chunk in chunks:
        values = recent.setdefault(chunk["sensor"], deque(maxlen=window))
        if not chunk.get("anomalies"):
            values.append(chunk["temperature"])
        mean = round(sum(values) / len(values), 2) if values else None
        yield {**chunk, "mean": mean}
