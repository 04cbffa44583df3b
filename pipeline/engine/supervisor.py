"""Own every run of a process: start them from triggers, track state, stop them all.

The supervisor does not care what consumes envelopes: it hands each run a ``publish``
callback (the pipeline's hub, under ``--serve``) and extra sinks (stdout, under plain
``pipeline run``). Shutdown stops every source, gives in-flight chunks
``shutdown_timeout`` seconds, then aborts what is left; every run still ends with
``complete`` (``reason: shutdown``) and its sinks are flushed and closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.engine.run import Run
from pipeline.log import get_logger
from pipeline.stage import ResolvedStage
from pipeline.types import Envelope, Reason

__all__ = ["Feed", "PipelineSpec", "Supervisor"]


class Feed(Protocol):
    """Whatever consumes a pipeline's envelopes besides its sinks (the hub)."""

    def begin_run(self, run: str) -> None: ...
    def publish(self, envelope: Envelope, line: bytes) -> None: ...
    def end_run(self) -> None: ...


class PipelineSpec(Protocol):
    """What the supervisor needs of a resolved pipeline (`config.loader.ResolvedPipeline`)."""

    name: str
    source: ResolvedStage
    transforms: tuple[ResolvedStage, ...]
    sinks: tuple[ResolvedStage, ...]
    dead_letter: ResolvedStage | None

    @property
    def config(self) -> Any: ...


@dataclass
class _Slot:
    spec: PipelineSpec
    feed: Feed | None = None
    run: Run | None = None
    task: asyncio.Task[Reason] | None = None
    runs: int = 0
    request_runs: set[Run] = field(default_factory=set)


class Supervisor:
    """Starts, tracks and stops the runs of a set of pipelines."""

    def __init__(
        self,
        pipelines: Mapping[str, PipelineSpec],
        *,
        feeds: Mapping[str, Feed] | None = None,
        extra_sinks: Sequence[ResolvedStage] = (),
        shutdown_timeout: float = 10.0,
    ) -> None:
        feeds = feeds or {}
        self._slots = {n: _Slot(p, feeds.get(n)) for n, p in pipelines.items()}
        self._extra_sinks = tuple(extra_sinks)
        self.shutdown_timeout = shutdown_timeout
        self.shutting_down = False
        self.log = get_logger()

    @property
    def names(self) -> list[str]:
        """Pipeline names, in config order."""
        return list(self._slots)

    def _new_run(
        self,
        slot: _Slot,
        publish: Callable[[Envelope, bytes], None] | None,
        source_params: Mapping[str, Any] | None = None,
    ) -> Run:
        spec = slot.spec
        return Run(
            spec.name,
            spec.source,
            spec.transforms,
            (*spec.sinks, *self._extra_sinks),
            spec.dead_letter,
            max_chunk_errors=spec.config.max_chunk_errors,
            publish=publish,
            source_params=source_params,
        )

    def start(self, names: Iterable[str]) -> None:
        """Start one run of each named pipeline in the background."""
        for name in names:
            slot = self._slots[name]
            run = self._new_run(slot, slot.feed.publish if slot.feed else None)
            slot.run, slot.runs = run, slot.runs + 1
            slot.task = asyncio.get_running_loop().create_task(self._execute(slot, run))

    async def _execute(self, slot: _Slot, run: Run) -> Reason:
        if slot.feed is not None:
            slot.feed.begin_run(run.id)
        try:
            return await run.execute()
        finally:
            if slot.feed is not None:
                slot.feed.end_run()

    async def wait(self) -> dict[str, Reason | None]:
        """Wait for every started run to end; return each pipeline's ``complete`` reason."""
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return {n: s.run.reason for n, s in self._slots.items() if s.run is not None}

    async def run_request(
        self, name: str, feed: Feed, source_params: Mapping[str, Any] | None
    ) -> Reason:
        """Run a ``trigger: request`` pipeline afresh for one client, feeding ``feed``.

        Cancelling the caller cancels the run at once; every stage's cleanup still runs.
        """
        slot = self._slots[name]
        run = self._new_run(slot, feed.publish, source_params)
        slot.runs += 1
        slot.request_runs.add(run)
        feed.begin_run(run.id)
        try:
            return await run.execute()
        finally:
            slot.request_runs.discard(run)
            feed.end_run()

    def runs(self) -> list[Run]:
        """Every run in progress."""
        out = [s.run for s in self._slots.values() if s.run is not None and not s.run.done.is_set()]
        for slot in self._slots.values():
            out.extend(slot.request_runs)
        return out

    async def shutdown(self) -> None:
        """Stop every run: graceful for ``shutdown_timeout`` seconds, then abort."""
        self.shutting_down = True
        runs = self.runs()
        self.log.info("shutdown_started", runs=len(runs), timeout=self.shutdown_timeout)
        for run in runs:
            run.stop()
        waits = [asyncio.ensure_future(r.done.wait()) for r in runs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.shutdown_timeout)
            for run in runs:
                if not run.done.is_set():
                    self.log.warning("shutdown_timeout", pipeline=run.name, run=run.id)
                    run.abort("shutdown")
            for w in pending:
                w.cancel()
            await asyncio.gather(*(r.done.wait() for r in runs))
        await self.wait()
        self.log.info("shutdown_complete")

    def state(self, name: str) -> dict[str, Any]:
        """The JSON state of one pipeline, as served by ``GET /pipelines/{name}``."""
        slot = self._slots[name]
        spec, run = slot.spec, slot.run
        status = "pending" if run is None or run.state == "pending" else run.state
        return {
            "name": name,
            "description": spec.config.description,
            "trigger": spec.config.trigger,
            "state": status,
            "run": run.id if run else None,
            "runs": slot.runs,
            "counts": dict(run.counts) if run else {},
            "stats": run.stats() if run else None,
            "reason": run.reason if run else None,
        }
