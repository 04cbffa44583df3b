"""The run's envelopes: numbering, building, encoding and handing them to `Fanout`.

`Emitter` is the half of `pipeline.engine.run.Run` that emits: it holds the counters
(``seq``, ``processed``, ``chunk_errors``, ``errors``), turns one item into a
``processing`` or ``chunk_error`` envelope with the next ``seq`` (`Emitter._emit_now`,
the one-by-one path of `pipeline.engine.batch.Batch`), logs chunk errors, halts the run
past ``max_chunk_errors``, and builds the ``error`` and ``complete`` envelopes and the
``stats``. `Run` owns the lifecycle (start, drive, stop, abort, settle, finish) and is
the only subclass: the two are one object, so the per-item path has no extra hop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.engine.acks import notify_all
from pipeline.engine.items import Carry, Failure
from pipeline.envelope import UnencodableError, encode, encode_without, numbered, processing
from pipeline.log import mask
from pipeline.stage import ResolvedStage
from pipeline.types import Envelope, Reason

if TYPE_CHECKING:
    from pipeline.engine.fanout import Fanout

__all__ = ["Emitter"]

_TRACEBACKS_PER_STAGE = 1
"""Chunk errors of one stage logged with their traceback (the rest: one line each)."""


class Emitter:
    """Numbers and emits a run's envelopes; `pipeline.engine.run.Run` drives it."""

    def __init__(
        self,
        name: str,
        run_id: str,
        source: ResolvedStage,
        transforms: Sequence[ResolvedStage],
        fanout: Fanout,
        log: Any,
        max_chunk_errors: int | None,
    ) -> None:
        self.name = name
        self.id = run_id
        self.source = source
        self.transforms = tuple(transforms)
        self.max_chunk_errors = max_chunk_errors
        self.reason: Reason | None = None
        self.seq = 0
        self.processed = 0
        self.chunk_errors = 0
        self.errors = 0
        self.log = log
        self._fanout = fanout
        self._halt: tuple[Reason, str, BaseException] | None = None
        self._abandoned = False
        self._started = 0.0
        self._ended = 0.0
        self._tracebacks: dict[str, int] = {}

    def _halt_run(self, stage: str, exc: BaseException) -> None:
        """Stop the run with ``error``: the subclass `pipeline.engine.run.Run` does it (it
        owns the stages to stop); an `Emitter` alone is never used."""
        raise NotImplementedError  # abstract: overridden by Run

    def _next(self, status: str, **fields: Any) -> Envelope:
        """The run's next numbered envelope (only when it will be delivered)."""
        self.seq += 1
        return numbered(status, self.name, self.id, self.seq, **fields)

    async def _emit(self, env: Envelope, acks: tuple[Any, ...] = ()) -> None:
        line = encode(env)
        await self._fanout.deliver(env, line, acks)

    def _emit_now(self, item: Any) -> list[Any] | None:
        """Emit one item now (a chunk, maybe with acks, or a `Failure`); return the sinks
        it filled (to wait for), or None."""
        acks: tuple[Any, ...] = ()
        if type(item) is Carry:
            acks, item = item.acks, item.chunk
        if type(item) is Failure:
            return self._failure_now(item, acks)
        env = processing(self.name, self.id, self.seq + 1, item)
        try:
            line = encode(env)
        except UnencodableError as exc:
            last = self.transforms[-1].id if self.transforms else self.source.id
            return self._failure_now(Failure(last, type(exc).__name__, str(exc), item), acks)
        self.seq += 1
        self.processed += 1
        if acks:
            notify_all(acks, env)
        return self._fanout.queue(env, line, acks)

    async def _emit_failure(self, f: Failure, acks: tuple[Any, ...]) -> None:
        full = self._failure_now(f, acks)
        if full is not None:
            await self._fanout.room(full)

    def _failure_now(self, f: Failure, acks: tuple[Any, ...]) -> list[Any] | None:
        self.chunk_errors += 1
        self._log_failure(f)
        error = {"type": f.type, "message": mask(f.message)}
        env = self._next("chunk_error", stage=f.stage, error=error, chunk=f.chunk)
        line = encode_without(env, "chunk")
        if acks:
            notify_all(acks, env)
        full = self._fanout.queue(env, line, acks)
        limit = self.max_chunk_errors
        if limit is not None and self.chunk_errors > limit and self._halt is None:
            msg = f"more than {limit} chunk errors (max_chunk_errors)"
            self._halt_run(f.stage, RuntimeError(msg))
        return full

    def _log_failure(self, f: Failure) -> None:
        """One line per chunk error; its traceback only the first time per stage (or debug)."""
        seen = self._tracebacks.get(f.stage, 0)
        self._tracebacks[f.stage] = seen + 1
        full = seen < _TRACEBACKS_PER_STAGE or self.log.is_enabled_for(logging.DEBUG)
        exc_info = f.exc if full and f.exc is not None else None
        self.log.warning(
            "chunk_failed", stage=f.stage, error=f.type, message=f.message, exc_info=exc_info
        )

    async def _emit_error(self, stage: str, exc: BaseException) -> None:
        self.errors += 1
        message = mask(str(exc)) if not isinstance(exc, TimeoutError) else "stage timed out"
        self.log.error("run_failed", stage=stage, error=type(exc).__name__, exc_info=exc)
        error = {"type": type(exc).__name__, "message": message}
        await self._emit(self._next("error", stage=stage, error=error))

    async def _emit_complete(self, reason: Reason) -> None:
        self.reason = reason
        self._ended = time.monotonic()
        env = self._next("complete", stats=self.stats(), reason=reason)
        await self._emit(env)
        self.log.info("run_completed", reason=reason, **env["stats"])

    @property
    def counts(self) -> dict[str, int]:
        """Envelopes emitted so far, per status."""
        counts = {
            "starting": 1 if self.seq else 0,
            "processing": self.processed,
            "chunk_error": self.chunk_errors,
            "error": self.errors,
            "complete": 1 if self.reason else 0,
        }
        return {k: v for k, v in counts.items() if v}

    def sink_queues(self) -> dict[str, int]:
        """Envelopes waiting in each sink's queue (by sink id)."""
        return self._fanout.queued()

    def stats(self) -> dict[str, Any]:
        """The run's stats so far, as in the ``complete`` envelope."""
        return {
            "processed": self.processed,
            "chunk_errors": self.chunk_errors,
            "errors": self.errors,
            "duration_s": round(self._duration(), 6),
        }

    def _duration(self) -> float:
        """Seconds from the start to ``complete`` (or to now, while running)."""
        if not self._started:
            return 0.0
        return (self._ended or time.monotonic()) - self._started
