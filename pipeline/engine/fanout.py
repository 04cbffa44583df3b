"""Deliver envelopes to sinks: one bounded queue and one task per sink.

A slow sink slows the run (sinks are part of the pipeline, so backpressure reaches the
source); the hub's ``publish`` callback never blocks, so a slow HTTP client never does.
Each sink's lifecycle is owned here: a stream sink (``@sink(stream=True)``) is called
once with an async iterator and keeps its resource open while it iterates; the iterator
ends when the run ends, so the sink flushes and closes also on error, cancellation and
shutdown. A sink that raises has failed for good: it receives nothing more and the run
ends with ``error``. An envelope's acks are released once every sink meant to receive
it has accepted it (a plain sink: its call returned; a stream sink: it asked for the
next item, or returned after the last one).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from pipeline.engine.acks import Ack, release_all
from pipeline.stage import ResolvedStage, StageMeta
from pipeline.types import Envelope

__all__ = ["Fanout", "stdout_stage"]

Publish = Callable[[Envelope, bytes], None]
_END: Any = object()


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


class _Worker:
    def __init__(self, stage: ResolvedStage, *, dead_letter: bool, buffer: int) -> None:
        self.stage = stage
        meta = stage.meta or StageMeta(role="sink")
        self.receives = meta.receives
        self.stream = meta.stream
        self.dead_letter = dead_letter
        self.queue: asyncio.Queue[tuple[Any, _Pending | None]] = asyncio.Queue(buffer)
        self.dead = False
        self.task: asyncio.Task[None] | None = None

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
        buffer: int = 256,
    ) -> None:
        self.publish = publish
        self.on_failure = on_failure
        self.failures: list[tuple[str, BaseException]] = []
        self._workers = [_Worker(s, dead_letter=False, buffer=buffer) for s in sinks]
        if dead_letter is not None:
            self._workers.append(_Worker(dead_letter, dead_letter=True, buffer=buffer))

    @property
    def direct(self) -> bool:
        """True when there is no sink: delivery is a plain call of ``publish``."""
        return not self._workers and self.publish is not None

    async def start(self) -> None:
        """Start one task per sink."""
        loop = asyncio.get_running_loop()
        for w in self._workers:
            w.task = loop.create_task(self._run(w), name=f"sink {w.stage.id}")

    async def deliver(self, env: Envelope, line: bytes, acks: tuple[Ack, ...] = ()) -> None:
        """Give one envelope to the hub and to each sink; waits while a sink's queue is full."""
        if self.publish is not None:
            self.publish(env, line)
        pending = _Pending(acks) if acks else None
        status = env["status"]
        for w in self._workers:
            if w.dead or not w.wants(status):
                continue
            if pending is not None:
                pending.left += 1
            item = (w.payload(env, line), pending)
            if w.queue.full():
                await w.queue.put(item)
            else:
                w.queue.put_nowait(item)
        if pending is not None:
            pending.accept()

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
            await w.queue.put((marker, None))
            waits.append((w, marker))
        for w, marker in waits:
            if w.task is None:  # pragma: no cover - started above
                continue
            flushed = asyncio.ensure_future(marker.event.wait())
            try:
                await asyncio.wait({flushed, w.task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                flushed.cancel()

    async def close(self, timeout: float | None = None) -> None:
        """End every sink's input, wait for them to flush and close, then stop them."""
        tasks = [w.task for w in self._workers if w.task is not None]
        try:
            async with asyncio.timeout(timeout):
                for w in self._workers:
                    if not w.dead:
                        await w.queue.put((_END, None))
                if tasks:
                    await asyncio.wait(tasks)
        except TimeoutError:
            pass
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, w: _Worker) -> None:
        try:
            if w.stream:
                await self._run_stream(w)
            else:
                await self._run_calls(w)
        except Exception as exc:
            self._fail(w, exc)

    def _fail(self, w: _Worker, exc: BaseException) -> None:
        w.dead = True
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
                last[0] = pending
                yield payload
                if pending is not None:  # it asks for the next one: this one is accepted
                    last[0] = None
                    pending.accept()

        await w.stage.fn(items(), **w.stage.params)
        if not finished[0]:
            msg = "sink stopped reading before the end of the run"
            raise RuntimeError(msg)
        if last[0] is not None:
            last[0].accept()


def _write_stdout(line: bytes) -> None:
    out = sys.stdout.buffer
    out.write(line)
    out.flush()


def stdout_stage() -> ResolvedStage:
    """The implicit sink of ``pipeline run``: every envelope to stdout, flushed per line."""
    return ResolvedStage(
        id="stdout", kind="sink", fn=_write_stdout, meta=StageMeta("sink", receives="lines")
    )
