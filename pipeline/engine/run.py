"""One run of one pipeline: the only coroutine that numbers envelopes.

`Run.execute` emits ``starting``, drives the chain (source -> transforms), turns each
item into a ``processing`` or ``chunk_error`` envelope with the next ``seq``, hands it to
`Fanout`, and always ends with exactly one ``complete`` carrying ``stats`` and
``reason``, also after ``error``, on shutdown and on cancellation.

A confirming sink that rejects one envelope (`pipeline.Delivery.reject`) gets a
``chunk_error`` emitted for that chunk by a small task of the run (never by the sink's
own task, whose queue may be full); before ``complete`` the run waits, at most
`SETTLE_TIMEOUT` seconds, until every confirming sink answered for what it got.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Literal

from pipeline.engine.acks import Ack, AckRunner, notify_all
from pipeline.engine.batch import FLUSH_EVERY, Batch, PublishLines
from pipeline.engine.chain import StageCrash, all_direct, build_chain
from pipeline.engine.fanout import Fanout
from pipeline.engine.isolate import failed
from pipeline.engine.items import Carry, Failure, failure
from pipeline.engine.resources import opened
from pipeline.engine.source import SourceReader
from pipeline.envelope import UnencodableError, encode, encode_without, numbered, processing
from pipeline.log import get_logger, mask
from pipeline.meter import PipelineMeter
from pipeline.stage import ResolvedStage
from pipeline.types import Envelope, Reason

__all__ = ["SETTLE_TIMEOUT", "Run", "RunState", "new_run_id"]

RunState = Literal["pending", "running", "completed", "failed"]
ABORT_GRACE = 0.3
"""Seconds an aborted run gives its stages (to take cancellation) and its sinks (to close)."""
_TRACEBACKS_PER_STAGE = 1
"""Chunk errors of one stage logged with their traceback (the rest: one line each)."""
SETTLE_TIMEOUT = 30.0
"""Seconds a run waits, before ``complete``, for confirming sinks to answer (flush)."""


def new_run_id() -> str:
    """A new run id: 16 hex digits, unique per run (never contains ``:``)."""
    return uuid.uuid4().hex[:16]


class Run:
    """One run of a pipeline, from ``starting`` to ``complete``."""

    def __init__(
        self,
        name: str,
        source: ResolvedStage,
        transforms: Sequence[ResolvedStage] = (),
        sinks: Sequence[ResolvedStage] = (),
        dead_letter: ResolvedStage | None = None,
        *,
        max_chunk_errors: int | None = None,
        publish: Callable[[Envelope, bytes], None] | None = None,
        publish_lines: PublishLines | None = None,
        source_params: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        sink_buffer: int = 256,
        meter: PipelineMeter | None = None,
    ) -> None:
        self.name = name
        self.id = run_id or new_run_id()
        self.source = source
        self.transforms = tuple(transforms)
        self.max_chunk_errors = max_chunk_errors
        self.state: RunState = "pending"
        self.reason: Reason | None = None
        self.seq = 0
        self.processed = 0
        self.chunk_errors = 0
        self.errors = 0
        self.log = get_logger(pipeline=name, run=self.id)
        self.acks = AckRunner(self.log)
        self.meter = meter or PipelineMeter(name)
        self.meter.chain(source.id, (t.id for t in self.transforms))
        self._params = None if source_params is None else dict(source_params)
        self._fanout = Fanout(
            sinks,
            dead_letter,
            publish=publish,
            on_failure=self._sink_failed,
            on_reject=self._sink_rejected,
            buffer=sink_buffer,
        )
        self._rejects: deque[tuple[Failure, tuple[Ack, ...]]] = deque()
        self._reject_task: asyncio.Task[None] | None = None
        self._batch: Batch | None = None
        self._publish_lines = publish_lines if publish is not None else None
        self._reader: SourceReader | None = None
        self._driver: asyncio.Task[None] | None = None
        self._halt: tuple[Reason, str, BaseException] | None = None
        self._stopping = False
        self._stop_reason: Reason = "shutdown"
        self._aborted: Reason | None = None
        self._abandon = asyncio.Event()
        self._abandoned = False
        self._started = 0.0
        self._ended = 0.0
        self._tracebacks: dict[str, int] = {}
        self.done = asyncio.Event()

    # -- control ---------------------------------------------------------------------

    def stop(self, reason: Reason = "shutdown") -> None:
        """Stop gracefully: the source stops, in-flight chunks finish, then ``complete``.

        ``reason`` is the ``complete`` reason (``shutdown``, or ``reload``).
        """
        self._stopping = True
        self._stop_reason = reason
        if self._reader is not None:
            self._reader.stop()

    def abort(self, reason: Reason = "shutdown") -> None:
        """Stop now: in-flight chunks are dropped; ``complete`` still comes last."""
        if self._aborted is not None:
            return
        self._aborted = reason
        self._fanout.hurry(ABORT_GRACE)
        asyncio.get_running_loop().call_later(ABORT_GRACE, self._abandon.set)
        if self._driver is not None:
            self._driver.cancel()

    def _sink_failed(self, stage: str, exc: BaseException) -> None:
        self.log.error("sink_failed", stage=stage, error=f"{type(exc).__name__}: {exc}")
        self._halt_run(stage, exc)

    def _sink_rejected(
        self, stage: str, exc: BaseException, chunk: Any, acks: tuple[Ack, ...] | None
    ) -> None:
        if acks is None:
            self.log.warning("sink_rejected", stage=stage, error=f"{type(exc).__name__}: {exc}")
            return
        self._rejects.append((failure(stage, exc, chunk), acks))
        if self._reject_task is None or self._reject_task.done():
            loop = asyncio.get_running_loop()
            self._reject_task = loop.create_task(self._emit_rejects(), name="sink rejects")

    async def _emit_rejects(self) -> None:
        while self._rejects:
            f, acks = self._rejects.popleft()
            await self._emit_failure(f, acks)

    async def _settle(self) -> None:
        """Wait (bounded) until confirming sinks answered and their rejections are out."""
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                while True:
                    if not await self._fanout.settle():  # cut short: the run is aborted
                        self.log.warning("sinks_unsettled", hint="given up at shutdown")
                        return
                    task = self._reject_task
                    if task is None or task.done():
                        if not self._rejects:
                            return
                        task = self._reject_task = asyncio.create_task(self._emit_rejects())
                    await task
        except TimeoutError:
            self.log.warning("sinks_unsettled", timeout=SETTLE_TIMEOUT)

    def _halt_run(self, stage: str, exc: BaseException) -> None:
        if self._halt is None:
            self._halt = ("error", stage, exc)
        if self._reader is not None:
            self._reader.stop()
        if self._driver is not None and asyncio.current_task() is not self._driver:
            self._driver.cancel()

    # -- the run ---------------------------------------------------------------------

    async def execute(self) -> Reason:
        """Run to the end; return the ``complete`` reason. Re-raises cancellation."""
        self._started = time.monotonic()
        self.state = "running"
        self.meter.begin(self)
        self.log.info("run_started")
        await self._fanout.start()
        outer_cancel = False
        try:
            await self._emit(self._next("starting"))
            outer_cancel = await self._drive_to_end()
            reason = self._final_reason(outer_cancel)
            await self._emit_complete(reason)
        finally:
            await self._finish()
        if outer_cancel:
            raise asyncio.CancelledError
        return self.reason or reason

    async def _drive_to_end(self) -> bool:
        """Run the driver task; return whether *we* were cancelled from outside."""
        self._driver = asyncio.get_running_loop().create_task(self._drive())
        try:
            await self._wait_driver()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                if not self._driver.done():
                    self._driver.cancel()
                await asyncio.wait((self._driver,), timeout=ABORT_GRACE)
                if not self._driver.done():
                    self._abandon_stages()
                return True
        except StageCrash as crash:
            await self._emit_error(crash.stage, crash.exc)
        except Exception as exc:  # a bug of ours must still end the run cleanly
            self.log.exception("engine_failed")
            await self._emit_error("engine", exc)
        if self._halt is None and self._aborted is None:
            await self._fanout.flush()  # a sink failing on the last envelopes is an error too
            await self._settle()  # confirming sinks answer; their rejections come out
        if self._halt is not None:
            await self._emit_error(self._halt[1], self._halt[2])
        return False

    async def _wait_driver(self) -> None:
        """Wait for the driver; once aborted, for `ABORT_GRACE` at most.

        A stage that swallows cancellation (or a thread that never returns) must not keep
        the run, and the process, alive: it is abandoned, and anything it still emits
        is refused.
        """
        driver = self._driver
        assert driver is not None
        abandon = asyncio.ensure_future(self._abandon.wait())
        try:
            await asyncio.wait((driver, abandon), return_when=asyncio.FIRST_COMPLETED)
        finally:
            abandon.cancel()
        if not driver.done():
            self._abandon_stages()
            self.log.error(
                "stage_abandoned", hint="a stage ignored cancellation", grace=ABORT_GRACE
            )
            return
        driver.result()

    def _stopped_emitting(self) -> bool:
        """Whether chunks read from now on are dropped (the run halted, or was abandoned)."""
        return self._halt is not None or self._abandoned

    def _abandon_stages(self) -> None:
        """Refuse whatever the stages still produce (one of them ignored cancellation)."""
        self._abandoned = True
        if self._batch is not None:
            self._batch.refuse()

    def _final_reason(self, outer_cancel: bool) -> Reason:
        if self.errors:
            return "error"
        if outer_cancel:
            return "cancelled"
        if self._aborted is not None:
            return self._aborted
        return self._stop_reason if self._stopping else "finished"

    async def _drive(self) -> None:
        reader = SourceReader(self.source, self.acks, self._params, self.meter)
        self._reader = reader
        if self._stopping:
            reader.stop()
        async with opened(self.transforms) as transforms:  # resources: set up .. torn down
            await self._pump(reader, transforms)
        if reader.error is not None and self._halt is None:
            await self._emit_error(self.source.id, reader.error)

    async def _pump(self, reader: SourceReader, transforms: tuple[ResolvedStage, ...]) -> None:
        """Pull every chunk through ``transforms`` and emit what comes out (in batches)."""
        batch = self._batch = Batch(
            self,
            self.name,
            self.id,
            self._fanout,
            self._emit_now,
            self._stopped_emitting,
            failures_stop=self.max_chunk_errors is not None,
            publish_lines=self._publish_lines,
        )
        try:
            if all_direct(transforms):  # one loop: source, maps, into the batch
                chain = reader.items(transforms, out=batch)
                async with aclosing(chain):  # type: ignore[type-var]
                    async for _ in chain:
                        pass
            else:
                await self._pump_chain(build_chain(reader, transforms), batch)
            await batch.drain()
        except Exception:
            batch.flush()  # what came out before a stage crashed goes before the `error`
            raise
        finally:
            batch.close()

    async def _pump_chain(self, chain: Any, batch: Batch) -> None:
        chunks, arm = batch.chunks, batch.arm
        async with aclosing(chain):
            async for item in chain:
                if not chunks:
                    arm()
                chunks.append(item)
                if len(chunks) >= FLUSH_EVERY or (batch.failures_stop and failed(item)):
                    batch.flush()
                if batch.due:
                    await batch.wait()
                if self._halt is not None:
                    break

    async def _finish(self) -> None:
        try:
            if self._reject_task is not None and not self._reject_task.done():
                self._reject_task.cancel()
                await asyncio.gather(self._reject_task, return_exceptions=True)
            await self._fanout.close()
            await self.acks.aclose()
            if self._fanout.failures and self.reason != "error":
                # A sink failed while closing, after `complete` went out: the run still failed.
                self.log.error("run_failed_after_complete", stage=self._fanout.failures[0][0])
                self.reason = "error"
        finally:
            self.meter.finish(self, self.reason or "cancelled")
        self.state = "failed" if self.reason == "error" else "completed"
        self.done.set()

    # -- envelopes -------------------------------------------------------------------

    def _next(self, status: str, **fields: Any) -> Envelope:
        """The run's next numbered envelope (only when it will be delivered)."""
        self.seq += 1
        return numbered(status, self.name, self.id, self.seq, **fields)

    async def _emit(self, env: Envelope, acks: tuple[Any, ...] = ()) -> None:
        line = encode(env)
        await self._fanout.deliver(env, line, acks)

    async def _emit_item(self, item: Any) -> None:
        if self._abandoned:  # a stage that ignored cancellation is still producing
            raise asyncio.CancelledError
        full = self._emit_now(item)
        if full is not None:
            await self._fanout.room(full)

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
