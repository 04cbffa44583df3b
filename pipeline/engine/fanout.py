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
driver, and the task that emits rejections): a delivery that has to wait for room in a
full queue holds the turn, and a delivery that comes meanwhile waits for it
(``_wait_turn``), instead of slipping into a queue that just got room ahead of it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, BinaryIO

from pipeline.engine.acks import Ack, release_all, retain_all
from pipeline.log import get_logger
from pipeline.stage import ResolvedStage, StageMeta
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
        self.confirm = meta.confirm
        self.dead_letter = dead_letter
        self.queue: asyncio.Queue[tuple[Any, _Pending | None]] = asyncio.Queue(buffer)
        self.dead = False
        self.task: asyncio.Task[None] | None = None
        self.outstanding = 0
        self.settled = asyncio.Event()
        self.settled.set()
        self._on_reject = on_reject

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

    def wants(self, status: str) -> bool:
        if self.dead_letter:
            return status == "chunk_error"
        return self.receives != "data" or status == "processing"

    def payload(self, env: Envelope, line: bytes) -> Any:
        if self.receives == "lines":
            return line
        if self.receives == "data":
            return env["data"]
        return env


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
        self._waiting = False  # a delivery waits for room in a queue: it holds the turn
        self._turns: deque[asyncio.Future[None]] = deque()  # deliveries after it, in order
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
            if w.task is not None:
                w.task.cancel()
            log = get_logger()
            log.warning("sink_abandoned", stage=w.stage.id, hint="still busy at shutdown")

    async def _put(self, w: _Worker, item: tuple[Any, Any]) -> None:
        """Put ``item`` in a full queue; in a hurry, give the sink up if it takes too long."""
        put = asyncio.ensure_future(w.queue.put(item))
        try:
            await self._race((put,))
        finally:
            if not put.done():
                put.cancel()
                self._give_up(w)

    @property
    def direct(self) -> bool:
        """True when there is no sink: delivery is a plain call of ``publish``."""
        return not self._workers and self.publish is not None

    def queued(self) -> dict[str, int]:
        """Envelopes waiting per sink (the dead-letter sink included), by sink id."""
        return {w.stage.id: w.queue.qsize() for w in self._workers}

    async def start(self) -> None:
        """Start one task per sink."""
        loop = asyncio.get_running_loop()
        for w in self._workers:
            w.task = loop.create_task(self._run(w), name=f"sink {w.stage.id}")

    async def deliver(self, env: Envelope, line: bytes, acks: tuple[Ack, ...] = ()) -> None:
        """Give one envelope to the hub and to each sink; waits while a sink's queue is full.

        Envelopes reach every sink in the order of the calls, also when a call waits.
        """
        if self._waiting:  # an earlier envelope waits for room: this one goes after it
            await self._wait_turn()
        try:
            if self.publish is not None:
                self.publish(env, line)
            pending = _Pending(acks) if acks else None
            status = env["status"]
            for w in self._workers:
                if w.dead or not w.wants(status):
                    continue
                if pending is not None:
                    pending.left += 1
                if w.confirm:
                    w.outstanding += 1
                    w.settled.clear()
                    item = (_Delivery(w.payload(env, line), env, pending, w), pending)
                else:
                    item = (w.payload(env, line), pending)
                if w.queue.full():
                    self._waiting = True
                    await self._put(w, item)
                else:
                    w.queue.put_nowait(item)
            if pending is not None:
                pending.accept()
        finally:
            if self._waiting:  # only the delivery holding the turn gets here with it set
                self._pass_turn()

    async def _wait_turn(self) -> None:
        """Wait until every delivery that came before this one has handed its envelope on."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._pass_turn()  # it was handed the turn, then cancelled: hand it on
            else:
                self._turns.remove(turn)
            raise

    def _pass_turn(self) -> None:
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)  # the next delivery holds the turn now
                return
        self._waiting = False

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
            await self._put(w, (marker, None))
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
                await self._put(w, (_END, None))
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
            if w.stream:
                await self._run_stream(w)
            elif w.stage.fn is _write_stdout:
                await self._run_stdout(w)
            else:
                await self._run_calls(w)
        except Exception as exc:
            self._fail(w, exc)

    def _fail(self, w: _Worker, exc: BaseException) -> None:
        w.dead = True
        w.settled.set()
        while not w.queue.empty():
            w.queue.get_nowait()
        self.failures.append((w.stage.id, exc))
        if self.on_failure is not None:
            self.on_failure(w.stage.id, exc)

    async def _run_calls(self, w: _Worker) -> None:
        stage = w.stage
        fn = functools.partial(stage.fn, **stage.params) if stage.params else stage.fn
        is_async = stage.calling == "async"
        queue = w.queue
        while True:
            payload, pending = await queue.get()
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
            if pending is not None:
                pending.accept()

    async def _run_stdout(self, w: _Worker) -> None:
        """The implicit stdout sink: the lines that are ready in one write, then one flush.

        It takes what its queue holds (at most `STDOUT_BATCH` bytes), writes and flushes
        it, then accepts those envelopes: a lone envelope is written at once, a burst in
        one call instead of one write and flush per line.
        """
        queue, out = w.queue, w.stage.params.get("out")
        buf = bytearray()
        taken: list[_Pending] = []
        markers: list[_Flush] = []
        while True:
            payload, pending = await queue.get()
            done = False
            while True:
                if payload is _END:
                    done = True
                    break
                if type(payload) is _Flush:
                    markers.append(payload)
                else:
                    buf += payload
                    if pending is not None:
                        taken.append(pending)
                if queue.empty() or len(buf) >= STDOUT_BATCH:
                    break
                payload, pending = queue.get_nowait()
            if buf:
                _write_stdout(buf, out)
                buf.clear()
            for p in taken:
                p.accept()
            taken.clear()
            for m in markers:
                m.event.set()
            markers.clear()
            if done:
                return

    async def _run_stream(self, w: _Worker) -> None:
        last: list[_Pending | None] = [None]
        finished = [False]

        async def items() -> AsyncIterator[Any]:
            while True:
                payload, pending = await w.queue.get()
                if payload is _END:
                    finished[0] = True
                    return
                if type(payload) is _Flush:
                    payload.event.set()
                    continue
                keep = None if w.confirm else pending  # a confirming sink accepts itself
                last[0] = keep
                yield payload
                if keep is not None:  # it asks for the next one: this one is accepted
                    last[0] = None
                    keep.accept()

        await w.stage.fn(items(), **w.stage.params)
        if not finished[0]:
            msg = "sink stopped reading before the end of the run"
            raise RuntimeError(msg)
        if last[0] is not None:
            last[0].accept()


STDOUT_BATCH = 256 * 1024
"""The most bytes the implicit stdout sink gathers before one write."""


def _write_stdout(lines: bytes | bytearray, out: BinaryIO | None = None) -> None:
    out = sys.stdout.buffer if out is None else out
    out.write(lines)
    out.flush()


def stdout_stage(out: BinaryIO | None = None) -> ResolvedStage:
    """The implicit sink of ``pipeline run``: every envelope to ``out`` (default: stdout).

    What is ready is written in one call and flushed at once (see `Fanout`).
    """
    return ResolvedStage(
        id="stdout",
        kind="sink",
        fn=_write_stdout,
        meta=StageMeta("sink", receives="lines"),
        params={} if out is None else {"out": out},
    )
