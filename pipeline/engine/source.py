"""Read a run's source: chunks in, plain maps applied, fair to the event loop.

`SourceReader` drives the source (an async generator, a sync generator, or a function
returning an iterable), turns `Message` and `BadChunk` into chain items, applies the
leading plain maps (sync, or ``async def`` awaited in place) right where each chunk is
read (no async hop for them), yields to the event loop regularly, and can be stopped
gracefully at a chunk boundary.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable
from contextlib import aclosing
from typing import Any, Literal

from pipeline.engine.acks import Ack, AckRunner, Probe
from pipeline.engine.batch import Batch
from pipeline.engine.items import Carry, failure
from pipeline.engine.maps import (
    apply_timed,
    failed,
    fuse,
    fuse_async,
    fuse_timed_async,
    steps_of,
)
from pipeline.meter import LATENCY_INTERVAL, SAMPLE_EVERY, PipelineMeter, current_source
from pipeline.stage import ResolvedStage
from pipeline.types import BadChunk, Message

__all__ = [
    "FAIRNESS_EVERY",
    "FAIRNESS_SECONDS",
    "SourceReader",
]

FAIRNESS_EVERY = 256
"""The source yields to the event loop at least once every this many chunks..."""
FAIRNESS_SECONDS = 0.001
"""...or sooner, once this long has passed since it last yielded (checked every 16)."""
_CHECK_EVERY = 16
_SAMPLE_TICKS = SAMPLE_EVERY // _CHECK_EVERY
"""One check in this many times the maps on its chunk (one chunk in `SAMPLE_EVERY`)."""


def _open(stage: ResolvedStage, params: dict[str, Any]) -> AsyncIterator[Any]:
    made = stage.fn(**params)
    if isinstance(made, AsyncIterator):
        return made
    if isinstance(made, AsyncIterable):
        return aiter(made)
    if inspect.isawaitable(made):
        return _awaited(made)
    return _from_sync(iter(made), blocking=stage.blocking)


async def _awaited(made: Any) -> AsyncIterator[Any]:
    result = await made
    if isinstance(result, AsyncIterable):
        async for item in result:
            yield item
    else:
        for item in result:
            yield item


async def _from_sync(it: Iterable[Any], *, blocking: bool) -> AsyncIterator[Any]:
    done = object()
    iterator = iter(it)
    if blocking:
        while (item := await asyncio.to_thread(next, iterator, done)) is not done:
            yield item
    else:
        for item in iterator:
            yield item


class SourceReader:
    """Reads the source as an async generator of chain items; can be stopped gracefully.

    `stop` tells the source with a `CancelledError`: thrown into the wait it is in
    (sleeping, polling a broker), or at its ``yield`` when it is not waiting. A source
    that does not catch it ends at once. A source that does (a broker source holding
    messages it already fetched) may yield those and then return; the reader takes them
    all (bounded by the run's shutdown timeout). One that caught it in its wait and
    yields instead is told again at that ``yield``, so a stop swallowed on the way (by a
    client library) cannot keep it reading. A source that raises ends the stream too;
    the exception is kept in `error` for the engine.
    """

    def __init__(
        self,
        stage: ResolvedStage,
        runner: AckRunner,
        params: dict[str, Any] | None = None,
        meter: PipelineMeter | None = None,
    ) -> None:
        self.stage = stage
        self.params = dict(stage.params) if params is None else params
        self.runner = runner
        self.meter = meter or PipelineMeter("")
        self.counts = self.meter.source_meter(stage.id)
        self._last_probe = 0.0
        self._probe_tries = 0
        self.error: BaseException | None = None
        self.stopping = False
        self._waiting: asyncio.Task[Any] | None = None
        self._told: Literal["", "cancel", "throw"] = ""  # how the source was told

    def stop(self) -> None:
        """Stop reading: tell the source, take what it still yields, then end."""
        if self.stopping:
            return
        self.stopping = True
        if self._waiting is not None:
            self._told = "cancel"
            self._waiting.cancel()

    def _item(self, raw: Message | BadChunk) -> Any:
        if type(raw) is Message:
            if raw.ack is None:
                return raw.data
            return Carry(raw.data, (Ack(raw.ack, self.runner, raw.on_envelope),))
        assert type(raw) is BadChunk
        self.counts.bad += 1
        acks = () if raw.ack is None else (Ack(raw.ack, self.runner, raw.on_envelope),)
        fail = failure(self.stage.id, raw.error, raw.raw)
        return Carry(fail, acks) if acks else fail

    async def items(
        self, maps: Iterable[ResolvedStage] = (), out: Batch | None = None
    ) -> AsyncIterator[Any]:
        """Yield the source's chunks as chain items until it ends, fails or is stopped.

        ``maps`` are plain maps (sync or async) applied right here, saving a hop per chunk.
        With ``out``, items are added to that batch instead of being yielded: a chain of
        plain maps then costs no async-generator hop at all beyond the source's own.
        """
        maps = list(maps)
        steps = steps_of(maps, self.meter)
        awaited = [s.calling == "async" for s in maps]
        apply = fuse(steps) if steps and not any(awaited) else None
        plain = None if apply is None else fuse(steps, plain=True)
        apply_async = fuse_async(steps, awaited) if any(awaited) else None
        timed_async = fuse_timed_async(steps, awaited) if any(awaited) else None
        counts = self.counts
        upstream: Any = counts
        for _, _, m in steps:  # their calls are derived, not counted one by one
            m.upstream = upstream
            upstream = m
        current_source.set(counts)
        try:
            source = _open(self.stage, self.params)
        except Exception as exc:
            self.error = exc
            return
        task = asyncio.current_task()
        step = source.__anext__
        chunks: list[Any] = [] if out is None else out.chunks
        arm = None if out is None else out.arm
        flush_at = 0 if out is None else out.every
        urgent = out is not None and out.failures_stop  # a failure goes out at once
        clock = asyncio.get_running_loop().time
        every, ticks = _CHECK_EVERY, 0
        budget, since_yield, last_yield = every, 0, clock()
        timed = True  # the maps are timed on this round's first chunk (one round in 4)
        # `_waiting` is the task while it waits for the source (so `stop` can cancel that
        # wait) and None while it waits for anything else (a sink's room, its turn)
        async with aclosing(source):  # type: ignore[type-var]
            self._waiting = task
            try:
                while True:
                    if self.stopping:
                        self._waiting = None
                        pull = self._pull(source, step, task)
                        if pull is None:
                            return
                    else:  # `_pull`'s common case, inlined: per chunk
                        pull = step()
                    try:
                        raw = await pull
                    except StopAsyncIteration:
                        return
                    except asyncio.CancelledError:
                        if self.stopping and task is not None and task.uncancel() == 0:
                            return
                        raise
                    except Exception as exc:
                        self.error = exc
                        return
                    counts.read += 1
                    if self.stopping and self._told == "cancel" and task is not None:
                        task.uncancel()  # the source caught the stop: tell it again at its yield
                        self._told = ""
                    kind = type(raw)
                    if kind is Message or kind is BadChunk:
                        item, maps_now = self._item(raw), apply
                    else:  # what the source made: no `Carry` or `Failure` to look for
                        item, maps_now = raw, plain
                    if budget == every:  # one chunk in 16: maybe a latency probe; timed in 64
                        started = time.perf_counter()
                        if apply_async is not None:
                            self._waiting = None
                            if timed:
                                item = await timed_async(item)  # type: ignore[misc]
                            else:
                                item = await apply_async(item)
                            self._waiting = task
                        elif apply is not None:
                            item = apply_timed(item, steps) if timed else apply(item)
                        item = self._probed(item, started)
                        if item is None and self._probe_tries:
                            budget += 1  # dropped while a probe is due: the next one is sampled
                    elif maps_now is not None:
                        item = maps_now(item)
                    elif apply_async is not None:  # async maps: not waiting for the source
                        self._waiting = None
                        item = await apply_async(item)
                        self._waiting = task
                    if item is not None:
                        if arm is None:
                            self._waiting = None
                            yield item
                            self._waiting = task
                        else:
                            if not chunks:
                                arm()
                            chunks.append(item)
                            if urgent and failed(item):
                                out.flush()  # type: ignore[union-attr]
                    budget -= 1
                    if not budget:
                        budget = every
                        ticks += 1
                        timed = ticks % _SAMPLE_TICKS == 0
                        if out is not None:  # hand the batch on; wait if a sink is full
                            if len(chunks) >= flush_at:
                                out.flush()
                            if out.due:
                                self._waiting = None
                                await out.wait()
                                self._waiting = task
                        since_yield += every
                        now = clock()
                        if since_yield >= FAIRNESS_EVERY or now - last_yield >= FAIRNESS_SECONDS:
                            self._waiting = None
                            await asyncio.sleep(0)
                            self._waiting = task
                            since_yield, last_yield = 0, clock()
            finally:
                self._waiting = None

    def _probed(self, item: Any, started: float) -> Any:
        """Attach a latency probe to a sampled chunk now and then (``started``: when the
        maps, timed, began on it).

        When a probe is due and the chunk is dropped, the next chunks are sampled too
        (at most `_CHECK_EVERY` of them), so a filter cannot starve the latency histogram.
        """
        if started - self._last_probe < LATENCY_INTERVAL:
            return item
        if item is None:
            tries = self._probe_tries or _CHECK_EVERY + 1
            self._probe_tries = tries - 1
            if tries == 1:  # gave up: try again after the next interval
                self._last_probe = started
            return None
        self._probe_tries = 0
        if failed(item):
            return item
        self._last_probe = started
        probe = Probe(self.meter.latency, started)
        if type(item) is Carry:
            return Carry(item.chunk, (*item.acks, probe))
        return Carry(item, (probe,))

    def _pull(
        self, source: AsyncIterator[Any], step: Any, task: asyncio.Task[Any] | None
    ) -> Awaitable[Any] | None:
        """The next read: a plain one, the stop thrown in at the source's ``yield``, or none.

        A source told at its ``yield`` that catches the stop is read until it returns (it
        is handing over what it already fetched). A source told by cancelling its wait
        that yields anyway is told again, at that ``yield``, before anything more is read.
        """
        if self.stopping and not self._told:
            self._told = "throw"
            athrow = getattr(source, "athrow", None)
            return None if athrow is None else athrow(asyncio.CancelledError())
        if not self.stopping:
            self._waiting = task
        pulled: Awaitable[Any] = step()
        return pulled
