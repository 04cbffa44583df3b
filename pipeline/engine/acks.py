"""Acknowledgements that travel with chunks, for at-least-once sources.

A source yields `pipeline.Message(data, ack=fn)`. The engine wraps ``fn`` in an `Ack`
and carries it with the chunk (`Carry`) through every transform. A flat-map that turns
one chunk into *k* chunks raises the ack's count to *k*; a drop releases it; a stream
transform hands the acks of the chunks it consumed to the next chunk it yields. Fanout
releases an ack once every sink has accepted the envelope made from its chunk. ``fn``
runs when the count reaches zero; when it returns an awaitable, the `AckRunner` of the
run awaits it, in order, outside the chunk's hot path.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Iterable
from typing import Any

from pipeline.meter import Histogram
from pipeline.types import AckFn, Envelope, OnEnvelope

__all__ = ["Ack", "AckRunner", "Probe", "notify_all", "release_all", "retain_all"]


class AckRunner:
    """Awaits the awaitables that ack functions return, one at a time, in order."""

    def __init__(self, log: Any = None) -> None:
        self._pending: deque[Awaitable[Any]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = log
        self._closing = False
        self.done = 0
        self.pending = 0
        """Acks created and not yet released (messages read, not yet acknowledged)."""

    def submit(self, awaitable: Awaitable[Any]) -> None:
        """Queue an awaitable returned by an ack function (never blocks)."""
        self._pending.append(awaitable)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        self._wake.set()

    async def _drain(self) -> None:
        while True:
            while self._pending:
                aw = self._pending.popleft()
                try:
                    await aw
                    self.done += 1
                except Exception:
                    if self._log is not None:
                        self._log.exception("ack_failed")
            if self._closing:
                return
            self._wake.clear()
            await self._wake.wait()

    async def aclose(self) -> None:
        """Await every queued ack, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task


class Ack:
    """A reference-counted acknowledgement; ``fn`` runs when the count reaches zero."""

    __slots__ = ("count", "fn", "on_envelope", "runner")

    def __init__(self, fn: AckFn, runner: AckRunner, on_envelope: OnEnvelope | None = None) -> None:
        self.fn = fn
        self.runner = runner
        self.on_envelope = on_envelope
        self.count = 1
        runner.pending += 1

    def release(self) -> None:
        """Drop one reference; run the acknowledgement when none are left."""
        self.count -= 1
        if self.count == 0:
            self.runner.pending -= 1
            result = self.fn()
            if inspect.isawaitable(result):
                self.runner.submit(result)


class Probe(Ack):
    """Rides with a sampled chunk like an ack: records the time from read to accepted.

    ``kept`` is set when an envelope made from the chunk is delivered (the engine tells
    every ack of a delivered envelope, see `notify_all`), so a chunk dropped by a filter
    records nothing.
    """

    __slots__ = ("hist", "kept", "started")

    def __init__(self, hist: Histogram, started: float) -> None:  # no fn, no runner
        self.count = 1
        self.hist = hist
        self.started = started
        self.kept = False
        self.on_envelope = self._keep

    def _keep(self, env: Envelope) -> None:
        self.kept = True

    def release(self) -> None:
        """Drop one reference; record the latency when the last one was delivered."""
        self.count -= 1
        if self.count == 0 and self.kept:
            self.hist.observe(time.perf_counter() - self.started)


def release_all(acks: Iterable[Ack]) -> None:
    """Release one reference of each ack."""
    for ack in acks:
        ack.release()


def notify_all(acks: Iterable[Ack], env: Envelope) -> None:
    """Tell each ack that wants to know (``Message.on_envelope``) about ``env``."""
    for ack in acks:
        if ack.on_envelope is not None:
            ack.on_envelope(env)


def retain_all(acks: Iterable[Ack], extra: int) -> None:
    """Add ``extra`` references to each ack (a chunk became ``extra + 1`` chunks)."""
    for ack in acks:
        ack.count += extra
