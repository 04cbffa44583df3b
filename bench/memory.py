"""RSS against stream length: `bench.scaling` ``memory`` for each sink, side by side.

Both sinks run at once, one process per CPU (memory does not care about the other
core's load; it halves the wall time). One repetition each: the curve has
``MEMORY_POINTS`` samples per run, and the claim is about its shape (flat), not a rate.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import cpu_plan
from bench.harness import run_json

DEFAULT_MEMORY_N = 10_000_000
MEMORY_POINTS = 10
TARGET_MB = 10.0
SINKS = {
    "bytearray": "engine, 3 transforms, lines into a bytearray reset every 256 KB",
    "hub": "engine, 3 transforms, lines into `Hub(retain=10000, client_buffer=1024)`, no clients",
}


def command(n: int) -> str:
    """The command that reproduces the memory table."""
    return f"python -m bench --only memory --memory-n {n}"


def run_memory(n: int, *, deadline: float) -> dict[str, Any]:
    """Run every sink over ``n`` envelopes (stopping early at ``deadline``); return results."""
    every = max(1, n // MEMORY_POINTS)
    budget = max(5.0, deadline - time.monotonic())
    cpus = cpu_plan()
    sys.stderr.write(f"== memory: RSS vs stream length (n={n}, every {every}, both sinks)\n")

    def one(i_sink: tuple[int, str]) -> dict[str, Any]:
        i, sink = i_sink
        argv = [
            *(sys.executable, "-m", "bench.scaling", "memory", "--sink", sink),
            *("--n", str(n), "--every", str(every), "--budget", f"{budget:.0f}"),
        ]
        return run_json(argv, cpu=cpus[i % 2], timeout=budget + 60.0)

    with ThreadPoolExecutor(max_workers=len(SINKS)) as pool:
        runs = list(pool.map(one, enumerate(SINKS)))
    variants: dict[str, dict[str, Any]] = {}
    for sink, res in zip(SINKS, runs, strict=True):
        status = "ok" if res.get("ok") else ("partial" if res.get("partial") else "failed")
        variants[sink] = {"label": SINKS[sink], "status": status, "result": res}
        growth = res.get("growth")
        gtxt = f"{growth / 2**20:+.2f} MB" if isinstance(growth, int) else "n/a"
        sys.stderr.write(f"   {sink:>15}: {status}, {res.get('lines', 0)} env, growth {gtxt}\n")
    return {
        "title": "Memory: RSS vs stream length",
        "n": n,
        "every": every,
        "target_mb": TARGET_MB,
        "command": command(n),
        "variants": variants,
    }


FANOUT_SECONDS = 60.0
FANOUT_QUICK_SECONDS = 10.0
FANOUT_RATE = 10_000.0
FANOUT_SAMPLE = 5.0
FANOUT_TARGET_MB = 10.0


def fanout_command(seconds: float) -> str:
    """The command that reproduces the frozen-client memory run."""
    return f"python -m bench --only fanout-memory --fanout-seconds {seconds:g}"


def run_fanout_memory(seconds: float) -> dict[str, Any]:
    """The framework at `FANOUT_RATE` env/s for ``seconds`` with a frozen and a healthy
    client (`bench.fanout_fw` ``memory``); server RSS every `FANOUT_SAMPLE` s."""
    server_cpu, _ = cpu_plan()
    sys.stderr.write(f"== fanout-memory: frozen client, {FANOUT_RATE:g} env/s for {seconds:g} s\n")
    argv = [
        *(sys.executable, "-m", "bench.fanout_fw", "memory", "--seconds", f"{seconds:g}"),
        *("--rate", f"{FANOUT_RATE:g}", "--sample", f"{FANOUT_SAMPLE:g}"),
    ]
    res = run_json(argv, cpu=server_cpu, timeout=3 * seconds + 120.0)
    status = "ok" if res.get("ok") else ("skipped" if res.get("skipped") else "failed")
    growth = res.get("growth")
    gtxt = f"{growth / 2**20:+.2f} MB" if isinstance(growth, int) else "n/a"
    sys.stderr.write(f"   {status}: growth {gtxt} {res.get('error') or ''}\n")
    return {
        "title": f"Memory: a frozen client at {FANOUT_RATE / 1000:g} k envelopes/s "
        f"for {seconds:g} s (framework server)",
        "seconds": seconds,
        "rate": FANOUT_RATE,
        "sample": FANOUT_SAMPLE,
        "target_mb": FANOUT_TARGET_MB,
        "command": fanout_command(seconds),
        "status": status,
        "result": res,
    }
