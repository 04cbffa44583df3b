"""The channel from an HTTP request to a running source: `Inlet`, bounded and acknowledged.

One `Inlet` exists per served pipeline whose source takes a parameter typed `Inlet` (the
built-in ``ingest`` source does). Three parties share it, and none imports another:

- the **supervisor** creates it, binds it to the source's parameter, and brackets each
  run with `begin_run` / `end_run`;
- the **source** reads it with ``async for item in inlet.items(max_pending=...,
  max_body=...)``: while it iterates, the inlet is *open* and takes bodies;
- the **server** hands it the records of one request body as they arrive: the first
  ones with `open` (taken all or none), the next ones with `more` (which waits for
  room), then `close`s the returned `Receipt` and awaits it until every record was
  delivered to every sink.

Each record travels as a `pipeline.Message` (or a `pipeline.BadChunk` for an undecodable
line) whose ``ack`` counts the receipt down and whose ``on_envelope`` tells it the ``seq``
of the envelopes made from it. At most ``max_pending`` records are admitted and not yet
acknowledged: a body whose first records do not fit is refused whole (`InletFull`), and
the rest of a body already taken waits for room, so nothing here grows without bound.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any, get_type_hints

from pipeline.types import BadChunk, Chunk, Envelope, Message

__all__ = ["Inlet", "InletClosed", "InletFull", "Receipt", "Record", "inlet_parameter"]


class InletClosed(Exception):
    """The pipeline's source is not reading: no run, or its run has ended."""


class InletFull(Exception):
    """The body's first records do not fit under ``max_pending``; nothing of it was taken."""


class Receipt:
    """What became of one body: counts down as its records are delivered, grows as they come.

    It is done once the body was closed (it ended, or its client went away) and every
    record taken from it was delivered.
    """

    __slots__ = (
        "chunk_errors",
        "closed",
        "done",
        "failed",
        "first_seq",
        "last_seq",
        "left",
        "run",
        "total",
    )

    def __init__(self, run: str | None) -> None:
        self.total = 0
        self.left = 0
        self.run = run
        self.closed = False
        self.chunk_errors = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.failed: str | None = None
        self.done = asyncio.Event()

    def add(self, count: int) -> None:
        """``count`` more records of the body were taken."""
        self.total += count
        self.left += count

    def close(self) -> None:
        """No record will be added: done once those taken are delivered."""
        self.closed = True
        if not self.left:
            self.done.set()

    def ack(self) -> None:
        """One record was delivered to every sink (or dropped by a transform)."""
        if self.left > 0:
            self.left -= 1
            if not self.left and self.closed:
                self.done.set()

    def on_envelope(self, env: Envelope) -> None:
        """Note the ``seq`` of an envelope made from one of this body's records."""
        seq = env["seq"]
        if self.first_seq is None or seq < self.first_seq:
            self.first_seq = seq
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq
        if env["status"] == "chunk_error":
            self.chunk_errors += 1

    def fail(self, reason: str) -> None:
        """The run ended before every record was delivered."""
        if not self.done.is_set():
            self.failed = reason
            self.done.set()

    def result(self) -> dict[str, Any]:
        """The JSON answer: ``accepted``, ``chunk_errors``, ``run``, ``first_seq``, ``last_seq``."""
        return {
            "accepted": self.total - self.left,
            "chunk_errors": self.chunk_errors,
            "run": self.run,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }


Record = Chunk | BadChunk
"""One decoded record of a body: a chunk, or a `BadChunk` for a line that did not decode."""


