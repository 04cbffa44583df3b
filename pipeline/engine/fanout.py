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
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, BinaryIO

from pipeline.engine.acks import Ack, release_all, retain_all
from pipeline.log import get_logger
from pipeline.stage import ResolvedStage, StageMeta, meta_of, sink
from pipeline.types import Envelope

__all__ = ["Fanout", "stdout_stage"]

Publish = Callable[[Envelope, bytes], None]
OnReject = Callable[[str, BaseException, Any, "tuple[Ack, ...] | None"], None]
"""``(sink id, error, chunk, acks)``: a confirming sink rejected one chunk's envelope.

``acks`` is None when the rejected envelope was not a chunk's (``starting``,
``chunk_error``, ``complete``...): that is only logged, and counts as accepted, so a
rejection can never loop through the sink that rejected it.
"""
_END: Any = object()
CANCEL_GRACE = 0.2
"""Seconds a cancelled sink gets to end (its cleanup) before it is left behind."""
MIN_GRACE = 0.05
"""Seconds a sink still gets past the deadline (the stdout sink writes `complete`)."""


class _Flush:
    """A marker in a sink's queue: set once the sink accepted everything before it."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = asyncio.Event()


class _Pending:
    """Counts the sinks that still have to accept one acknowledged envelope."""

    __slots__ = ("acks", "left")

    def __init__(self, acks: tuple[Ack, ...]) -> None:
        self.acks = acks
        self.left = 1

    def accept(self) -> None:
        self.left -= 1
        if self.left == 0:
            release_all(self.acks)


class _Delivery:
    """One item for a confirming sink; it says when the item is written (`Delivery`)."""

    __slots__ = ("_env", "_pending", "_worker", "item")

    def __init__(self, item: Any, env: Envelope, pending: _Pending | None, worker: _Worker):
        self.item = item
        self._env: Envelope | None = env
        self._pending = pending
        self._worker = worker

    def accept(self) -> None:
        """The item is written; counts as accepted by this sink."""
        if self._env is None:
            return
        self._env = None
        if self._pending is not None:
            self._pending.accept()
        self._worker.answered()

    def reject(self, error: BaseException) -> None:
        """This item cannot be written: its chunk becomes a ``chunk_error``."""
        env, pending = self._env, self._pending
        if env is None:
            return
        self._env = None
        if env.get("status") != "processing":  # not a chunk: nothing to turn into an error
            self._worker.rejected(error, None, None)
            self.accept_after_reject(pending)
            return
        acks: tuple[Ack, ...] = ()
        if pending is not None:
            acks = pending.acks
            retain_all(acks, 1)  # released again once the chunk_error is delivered
            pending.accept()
        self._worker.rejected(error, env["data"], acks)
        self._worker.answered()

    def accept_after_reject(self, pending: _Pending | None) -> None:
        if pending is not None:
            pending.accept()
        self._worker.answered()


class _Worker:
    """One sink: its queue of payloads (in order, markers included) and its task.

    The queue is a plain list the run appends to and the sink's task takes whole: what
    is ready when the sink asks is one batch (`take`). ``held`` pairs an index in
    ``items`` with the `_Pending` of an acknowledged envelope; ``marks`` are the
    indexes of markers (`_Flush`, `_END`), so a batch sink splits a batch without
    looking at every item. The bound (``limit``) counts what is queued and what the
    sink took and has not finished (``inflight``), so the run is never more than the
    buffer ahead of the sink.
    """

    def __init__(
        self,
        stage: ResolvedStage,
        *,
        dead_letter: bool,
        buffer: int,
        on_reject: OnReject | None = None,
    ) -> None:
        self.stage = stage
        meta = stage.meta or StageMeta(role="sink")
        self.receives = meta.receives
        self.stream = meta.stream
        self.batch = meta.batch
        self.confirm = meta.confirm
        self.dead_letter = dead_letter
        self.limit = max(1, buffer)
        self.inflight = 0
        self.items: list[Any] = []
        self.held: list[tuple[int, _Pending]] = []
        self.marks: list[int] = []
        self.ready: asyncio.Future[None] | None = None
        self.room: asyncio.Future[None] | None = None
        self.dead = False
        self.task: asyncio.Task[None] | None = None
        self.outstanding = 0
        self.settled = asyncio.Event()
        self.settled.set()
        self._on_reject = on_reject

    def put(self, payload: Any, pending: _Pending | None) -> None:
        """Queue one payload (never waits: the run waits for `room` when it is full)."""
        if pending is not None:
            self.held.append((len(self.items), pending))
        self.items.append(payload)
        if self.ready is not None:
            self.put_done()

    def put_done(self) -> None:
        """Wake the sink waiting in `take`."""
        ready = self.ready
        if ready is not None:
            self.ready = None
            if not ready.done():
                ready.set_result(None)

    def mark(self, marker: Any) -> None:
        """Queue a marker (`_Flush`, `_END`); markers do not count against the bound."""
        self.marks.append(len(self.items))
        self.put(marker, None)

    @property
    def full(self) -> bool:
        """More than ``limit`` items queued or in the sink's hands: the run waits."""
        return len(self.items) + self.inflight > self.limit

    async def take(self) -> tuple[list[Any], list[tuple[int, _Pending]], list[int]]:
        """Wait until something is queued; take all of it (one batch)."""
        while not self.items:
            ready = self.ready = asyncio.get_running_loop().create_future()
            try:
                await ready
            finally:
                self.ready = None
        batch = self.items, self.held, self.marks
        self.items, self.held, self.marks = [], [], []
        self.inflight += len(batch[0])
        return batch

    def finished(self, n: int) -> None:
        """The sink is done with ``n`` items it took: wake the run if there is room."""
        self.inflight -= n
        if self.room is not None and len(self.items) + self.inflight <= self.limit:
            self.wake()

    def wake(self) -> None:
        """Wake the run if it waits for room in this queue."""
        room = self.room
        if room is not None:
            self.room = None
            if not room.done():
                room.set_result(None)

    def drop(self) -> None:
        """Forget what is queued (the sink failed or was given up)."""
        self.items, self.held, self.marks = [], [], []
        self.inflight = 0
        self.wake()

    def answered(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.settled.set()

    def rejected(self, error: BaseException, chunk: Any, acks: tuple[Ack, ...] | None) -> None:
        """Report a rejection; ``acks`` None: not a chunk's envelope (only logged)."""
        if self._on_reject is not None:
            self._on_reject(self.stage.id, error, chunk, acks)
        elif acks:
            release_all(acks)


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
            _Worker(s, dead_letter=False, buffer=buffer, on_reject=on_reject) for s in sinks
        ]
        if dead_letter is not None:
            self._workers.append(
                _Worker(dead_letter, dead_letter=True, buffer=buffer, on_reject=on_reject)
            )

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

    def _give_up(self, w: _Worker) -> None:
        if not w.dead:
            w.dead = True
            w.wake()
            if w.task is not None:
                w.task.cancel()
            log = get_logger()
            log.warning("sink_abandoned", stage=w.stage.id, hint="still busy at shutdown")

    async def _room(self, full: list[_Worker]) -> None:
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

    def line_sinks(self) -> tuple[_Worker, ...] | None:
        """The sinks a ``processing`` envelope goes to when each takes plain lines (no
        confirmation); None when some sink wants more (`offer` then does the work)."""
        takers = [w for w in self._workers if not w.dead_letter]
        if any(w.confirm or w.receives != "lines" for w in takers):
            return None
        return tuple(takers)

    async def room(self, full: list[_Worker]) -> None:
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

    def queue_lines(self, sinks: tuple[_Worker, ...], lines: list[bytes]) -> list[_Worker] | None:
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

    def queue(self, env: Envelope, line: bytes, acks: tuple[Ack, ...] = ()) -> list[_Worker] | None:
        """`offer` without the wait: queue now, return the sinks now full (or None)."""
        if self.publish is not None:
            self.publish(env, line)
        pending = _Pending(acks) if acks else None
        status = env["status"]
        full: list[_Worker] | None = None
        for w in self._workers:  # `_Worker.wants`, `payload` and `put`, inlined: per chunk
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
                w.put(_Delivery(payload, env, pending, w), None)
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
        waits: list[tuple[_Worker, _Flush]] = []
        for w in self._workers:
            if w.dead or w.task is None or w.task.done():
                continue
            marker = _Flush()
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
                w.mark(_END)
        tasks = [w.task for w in self._workers if w.task is not None]
        if tasks:
            await self._race(tasks, every=True)
        for w in self._workers:
            if w.task is not None and not w.task.done():
                self._give_up(w)
        if tasks:  # a sink that ignores cancellation is left behind, not waited for
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)

    async def _run(self, w: _Worker) -> None:
        try:
            if w.batch:
                await self._run_batches(w)
            elif w.stream:
                await self._run_stream(w)
            else:
                await self._run_calls(w)
        except Exception as exc:
            self._fail(w, exc)
        finally:
            w.wake()

    def _fail(self, w: _Worker, exc: BaseException) -> None:
        w.dead = True
        w.settled.set()
        w.drop()
        self.failures.append((w.stage.id, exc))
        if self.on_failure is not None:
            self.on_failure(w.stage.id, exc)

    async def _run_calls(self, w: _Worker) -> None:
        stage = w.stage
        fn = functools.partial(stage.fn, **stage.params) if stage.params else stage.fn
        is_async = stage.calling == "async"
        while True:
            items, held, _ = await w.take()
            held.append((-1, None))  # type: ignore[arg-type]  # a sentinel: never matched
            h = 0
            for i, payload in enumerate(items):
                w.finished(1)
                if payload is _END:
                    return
                if type(payload) is _Flush:
                    payload.event.set()
                    continue
                if stage.blocking:
                    await asyncio.to_thread(fn, payload)
                elif is_async:
                    await fn(payload)
                else:
                    result = fn(payload)
                    if inspect.isawaitable(result):
                        await result
                if held[h][0] == i:
                    held[h][1].accept()
                    h += 1

    async def _run_stream(self, w: _Worker) -> None:
        last: list[_Pending | None] = [None]
        finished = [False]

        async def items() -> AsyncIterator[Any]:
            while True:
                batch, held, _ = await w.take()
                held.append((-1, None))  # type: ignore[arg-type]  # a sentinel: never matched
                h = 0
                for i, payload in enumerate(batch):
                    w.finished(1)
                    if payload is _END:
                        finished[0] = True
                        return
                    if type(payload) is _Flush:
                        payload.event.set()
                        continue
                    keep = None
                    if held[h][0] == i:
                        keep = held[h][1]
                        h += 1
                    last[0] = keep
                    yield payload
                    if keep is not None:  # it asks for the next one: this one is accepted
                        last[0] = None
                        keep.accept()

        await w.stage.fn(items(), **w.stage.params)
        _check_finished(finished[0])
        if last[0] is not None:
            last[0].accept()

    async def _run_batches(self, w: _Worker) -> None:
        """A batch sink: each list of ready payloads at once, accepted when it asks for
        the next list (or returns after the last)."""
        last: list[list[_Pending]] = [[]]
        finished = [False]

        async def batches() -> AsyncIterator[list[Any]]:
            while True:
                items, held, marks = await w.take()
                if not marks and not held:  # the common case: only payloads
                    yield items
                    w.finished(len(items))
                    continue
                marks.append(len(items))
                start, h = 0, 0
                for m in marks:
                    if m > start:
                        taken = []
                        while h < len(held) and held[h][0] < m:
                            taken.append(held[h][1])
                            h += 1
                        last[0] = taken
                        yield items if start == 0 and m == len(items) else items[start:m]
                        last[0] = []
                        for p in taken:  # it asks for the next batch: these are accepted
                            p.accept()
                    w.finished(min(m + 1, len(items)) - start)
                    if m == len(items):
                        break
                    marker = items[m]
                    if marker is _END:
                        finished[0] = True
                        return
                    marker.event.set()
                    start = m + 1

        await w.stage.fn(batches(), **w.stage.params)
        _check_finished(finished[0])
        for p in last[0]:
            p.accept()


def _check_finished(finished: bool) -> None:
    if not finished:
        msg = "sink stopped reading before the end of the run"
        raise RuntimeError(msg)


@sink(stream=True, receives="lines", batch=True)
async def _stdout(batches: AsyncIterator[list[bytes]], *, out: BinaryIO | None = None) -> None:
    """Write each batch of ready lines to ``out`` (default: stdout) in one call, then flush."""
    async for lines in batches:
        to = sys.stdout.buffer if out is None else out
        to.write(b"".join(lines))
        to.flush()


def stdout_stage(out: BinaryIO | None = None) -> ResolvedStage:
    """The implicit sink of ``pipeline run``: every envelope to ``out`` (default: stdout).

    What is ready is written in one call and flushed at once (a batch sink): a lone
    envelope is written at once, a burst in one write instead of one per line.
    """
    return ResolvedStage(
        id="stdout",
        kind="sink",
        fn=_stdout,
        meta=meta_of(_stdout),
        params={} if out is None else {"out": out},
    )
