"""Stages used by the bad-config corpus (each config names what it needs)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from pipeline import sink, stream_transform

NOT_A_FUNCTION = 42


async def numbers(count: int = 3, limit: int = 10) -> AsyncIterator[dict[str, int]]:
    """Yield ``count`` numbered chunks."""
    for i in range(min(count, limit)):
        yield {"n": i}


def sync_numbers(count: int = 3) -> Iterator[dict[str, int]]:
    """Yield ``count`` numbered chunks from a sync generator."""
    for i in range(count):
        yield {"n": i}


def needs_chunk(chunk: Any, /) -> Any:
    """A source that wrongly takes a positional-only chunk."""
    return chunk


def scale(chunk: dict[str, Any], *, factor: float, unit: str = "m") -> dict[str, Any]:
    """Multiply ``n`` by ``factor``."""
    return {**chunk, "n": chunk["n"] * factor, "unit": unit}


async def slow_scale(chunk: dict[str, Any], factor: float = 1.0) -> dict[str, Any]:
    """An async per-chunk transform."""
    return {**chunk, "n": chunk["n"] * factor}


def no_chunk(*, factor: float = 1.0) -> float:
    """A transform that forgot its chunk parameter."""
    return factor


@stream_transform
async def pairs(chunks: AsyncIterator[Any]) -> AsyncIterator[list[Any]]:
    """Group chunks in pairs."""
    batch: list[Any] = []
    async for chunk in chunks:
        batch.append(chunk)
        if len(batch) == 2:
            yield batch
            batch = []


@sink
def collect(envelope: dict[str, Any]) -> None:
    """A sink that drops everything."""


def plain_sink(envelope: dict[str, Any]) -> None:
    """An unmarked sink."""
