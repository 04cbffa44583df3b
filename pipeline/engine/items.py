"""The items that flow between a run's stages, and what they mean.

An item is one of:

- a chunk: the user's data (any JSON-able value), on the fast path with no wrapper;
- a `Carry`: a chunk travelling with the acknowledgements it must release once
  delivered (chunks of an at-least-once source, see `pipeline.engine.acks`);
- a `Failure`: one chunk failed in one stage; it skips the remaining per-chunk stages
  and becomes a ``chunk_error`` envelope (a `Carry` may hold a `Failure` as its chunk).

Only `pipeline.engine.isolate` and `pipeline.engine.maps` make failures out of a stage's
exceptions; the source makes them out of a `pipeline.BadChunk`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from pipeline.engine.acks import Ack
from pipeline.types import Chunk

__all__ = ["SPECIAL", "Carry", "Failure", "Item", "failure", "unwrap"]


@dataclass(frozen=True, slots=True)
class Failure:
    """One chunk failed in one stage: becomes a ``chunk_error`` envelope."""

    stage: str
    type: str
    message: str
    chunk: Any
    exc: BaseException | None = None


def failure(
    stage: str, exc: BaseException, chunk: Any, *, timeout: float | None = None, attempts: int = 1
) -> Failure:
    """Build the failure value of ``exc`` raised by ``stage`` on ``chunk``.

    A timeout says how long each attempt had and how many attempts were made.

    Example:
        >>> failure("t", TimeoutError(), {}, timeout=0.5, attempts=3).message
        'stage timed out after 0.5 s (3 attempts)'
    """
    if isinstance(exc, TimeoutError):
        message = "stage timed out" if timeout is None else f"stage timed out after {timeout:g} s"
        if attempts > 1:
            message += f" ({attempts} attempts)"
        return Failure(stage, "TimeoutError", message, chunk, exc)
    return Failure(stage, type(exc).__name__, str(exc), chunk, exc)


@dataclass(slots=True)
class Carry:
    """A chunk travelling with the acks it must release once delivered."""

    chunk: Chunk
    acks: tuple[Ack, ...]


Item: TypeAlias = "Chunk | Carry | Failure"
"""What flows between stages (`Chunk` is any user value, so this documents intent)."""

SPECIAL = (Carry, Failure)
"""The item types that are not plain chunks (checked with ``type(item) in SPECIAL``)."""


def unwrap(item: Item) -> tuple[Item, tuple[Ack, ...]]:
    """Split an item into what it carries (a chunk or a `Failure`) and its acks."""
    if type(item) is Carry:
        return item.chunk, item.acks
    return item, ()
