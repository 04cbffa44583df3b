"""The run's chunks that are read and not yet emitted: numbered and handed on together.

Whoever reads the chain (the source reader on the fast path, `Run` otherwise) appends
each item to `Batch.chunks`, calling `Batch.arm` first when the list is empty; that asks
the event loop to `flush` at its next turn, which comes as soon as the reader waits (for
the source, or to give other tasks their turn, at least every 256 chunks): a lone chunk
goes out at once, a burst goes out as one batch. A flush numbers the chunks, builds and
encodes their envelopes in one loop (`pipeline.envelope.processing_batch`) and queues
the lines with one call per sink; an item that is not a plain chunk (a chunk with acks,
a `Failure`, a chunk that needs the fallback encoding) takes the run's one-by-one path in
its place, so order and ``seq`` are those of a chunk-by-chunk run.

The reader also flushes once it holds `Batch.every` chunks, so it never holds more than
that: `FLUSH_MAX` when no sink queue takes them (the hub alone, or nothing), else a
quarter of the smallest sink buffer, at least `FLUSH_EVERY`, so a queue overshoots its
bound by at most a quarter. Fewer, larger flushes pay the per-batch steps (the hub's
append, the sinks' hand-off, the envelope loop's set-up) once for more chunks; nothing
waits longer for them, as the batch goes out at the loop's next turn anyway. A flush never
waits: the sinks it filled are kept, `due` turns true, and the reader waits for their
room (`wait`) before it reads more, so a slow sink holds the source back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from pipeline.engine.fanout import Fanout
from pipeline.engine.items import Carry, Failure
from pipeline.envelope import processing_batch
from pipeline.types import Envelope

__all__ = ["FLUSH_EVERY", "FLUSH_MAX", "Batch", "Counters", "PublishLines"]

PublishLines = Callable[[str, int, list[bytes]], None]
"""``(run id, seq of the first, lines)``: ``processing`` lines with consecutive seqs, the
hub's `pipeline.hub.hub.Hub.publish_lines` (the run's ``publish`` gets the others)."""

FLUSH_EVERY = 16
"""A reader flushes at least every this many chunks (see `Batch.every`)."""
FLUSH_MAX = 256
"""... and at most every this many: the source reader's fairness turn
(`pipeline.engine.source.FAIRNESS_EVERY`) comes no later."""


class Counters(Protocol):
    """What a run counts as it emits (`pipeline.engine.run.Run` is one)."""

    seq: int
    processed: int


class Batch:
    """Chunks read and not yet emitted; see the module docstring."""

    def __init__(
        self,
        run: Counters,
        name: str,
        run_id: str,
        fanout: Fanout,
        one: Callable[[Any], list[Any] | None],
        stopped: Callable[[], bool],
        *,
        failures_stop: bool = False,
        publish_lines: PublishLines | None = None,
    ) -> None:
        self.chunks: list[Any] = []
        self.due = False
        self.failures_stop = failures_stop
        """Chunk errors can halt the run (``max_chunk_errors``): flush a `Failure` at once."""
        """The reader must call `wait` (a sink is full, or the run refuses more)."""
        self._run = run
        self._make = processing_batch(name, run_id, (Carry, Failure))
        self._fanout = fanout
        self._sinks = fanout.line_sinks()
        smallest = fanout.smallest_buffer
        self.every = (
            FLUSH_MAX if smallest is None else max(FLUSH_EVERY, min(FLUSH_MAX, smallest // 4))
        )
        """The reader flushes itself once it holds this many chunks."""
        self._run_id = run_id
        self._lines = publish_lines if self._sinks is not None else None
        self._envs = self._sinks is None or (fanout.publish is not None and self._lines is None)
        self._one = one
        self._stopped = stopped
        self._refused = False
        self._full: list[Any] = []
        self._closed = False
        self._armed = False

    def arm(self) -> None:
        """Flush at the event loop's next turn (call it before adding to an empty list)."""
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._soon)

    def _soon(self) -> None:
        self._armed = False
        self.flush()

    def refuse(self) -> None:
        """The run takes nothing more: drop what is here; the reader's `wait` raises."""
        self.chunks.clear()
        self._refused = self.due = True

    def close(self) -> None:
        """The reading is over: drop what was not flushed (an aborted run's chunks)."""
        self._closed = True
        self.chunks.clear()

    async def wait(self) -> None:
        """Wait until the sinks a flush filled have room; raise once the run refuses."""
        if self._refused:
            self.chunks.clear()
            raise asyncio.CancelledError
        full, self._full, self.due = self._full, [], False
        if full:
            await self._fanout.room(full)

    async def drain(self) -> None:
        """Flush now and wait for room (the end of the reading)."""
        self.flush()
        await self.wait()

    def flush(self) -> None:
        """Emit every chunk here, in order, without waiting (none once the run stopped
        emitting: it was refused, or halted on an error)."""
        chunks = self.chunks
        if not chunks:
            return
        if self._closed or self._refused or self._stopped():
            chunks.clear()
            return
        run, make, n, i = self._run, self._make, len(chunks), 0
        while i < n:
            lines: list[bytes] = []
            envs: list[Envelope] | None = [] if self._envs else None
            first = run.seq + 1
            end = make(run.seq, chunks, i, lines, envs)
            if end > i:
                run.seq += end - i
                run.processed += end - i
                self._hand_off(first, lines, envs)
            if end < n:  # not a plain chunk: the one-by-one path
                self._filled(self._one(chunks[end]))
                end += 1
                if self._stopped():  # too many chunk errors: nothing more goes out
                    break
            i = end
        chunks.clear()

    def _hand_off(self, first: int, lines: list[bytes], envs: list[Envelope] | None) -> None:
        fanout = self._fanout
        if envs is None:  # only sinks of lines; the hub, if any, takes the lines at once
            assert self._sinks is not None
            if self._lines is not None:
                self._lines(self._run_id, first, lines)
            self._filled(fanout.queue_lines(self._sinks, lines))
            return
        if self._sinks is not None:
            publish = fanout.publish
            assert publish is not None
            for env, line in zip(envs, lines, strict=True):
                publish(env, line)
            self._filled(fanout.queue_lines(self._sinks, lines))
            return
        for env, line in zip(envs, lines, strict=True):
            self._filled(fanout.queue(env, line))

    def _filled(self, full: list[Any] | None) -> None:
        if full:
            self._full += full
            self.due = True
