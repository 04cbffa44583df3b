"""The shared vocabulary: chunks, envelopes, statuses and acknowledgements.

Nothing here imports from the rest of the package; every other module may import it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

Chunk: TypeAlias = Any
"""One unit of data flowing through a pipeline (usually a dict)."""

Envelope: TypeAlias = dict[str, Any]
"""A status envelope as a plain dict, exactly as it is encoded on the wire."""

Status = Literal["starting", "processing", "chunk_error", "error", "complete"]
Reason = Literal["finished", "error", "shutdown", "cancelled", "reload"]
StageKind = Literal["source", "map", "flat_map", "stream", "sink"]

AckFn: TypeAlias = Callable[[], "Awaitable[None] | None"]
"""Called once every sink has accepted the envelope of an acknowledged chunk."""

OnEnvelope: TypeAlias = Callable[[dict[str, Any]], None]
"""Told each ``processing``/``chunk_error`` envelope made from a chunk, before its ack."""

STATUSES: tuple[Status, ...] = ("starting", "processing", "chunk_error", "error", "complete")


@dataclass(slots=True)
class Message:
    """A chunk with an acknowledgement attached, yielded by a source.

    The engine calls ``ack`` once every sink has accepted the envelope that came from
    ``data`` (or the dead-letter sink its ``chunk_error``), or when a transform drops it.
    Broker sources use this for at-least-once delivery. ``on_envelope``, when given, is
    called with each ``processing`` or ``chunk_error`` envelope made from ``data`` (its
    ``seq`` assigned) before the sinks get it; it must be quick and must not raise.

    Example:
        >>> async def source():
        ...     yield Message({"id": 1}, ack=lambda: None)
    """

    data: Chunk
    ack: AckFn | None = None
    on_envelope: OnEnvelope | None = None


@dataclass(slots=True)
class BadChunk:
    """Yielded by a source for a record it could not decode: becomes a ``chunk_error``.

    The run goes on. ``raw`` is what the source read (shown as the envelope's ``chunk``).

    Example:
        >>> async def source():
        ...     yield BadChunk("{not json", ValueError("bad JSON"))
    """

    raw: Chunk
    error: BaseException
    ack: AckFn | None = None
    on_envelope: OnEnvelope | None = None


class Delivery(Protocol):
    """One item handed to a confirming sink (``@sink(stream=True, confirm=True)``).

    The sink says when it is done with ``item``: `accept` once it is durably written (the
    acknowledgements of the chunk it came from may then fire), or `reject` when this one
    item cannot be written (a constraint it violates): the engine then emits a
    ``chunk_error`` for that chunk, with the sink's id as ``stage``, and the chunk is
    acknowledged once that ``chunk_error`` was delivered. Each call after the first is
    ignored. An item neither accepted nor rejected when the sink fails is never
    acknowledged, so a broker redelivers it.

    Example:
        >>> from pipeline import sink
        >>> @sink(stream=True, confirm=True)
        ... async def keep(deliveries):
        ...     async for d in deliveries:
        ...         d.accept()
    """

    item: Any

    def accept(self) -> None:
        """The item is written: it counts as accepted by this sink."""

    def reject(self, error: BaseException) -> None:
        """This item cannot be written: its chunk becomes a ``chunk_error``."""
