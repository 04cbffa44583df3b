"""Own every run of a process: start them from triggers, track state, stop them all.

The supervisor does not care what consumes envelopes: it hands each run a ``publish``
callback (the pipeline's hub, under ``--serve``; its ``publish_lines`` too, which takes a
batch of ``processing`` lines at once) and extra sinks (stdout, under plain
``pipeline run``). Shutdown stops every source, gives in-flight chunks
``shutdown_timeout`` seconds, then aborts what is left; every run still ends with
``complete`` (``reason: shutdown``) and its sinks are flushed and closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.engine.run import ABORT_GRACE, Run
from pipeline.engine.watchdog import Watchdog
from pipeline.inlet import Inlet, inlet_parameter
from pipeline.log import get_logger, mask
from pipeline.meter import PipelineMeter
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
    inlet: tuple[str, Inlet] | None = None
    successor: tuple[PipelineSpec, Feed | None, bool] | None = None  # spec, feed, start
    meter: PipelineMeter = field(default_factory=lambda: PipelineMeter(""))


class Supervisor:
    """Starts, tracks and stops the runs of a set of pipelines."""

    def __init__(
        self,
        pipelines: Mapping[str, PipelineSpec],
        *,
        feeds: Mapping[str, Feed] | None = None,
        extra_sinks: Sequence[ResolvedStage] = (),
        shutdown_timeout: float = 10.0,
        inlets: bool = False,
    ) -> None:
        feeds = feeds or {}
        self._slots = {
            n: _Slot(p, feeds.get(n), meter=PipelineMeter(n)) for n, p in pipelines.items()
        }
        self._inlets = inlets
        for slot in self._slots.values():
            self._bind_inlet(slot)
        self._extra_sinks = tuple(extra_sinks)
        self.shutdown_timeout = shutdown_timeout
        self.shutting_down = False
        self.log = get_logger()
        self.watchdog = Watchdog(())
        """The event loop's lag (``watchdog.lag_s``, ``watchdog.max_lag_s``, seconds)."""

    @property
    def names(self) -> list[str]:
        """Pipeline names, in config order."""
        return list(self._slots)

    def _new_run(
        self,
        slot: _Slot,
        feed: Feed | None,
        source_params: Mapping[str, Any] | None = None,
    ) -> Run:
        spec = slot.spec
        self.watchdog.add((spec.source, *spec.transforms, *spec.sinks))
        self.watchdog.start()
        return Run(
            spec.name,
            spec.source,
            spec.transforms,
            (*spec.sinks, *self._extra_sinks),
            spec.dead_letter,
            max_chunk_errors=spec.config.max_chunk_errors,
            publish=None if feed is None else feed.publish,
            publish_lines=getattr(feed, "publish_lines", None),  # a hub takes a batch at once
            source_params=source_params,
            meter=slot.meter,
        )

    def inlet(self, name: str) -> Inlet | None:
        """The `Inlet` bound to the source of pipeline ``name``, if its source takes one.

        Only the supervisor of a server binds inlets (``inlets=True``); a source that
        takes one gets ``None`` otherwise.
        """
        slot = self._slots.get(name)
        return slot.inlet[1] if slot is not None and slot.inlet is not None else None

    def _bind_inlet(self, slot: _Slot) -> dict[str, Any] | None:
        """The source's parameters with its `Inlet` bound, when it takes one (else None).

        A slot keeps its inlet across runs and reloads, so the server always finds it.
        """
        param = inlet_parameter(slot.spec.source.fn) if self._inlets else None
        if param is None:
            slot.inlet = None
            return None
        inlet = slot.inlet[1] if slot.inlet is not None else Inlet(slot.spec.name)
        slot.inlet = (param, inlet)
        return {**slot.spec.source.params, param: inlet}

    def start(self, names: Iterable[str]) -> None:
        """Start one run of each named pipeline in the background."""
        for name in names:
            self._start_slot(self._slots[name])

    def _start_slot(self, slot: _Slot) -> None:
        params = self._bind_inlet(slot)
        run = self._new_run(slot, slot.feed, params)
        slot.run, slot.runs = run, slot.runs + 1
        if slot.feed is not None:  # at once: a client arriving now already sees this run
            slot.feed.begin_run(run.id)
        if slot.inlet is not None:
            slot.inlet[1].begin_run(run.id)
        slot.task = asyncio.get_running_loop().create_task(self._execute(slot, run))

    async def _execute(self, slot: _Slot, run: Run) -> Reason:
        try:
            return await run.execute()
        finally:
            if slot.inlet is not None:
                slot.inlet[1].end_run()
            if slot.feed is not None:
                slot.feed.end_run()
            if slot.successor is not None:  # a reload: the new run starts at once
                (slot.spec, slot.feed, again), slot.successor = slot.successor, None
                if again and not self.shutting_down:
                    self._start_slot(slot)

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
        run = self._new_run(slot, feed, source_params)
        slot.runs += 1
        slot.request_runs.add(run)
        feed.begin_run(run.id)
        try:
            return await run.execute()
        finally:
            slot.request_runs.discard(run)
            feed.end_run()

    def meter(self, name: str) -> PipelineMeter:
        """The counters of pipeline ``name``, over all its runs (SPEC §9)."""
        return self._slots[name].meter

    def runs(self) -> list[Run]:
        """Every run in progress."""
        out = [s.run for s in self._slots.values() if s.run is not None and not s.run.done.is_set()]
        for slot in self._slots.values():
            out.extend(slot.request_runs)
        return out

    async def shutdown(self) -> None:
        """Stop every run: graceful for ``shutdown_timeout`` seconds, then abort."""
        self.shutting_down = True
        self.watchdog.stop()
        runs = self.runs()
        self.log.info("shutdown_started", runs=len(runs), timeout=self.shutdown_timeout)
        for run in runs:
            run.stop()
        await self._drain(runs, "shutdown")
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=ABORT_GRACE)
        self.log.info("shutdown_complete")

    async def reload(
        self,
        specs: Mapping[str, PipelineSpec],
        changed: Iterable[str],
        *,
        feeds: Mapping[str, Feed] | None = None,
        start: Iterable[str] = (),
    ) -> None:
        """Apply a reloaded config: restart the ``changed`` pipelines, leave the others.

        ``specs`` is the new set of pipelines. A changed pipeline (new, edited, or gone
        from ``specs``) drains like a shutdown: its source stops, in-flight chunks finish
        (bounded by ``shutdown_timeout``, then aborted) and its run ends with
        ``complete(reason=reload)``; those named in ``start`` then begin a new run at
        once, with the new definition and code and the feed given in ``feeds``.
        """
        feeds, start = feeds or {}, set(start)
        waits = []
        for name in dict.fromkeys(changed):
            slot = self._slots.get(name)
            spec = specs.get(name)
            if slot is None:
                if spec is not None:
                    slot = _Slot(spec, feeds.get(name), meter=PipelineMeter(name))
                    self._slots[name] = slot
                    if name in start and not self.shutting_down:
                        self._start_slot(slot)
                continue
            waits.append(self._replace(name, slot, spec, feeds.get(name), name in start))
        await asyncio.gather(*waits)
        self._slots = {n: self._slots[n] for n in specs if n in self._slots}

    async def _replace(
        self, name: str, slot: _Slot, spec: PipelineSpec | None, feed: Feed | None, again: bool
    ) -> None:
        """Drain one pipeline's runs (reason ``reload``), then hand it its new definition."""
        old = [r for r in (slot.run, *slot.request_runs) if r is not None and not r.done.is_set()]
        again, task = again and spec is not None, slot.task
        if task is not None and not task.done():
            slot.successor = (spec or slot.spec, feed, again)
        else:
            slot.spec, slot.feed = spec or slot.spec, feed
            if again and not self.shutting_down:
                self._start_slot(slot)
        for run in old:
            run.stop("reload")
        await self._drain(old, "reload")
        if task is not None:  # its successor is started by the time this returns
            await asyncio.gather(task, return_exceptions=True)

    async def _drain(self, runs: list[Run], reason: Reason) -> None:
        """Wait for ``runs`` to end: ``shutdown_timeout`` seconds, then abort them."""
        if not runs:
            return
        waits = [asyncio.ensure_future(r.done.wait()) for r in runs]
        _, pending = await asyncio.wait(waits, timeout=self.shutdown_timeout)
        for run in runs:
            if not run.done.is_set():
                self.log.warning(f"{reason}_timeout", pipeline=run.name, run=run.id)
                run.abort(reason)
        for w in pending:
            w.cancel()
        # An aborted run ends within ABORT_GRACE (+ its sinks' cancellation); never wait
        # longer, whatever its stages do.
        ends = [asyncio.ensure_future(r.done.wait()) for r in runs]
        _, stuck = await asyncio.wait(ends, timeout=2 * ABORT_GRACE)
        for w in stuck:
            w.cancel()
        if stuck:
            self.log.error(f"{reason}_incomplete", runs=len(stuck))

    def state(self, name: str) -> dict[str, Any]:
        """The JSON state of one pipeline, as served by ``GET /pipelines/{name}``."""
        slot = self._slots[name]
        spec, run = slot.spec, slot.run
        status = "pending" if run is None or run.state == "pending" else run.state
        return {
            "name": name,
            "description": mask(spec.config.description),
            "trigger": spec.config.trigger,
            "state": status,
            "run": run.id if run else None,
            "runs": slot.runs,
            "counts": dict(run.counts) if run else {},
            "stats": run.stats() if run else None,
            "reason": run.reason if run else None,
        }