class Inlet:
    """A bounded hand-off of request bodies to a source (see the module docstring)."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.run: str | None = None
        self.max_pending = 0
        self.max_body = 0
        self.pending = 0
        self._reading = False
        self._queue: deque[tuple[Record, Receipt, Callable[[], None]]] = deque()
        self._receipts: set[Receipt] = set()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # set when records were acknowledged or the run ended

    @property
    def accepting(self) -> bool:
        """Whether a source is reading now (bodies are taken)."""
        return self._reading

    # -- the supervisor --------------------------------------------------------------

    def begin_run(self, run: str) -> None:
        """A run of the pipeline starts: bodies admitted from now on belong to ``run``."""
        self.run = run

    def end_run(self) -> None:
        """The run has ended: every body not yet delivered is answered as failed."""
        self._reading = False
        self._drop_queued("the run ended before the body was delivered")
        for receipt in list(self._receipts):
            receipt.fail("the run ended before the body was delivered")
        self._receipts.clear()
        self.pending = 0
        self._room.set()

    # -- the server ------------------------------------------------------------------

    def open(self, records: list[Record]) -> Receipt:
        """Take the first records of a body, all or none; return the body's `Receipt`.

        A first part larger than ``max_pending`` is taken up to that many (call `more`
        with the rest).

        Raises:
            InletClosed: no source is reading.
            InletFull: they would pass ``max_pending`` (nothing of the body is taken).
        """
        if not self._reading:
            msg = f"pipeline `{self.pipeline}` is not running"
            raise InletClosed(msg)
        first = records[: self.max_pending]
        if self.pending + len(first) > self.max_pending:
            msg = (
                f"pipeline `{self.pipeline}` is full: {self.pending} chunks pending, "
                f"{len(first)} more would pass max_pending={self.max_pending}"
            )
            raise InletFull(msg)
        receipt = Receipt(self.run)
        self._receipts.add(receipt)
        self._queue_all(receipt, first)
        return receipt

    async def more(self, receipt: Receipt, records: list[Record]) -> None:
        """Take more records of an open body, waiting for room under ``max_pending``.

        Raises:
            InletClosed: the run ended (the records not yet taken are not).
        """
        while records:
            if not self._reading or receipt.failed is not None:
                msg = f"pipeline `{self.pipeline}`: the run ended before the body was read"
                raise InletClosed(msg)
            free = self.max_pending - self.pending
            if free <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            self._queue_all(receipt, records[:free])
            records = records[free:]

    def close(self, receipt: Receipt) -> None:
        """The body ended (or its client went away): nothing more will be added."""
        receipt.close()
        if receipt.done.is_set():
            self._receipts.discard(receipt)

    def _queue_all(self, receipt: Receipt, records: list[Record]) -> None:
        if records:
            receipt.add(len(records))
            self.pending += len(records)
            ack = self._acker(receipt)
            self._queue.extend((r, receipt, ack) for r in records)
            self._wake.set()

    # -- the source ------------------------------------------------------------------

    async def items(
        self, *, max_pending: int, max_body: int
    ) -> AsyncGenerator[Message | BadChunk, None]:
        """Yield each admitted record as a `Message` (or `BadChunk`) with its acks bound."""
        if self._reading:
            msg = f"pipeline `{self.pipeline}`: its inlet is already being read"
            raise RuntimeError(msg)
        self.max_pending, self.max_body = max_pending, max_body
        self._reading = True
        try:
            while True:
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                record, receipt, ack = self._queue.popleft()
                if isinstance(record, BadChunk):
                    yield BadChunk(record.raw, record.error, ack, receipt.on_envelope)
                else:
                    yield Message(record, ack, receipt.on_envelope)
        finally:
            self._reading = False
            self._drop_queued("the source stopped before the body was read")
            self._room.set()

    def _acker(self, receipt: Receipt) -> Callable[[], None]:
        def ack() -> None:
            self.pending = max(0, self.pending - 1)
            self._room.set()
            receipt.ack()
            if receipt.done.is_set():
                self._receipts.discard(receipt)

        return ack

    def _drop_queued(self, reason: str) -> None:
        while self._queue:
            _, receipt, _ = self._queue.popleft()
            self.pending = max(0, self.pending - 1)
            receipt.fail(reason)
            self._receipts.discard(receipt)


def inlet_parameter(fn: Callable[..., Any]) -> str | None:
    """The name of ``fn``'s parameter typed `Inlet` (or ``Inlet | None``), if it has one."""
    try:
        hints = get_type_hints(fn)
        params = inspect.signature(fn).parameters
    except Exception:  # unresolvable annotations or no signature: no inlet
        return None
    for name in params:
        hint = hints.get(name)
        if hint is Inlet or Inlet in getattr(hint, "__args__", ()):
            return name
    return None
