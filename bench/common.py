"""Shared helpers: the benchmark envelope, a cached-seconds clock, ports, CPUs, statistics.

Nothing here imports the framework (`pipeline`): the baselines must not move when the
framework changes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

HOST = "127.0.0.1"
RUN_ID = "bench-run-1"
ENCODE_OPTS = orjson.OPT_APPEND_NEWLINE
DASH = "\u2013"


class Clock:
    """RFC 3339 UTC timestamps with microseconds and ``Z``; caches the seconds part."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        second, rest = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{rest // 1000:06d}Z"


def reading(i: int) -> dict[str, Any]:
    """Build the source item: one sensor reading, ``t`` = `time.monotonic()` at production."""
    return {
        "id": i,
        "sensor": f"s-{i % 8}",
        "value": 20.0 + (i % 1000) / 100,
        "unit": "celsius",
        "t": time.monotonic(),
    }


def transform(data: dict[str, Any]) -> dict[str, Any]:
    """The per-item transform of every baseline: add ``value_f`` (Fahrenheit)."""
    data["value_f"] = data["value"] * 1.8 + 32.0
    return data


def envelope(seq: int, data: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """Stamp a ``processing`` envelope (about 215 bytes once encoded)."""
    return {
        "status": "processing",
        "pipeline": "p",
        "run": RUN_ID,
        "seq": seq,
        "data": data,
        "timestamp": clock(),
    }


def encoded(seq: int, clock: Clock) -> bytes:
    """Do the whole per-item work (build, transform, stamp, orjson) for item ``seq``."""
    return orjson.dumps(envelope(seq, transform(reading(seq)), clock), option=ENCODE_OPTS)


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_plan() -> tuple[int | None, int | None]:
    """Return (server CPU, client CPU), or ``(None, None)`` when fewer than 2 CPUs are ours."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def pin(pid: int, cpu: int | None) -> None:
    """Pin process ``pid`` to one CPU (no-op when ``cpu`` is None or the pid is gone)."""
    if cpu is None:
        return
    with contextlib.suppress(OSError):  # the process may be gone already
        os.sched_setaffinity(pid, {cpu})


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a non-empty sequence."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def fmt_si(x: float) -> str:
    """Format ``x`` with a k/M/G suffix and 3 significant digits: 1.44 M, 115 k."""
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(x) >= div:
            v = x / div
            return f"{v:.3g}{suffix}"
    return f"{x:.3g}"


def fmt_range(s: dict[str, float], f: Callable[[float], str] = fmt_si) -> str:
    """``median (min-max)`` (an en dash) with the same formatter for the three numbers."""
    return f"{f(s['median'])} ({f(s['min'])}{DASH}{f(s['max'])})"


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in bytes (empty if it is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1]) * 1024
    return out
