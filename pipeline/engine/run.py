"""One run of one pipeline: the only coroutine that numbers envelopes.

`Run.execute` emits ``starting``, drives the chain (source -> transforms), turns each
item into a ``processing`` or ``chunk_error`` envelope with the next ``seq``, hands it to
`Fanout`, and always ends with exactly one ``complete`` carrying ``stats`` and
``reason``, also after ``error``, on shutdown and on cancellation.

A confirming sink that rejects one envelope (`pipeline.Delivery.reject`) gets a
``chunk_error`` emitted for that chunk by a small task of the run (never by the sink's
own task, whose queue may be full); before ``complete`` the run waits, at most
`SETTLE_TIMEOUT` seconds, until every confirming sink answered for what it got.

This module owns the run's lifecycle: start, the driver task (the source reader and the
chain feeding the run's `pipeline.engine.batch.Batch`), stop, abort, settle and finish.
Numbering and building the envelopes, and the counters, are `pipeline.engine.emit.Emitter`,
the base class of `Run`.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Literal

from pipeline.engine.acks import Ack, AckRunner
from pipeline.engine.batch import Batch, PublishLines
from pipeline.engine.chain import StageCrash, all_direct, build_chain
from pipeline.engine.emit import Emitter
from pipeline.engine.fanout import Fanout
from pipeline.engine.items import Failure, failure
from pipeline.engine.maps import failed
from pipeline.engine.resources import opened
from pipeline.engine.source import SourceReader
from pipeline.log import get_logger
from pipeline.meter import PipelineMeter
from pipeline.stage import ResolvedStage
from pipeline.types import Envelope, Reason

__all__ = ["SETTLE_TIMEOUT", "Run", "RunState", "new_run_id"]

RunState = Literal["pending", "running", "completed", "failed"]
ABORT_GRACE = 0.3
"""Seconds an aborted run gives its stages (to take cancellation) and its sinks (to close)."""
SETTLE_TIMEOUT = 30.0
"""Seconds a run waits, before ``complete``, for confirming sinks to answer (flush)."""


def new_run_id() -> str:
    """A new run id: 16 hex digits, unique per run (never contains ``:``)."""
    return uuid.uuid4().hex[:16]


HEAP_SETTLE = 1 << 20
"""Bytes of the allocation `settle_heap` makes and frees (glibc maps it: > 128 KiB)."""


@functools.cache  # once per process
def settle_heap() -> None:
    """Allocate and free one block of `HEAP_SETTLE` bytes, once per process.

    glibc's malloc hands a block this big out by ``mmap``; freeing it raises its mmap
    threshold to the block's size and its heap trim threshold to twice that (mallopt(3),
    "dynamic mmap threshold"). Without it, the heap's top is given back to the system
    after each batch of lines is written (one 128 KiB trim threshold) and faulted in again
    by the next: ``pipeline run`` of 1 M envelopes took 150-220 k minor page faults, about
    0.3 s of system time (8 k faults with this). A `Run` calls it when made, so an
    engine embedded in another program gets it too. The cost: up to 2 MiB of free heap
    may stay with the process.
    """
    bytes(HEAP_SETTLE)  # calloc: fresh pages, not written (a bytearray is zeroed: 0.5 ms)


class Run(Emitter):
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
        settle_heap()
        run_id = run_id or new_run_id()
        fanout = Fanout(
            sinks,
            dead_letter,
            publish=publish,
            on_failure=self._sink_failed,
            on_reject=self._sink_rejected,
            buffer=sink_buffer,
        )
        log = get_logger(pipeline=name, run=run_id)
        super().__init__(name, run_id, source, transforms, fanout, log, max_chunk_errors)
        self.state: RunState = "pending"
        self.acks = AckRunner(self.log)
        self.meter = meter or PipelineMeter(name)
        self.meter.chain(source.id, (t.id for t in self.transforms))
        self._params = None if source_params is None else dict(source_params)
        self._rejects: deque[tuple[Failure, tuple[Ack, ...]]] = deque()
        self._reject_task: asyncio.Task[None] | None = None
        self._batch: Batch | None = None
        self._publish_lines = publish_lines if publish is not None else None
        self._reader: SourceReader | None = None
        self._driver: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_reason: Reason = "shutdown"
        self._aborted: Reason | None = None
        self._abandon = asyncio.Event()
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
        chunks, arm, every = batch.chunks, batch.arm, batch.every
        async with aclosing(chain):
            async for item in chain:
                if not chunks:
                    arm()
                chunks.append(item)
                if len(chunks) >= every or (batch.failures_stop and failed(item)):
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

    def sink_queues(self) -> dict[str, int]:
        """Envelopes waiting in each sink's queue (by sink id)."""
        return self._fanout.queued()
