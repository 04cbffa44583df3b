"""Misbehaving stages for the hardening probes, written once.

`STAGES` is the text of a stage module (a project writes it beside its pipelines.yaml);
`python -m bench attack`/`soak` and tests/server/test_shutdown_bounds.py both use it,
so a probe and a test attack the server with the same code.
"""

from __future__ import annotations

__all__ = ["STAGES", "write_stages"]

from pathlib import Path

STAGES = """
import asyncio, os, time

from pipeline import sink

async def ticks(size: int = 100, interval: float = 0.001, count: int | None = None):
    '''Endless (or ``count``) chunks padded to ``size`` bytes, one per ``interval``.'''
    n = 0
    while count is None or n < count:
        yield {"n": n, "pad": "x" * size}
        n += 1
        await asyncio.sleep(interval)

async def slow_sink(envelope):
    await asyncio.sleep(1)

@sink(stream=True, confirm=True)
async def mute(deliveries):
    async for _ in deliveries:  # never answers for what it got
        pass

async def deaf():
    '''Swallows cancellation.'''
    yield {"n": 0}
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

def stuck():
    '''A blocking source stuck in its thread.'''
    yield {"n": 0}
    time.sleep(3600)

async def spinning(marker: str):
    '''Holds the event loop for good once its first envelopes went out.'''
    yield {"n": 0}
    await asyncio.sleep(0.1)
    open(marker, "w").close()
    while True:
        pass

def boom(chunk, secret: str):
    raise ValueError(f"cannot reach {secret}")

def sleepy(chunk):
    time.sleep(1.0)
    return chunk

def huge(count: int = 10, size: int = 50_000_000):
    for n in range(count):
        yield {"n": n, "pad": "x" * size}

def loud(chunk):
    print("a stage prints", chunk)
    return chunk

def clash(chunk):
    return {1: "int", "1": "str", "n": chunk}
"""


def write_stages(folder: Path, module: str) -> Path:
    """Write `STAGES` as ``folder/MODULE.py``; return its path."""
    path = folder / f"{module}.py"
    path.write_text(STAGES)
    return path
