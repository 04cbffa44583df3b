"""Deliver envelopes to sinks: one bounded queue and one task per sink.

A slow sink slows the run (sinks are part of the pipeline, so backpressure reaches the
source); the hub's ``publish`` callback never blocks, so a slow HTTP client never does.
Each sink's lifecycle is owned here: a stream sink (``@sink(stream=True)``) is called
once with an async iterator and keeps its resource open while it iterates; the iterator
ends when the run ends, so the sink flushes and closes also on error, cancellation and
shutdown. A sink that raises has failed for good: it receives nothing more and the run
ends with ``error``. An envelope's acks are released once every sink meant to receive
it has accepted it (a plain sink: its call returned; a stream sink: it asked for the
next item, or returned after the last one; a confirming sink, ``@sink(stream=True,
confirm=True)``: it called `Delivery.accept`). A confirming sink may also reject one
item (`Delivery.reject`): ``on_reject`` hears of it, the run emits a ``chunk_error`` for
that chunk, and the chunk's acks are released once that ``chunk_error`` was delivered.
`Fanout.settle` waits until confirming sinks have answered for everything they got, so
a run's last rejections come before its ``complete``.

Every sink gets envelopes in ``seq`` order, though two coroutines deliver (the run's
driver, and the task that emits rejections): `Fanout.offer` queues an envelope at once,
in the order of the calls, and only then waits for room when a queue is full, so a
delivery can never slip in ahead of one that is waiting.

This module owns the offer (`Fanout.queue`, `Fanout.queue_lines`: the hot path), the
waits (room, flush, settle, close, and the shutdown deadline of `Fanout.hurry`) and the
sinks' tasks and failures. A sink's queue is `pipeline.engine.sinkqueue.Worker`; how
each kind of sink reads it is in `pipeline.engine.sinkloops`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pipeline.engine.acks import Ack
from pipeline.engine.sinkloops import run_batches, run_calls, run_stream
from pipeline.engine.sinkqueue import END, Flush, OnReject, Pending, SinkDelivery, Worker
from pipeline.log import get_logger
from pipeline.stage import ResolvedStage
from pipeline.types import Envelope

__all__ = ["Fanout"]

Publish = Callable[[Envelope, bytes], None]
CANCEL_GRACE = 0.2
"""Seconds a cancelled sink gets to end (its cleanup) before it is left behind."""
MIN_GRACE = 0.05
"""Seconds a sink still gets past the deadline (the stdout sink writes `complete`)."""


class Fanout:
    """Hands each envelope to every sink that wants it, and to the hub's ``publish``."""

    def __init__(
        self,
        sinks: Sequence[ResolvedStage],
        dead_letter: ResolvedStage | None = None,
        *,
        publish: Publish | None = None,
        on_failure: Callable[[str, BaseException], None] | None = None,
        on_reject: OnReject | None = None,
        buffer: int = 256,
    ) -> None:
        self.publish = publish
        self.on_failure = on_failure
        self.failures: list[tuple[str, BaseException]] = []
        self._deadline: float | None = None
        self._hurried = asyncio.Event()
        self._workers = [
            Worker(s, dead_letter=False, buffer=buffer, on_reject=on_reject) for s in sinks
        ]
        if dead_letter is not None:
            self._workers.append(
                Worker(dead_letter, dead_letter=True, buffer=buffer, on_reject=on_reject)
            )

    @property
    def smallest_buffer(self) -> int | None:
        """The fewest envelopes a sink's queue holds before it is full (None: no sink)."""
        return min((w.limit for w in self._workers), default=None)

    def hurry(self, grace: float) -> None:
        """From now on, sinks get ``grace`` seconds in all: a sink still busy then is
        given up (cancelled; its cleanup runs) instead of being waited for. Waits already
        under way are cut short too."""
        if self._deadline is None:
            self._deadline = asyncio.get_running_loop().time() + grace
            self._hurried.set()

    async def _race(self, aws: Sequence[asyncio.Future[Any]], *, every: bool = False) -> None:
        """Wait for the first of ``aws`` (all of them with ``every``); once `hurry` was
        called, never past its deadline."""
        when = asyncio.ALL_COMPLETED if every else asyncio.FIRST_COMPLETED
        pending: set[asyncio.Future[Any]] = set(aws)
        hurried = asyncio.ensure_future(self._hurried.wait())
        try:
            while pending:
                if self._deadline is not None:
                    await asyncio.wait(pending, timeout=self._left(), return_when=when)
                    return
                done, pending = await asyncio.wait(
                    {*pending, hurried}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(hurried)
                if not every and done - {hurried}:
                    return
        finally:
            hurried.cancel()

    def _left(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - asyncio.get_running_loop().time(), MIN_GRACE)

    def _give_up(self, w: Worker) -> None:
        if not w.dead:
            w.dead = True
            w.wake()
            if w.task is not None:
                w.task.cancel()
            log = get_logger()
            log.warning("sink_abandoned", stage=w.stage.id, hint="still busy at shutdown")

    async def _room(self, full: list[Worker]) -> None:
        """Wait until each of ``full`` took its batch (or is gone); in a hurry, give a
        sink up if it takes too long."""
        loop = asyncio.get_running_loop()
        for w in full:
            while w.full and not w.dead and w.task is not None and not w.task.done():
                room = w.room
                if room is None:
                    room = w.room = loop.create_future()
                await self._race((room, w.task))
                if not room.done() and not w.task.done():
                    self._give_up(w)

    def line_sinks(self) -> tuple[Worker, ...] | None:
        """The sinks a ``processing`` envelope goes to when each takes plain lines (no
        confirmation); None when some sink wants more (`offer` then does the work)."""
        takers = [w for w in self._workers if not w.dead_letter]
        if any(w.confirm or w.receives != "lines" for w in takers):
            return None
        return tuple(takers)

    async def room(self, full: list[Worker]) -> None:
        """Wait until each of ``full`` (from `queue`) has room again, as `offer` does."""
        await self._room(full)

    @property
    def direct(self) -> bool:
        """True when there is no sink: delivery is a plain call of ``publish``."""
        return not self._workers and self.publish is not None

    def queued(self) -> dict[str, int]:
        """Envelopes waiting per sink (the dead-letter sink included), by sink id."""
        return {w.stage.id: len(w.items) - len(w.marks) for w in self._workers}

    async def start(self) -> None:
        """Start one task per sink."""
        loop = asyncio.get_running_loop()
        for w in self._workers:
            w.task = loop.create_task(self._run(w), name=f"sink {w.stage.id}")

    def offer(
        self, env: Envelope, line: bytes, acks: tuple[Ack, ...] = ()
    ) -> Awaitable[None] | None:
        """Give one envelope to the hub and queue it for each sink that wants it.

        Returns None, or what to await when a sink's queue is full (backpressure). The
        envelope is queued before this returns, so envelopes reach each sink in the
        order of the calls.
        """
        full = self.queue(env, line, acks)
        return None if full is None else self._room(full)

    def queue_lines(self, sinks: tuple[Worker, ...], lines: list[bytes]) -> list[Worker] | None:
        """Queue ``processing`` lines (no acks) for ``sinks`` (`line_sinks`) at once;
        return the sinks now full (see `room`), or None."""
        full = None
        for w in sinks:
            if w.dead:
                continue
            queued = w.items
            queued += lines
            if w.ready is not None:
                w.put_done()
            if len(queued) + w.inflight > w.limit:
                full = [w] if full is None else [*full, w]
        return full

    def queue(self, env: Envelope, line: bytes, acks: tuple[Ack, ...] = ()) -> list[Worker] | None:
        """`offer` without the wait: queue now, return the sinks now full (or None)."""
        if self.publish is not None:
            self.publish(env, line)
        pending = Pending(acks) if acks else None
        status = env["status"]
        full: list[Worker] | None = None
        for w in self._workers:  # `Worker.wants`, `payload` and `put`, inlined: per chunk
            if w.dead:
                continue
            receives = w.receives
            if w.dead_letter:
                if status != "chunk_error":
                    continue
            elif receives == "data" and status != "processing":
                continue
            payload = line if receives == "lines" else env["data"] if receives == "data" else env
            if pending is not None:
                pending.left += 1
            if w.confirm:
                w.outstanding += 1
                w.settled.clear()
                w.put(SinkDelivery(payload, env, pending, w), None)
            else:
                if pending is not None:
                    w.held.append((len(w.items), pending))
                w.items.append(payload)
                if w.ready is not None:
                    w.put_done()
            if len(w.items) + w.inflight > w.limit:
                full = [w] if full is None else [*full, w]
        if pending is not None:
            pending.accept()
        return full

    async def deliver(self, env: Envelope, line: bytes, acks: tuple[Ack, ...] = ()) -> None:
        """Give one envelope to the hub and to each sink; waits while a sink's queue is full."""
        waiting = self.offer(env, line, acks)
        if waiting is not None:
            await waiting

    async def flush(self) -> None:
        """Wait until every live sink accepted every envelope handed to it so far.

        A sink that fails meanwhile is reported (``on_failure``) before this returns, so
        the run can still end with ``error`` instead of ``complete(finished)``.
        """
        waits: list[tuple[Worker, Flush]] = []
        for w in self._workers:
            if w.dead or w.task is None or w.task.done():
                continue
            marker = Flush()
            w.mark(marker)
            waits.append((w, marker))
        for w, marker in waits:
            if w.task is None or w.dead:
                continue
            flushed = asyncio.ensure_future(marker.event.wait())
            try:
                await self._race((flushed, w.task))
            finally:
                flushed.cancel()
            if not marker.event.is_set() and not w.task.done():
                self._give_up(w)

    async def settle(self, timeout: float | None = None) -> bool:
        """Wait until every live confirming sink answered for every item it got.

        Returns False when ``timeout`` passed first, or the deadline set by `hurry`
        (shutdown: a sink that never answers must not hold the run).
        """
        waits = [
            asyncio.ensure_future(w.settled.wait())
            for w in self._workers
            if w.confirm and not w.dead
        ]
        try:
            async with asyncio.timeout(timeout):
                await self._race(waits, every=True)
        except TimeoutError:
            return False
        finally:
            for wait in waits:
                wait.cancel()
        return all(w.done() and not w.cancelled() for w in waits)

    async def close(self, timeout: float | None = None) -> None:
        """End every sink's input, wait for them to flush and close, then stop them."""
        if timeout is not None:
            self.hurry(timeout)
        for w in self._workers:
            if not w.dead:
                w.mark(END)
        tasks = [w.task for w in self._workers if w.task is not None]
        if tasks:
            await self._race(tasks, every=True)
        for w in self._workers:
            if w.task is not None and not w.task.done():
                self._give_up(w)
        if tasks:  # a sink that ignores cancellation is left behind, not waited for
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)

    async def _run(self, w: Worker) -> None:
        try:
            if w.batch:
                await run_batches(w)
            elif w.stream:
                await run_stream(w)
            else:
                await run_calls(w)
        except Exception as exc:
            self._fail(w, exc)
        finally:
            w.wake()

    def _fail(self, w: Worker, exc: BaseException) -> None:
        w.dead = True
        w.settled.set()
        w.drop()
        self.failures.append((w.stage.id, exc))
        if self.on_failure is not None:
            self.on_failure(w.stage.id, exc)
