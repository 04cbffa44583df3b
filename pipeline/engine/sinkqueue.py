"""One sink's queue: what the run handed it, in order, and what it still has to accept.

`Worker` is the queue and task handle of one sink (the run appends, the sink's task
takes what is ready as one batch); `Pending` counts the sinks that still have to accept
one acknowledged envelope and releases its acks when none is left; `SinkDelivery` is
one item for a confirming sink (`pipeline.Delivery`: accept or reject it); `Flush` and
`END` are the markers `pipeline.engine.fanout.Fanout` puts between payloads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pipeline.engine.acks import Ack, release_all, retain_all
from pipeline.stage import ResolvedStage, StageMeta
from pipeline.types import Envelope

__all__ = ["END", "Flush", "OnReject", "Pending", "SinkDelivery", "Worker"]

OnReject = Callable[[str, BaseException, Any, "tuple[Ack, ...] | None"], None]
"""``(sink id, error, chunk, acks)``: a confirming sink rejected one chunk's envelope.

``acks`` is None when the rejected envelope was not a chunk's (``starting``,
``chunk_error``, ``complete``...): that is only logged, and counts as accepted, so a
rejection can never loop through the sink that rejected it.
"""
END: Any = object()


class Flush:
    """A marker in a sink's queue: set once the sink accepted everything before it."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = asyncio.Event()


class Pending:
    """Counts the sinks that still have to accept one acknowledged envelope."""

    __slots__ = ("acks", "left")

    def __init__(self, acks: tuple[Ack, ...]) -> None:
        self.acks = acks
        self.left = 1

    def accept(self) -> None:
        self.left -= 1
        if self.left == 0:
            release_all(self.acks)


class SinkDelivery:
    """One item for a confirming sink; it says when the item is written (`Delivery`)."""

    __slots__ = ("_env", "_pending", "_worker", "item")

    def __init__(self, item: Any, env: Envelope, pending: Pending | None, worker: Worker):
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

    def accept_after_reject(self, pending: Pending | None) -> None:
        if pending is not None:
            pending.accept()
        self._worker.answered()


class Worker:
    """One sink: its queue of payloads (in order, markers included) and its task.

    The queue is a plain list the run appends to and the sink's task takes whole: what
    is ready when the sink asks is one batch (`take`). ``held`` pairs an index in
    ``items`` with the `Pending` of an acknowledged envelope; ``marks`` are the
    indexes of markers (`Flush`, `END`), so a batch sink splits a batch without
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
        self.held: list[tuple[int, Pending]] = []
        self.marks: list[int] = []
        self.ready: asyncio.Future[None] | None = None
        self.room: asyncio.Future[None] | None = None
        self.dead = False
        self.task: asyncio.Task[None] | None = None
        self.outstanding = 0
        self.settled = asyncio.Event()
        self.settled.set()
        self._on_reject = on_reject

    def put(self, payload: Any, pending: Pending | None) -> None:
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
        """Queue a marker (`Flush`, `END`); markers do not count against the bound."""
        self.marks.append(len(self.items))
        self.put(marker, None)

    @property
    def full(self) -> bool:
        """More than ``limit`` items queued or in the sink's hands: the run waits."""
        return len(self.items) + self.inflight > self.limit

    async def take(self) -> tuple[list[Any], list[tuple[int, Pending]], list[int]]:
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
