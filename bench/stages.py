"""Stages for the framework's benchmark pipeline (``bench/configs/http.yaml``).

They do the same per-item work as the baselines (`bench.common.transform`), spread over
three per-chunk transforms. They accept whatever the ``counter`` source yields (a dict,
or a bare number) and normalise it to the baseline's reading shape.
"""

from __future__ import annotations

import time
from typing import Any


def enrich(chunk: Any, *, factor: float = 1.8, offset: float = 32.0) -> dict[str, Any]:
    """Shape the chunk like the baseline reading and add ``value_f``.

    ``t`` is kept when the source set it; otherwise it is `time.monotonic()` now, so
    latency is then measured from the first transform rather than from the source.
    """
    data: dict[str, Any] = dict(chunk) if isinstance(chunk, dict) else {"value": chunk}
    i = data.get("id", data.get("i", data.get("n", data.get("value", 0))))
    if not isinstance(i, int):
        i = 0
    data.setdefault("id", i)
    data.setdefault("sensor", f"s-{i % 8}")
    value = data.get("value")
    if not isinstance(value, int | float):
        value = 20.0 + (i % 1000) / 100
    data["value"] = value
    data.setdefault("t", time.monotonic())
    data["value_f"] = value * factor + offset
    return data


def tag(chunk: dict[str, Any], *, unit: str = "celsius") -> dict[str, Any]:
    """Set the reading's unit."""
    chunk["unit"] = unit
    return chunk


def keep_all(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """A filter that keeps every chunk (returning None would drop it)."""
    return chunk if chunk is not None else None
