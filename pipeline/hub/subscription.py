"""A client's side of the `pipeline.hub.hub.Hub`: resume tokens and the subscription.

`Subscription` is a cursor into the hub's `pipeline.hub.ring.Ring`, so a batch is a
slice of the already-encoded lines. It tells its hub (a `Roster`) when it leaves or is
dropped; it knows nothing else of the hub.
"""

from __future__ import annotations

import asyncio
import re
from bisect import bisect_right
from collections.abc import Callable
from functools import partial
from itertools import repeat
from typing import NamedTuple, Protocol, Self

from pipeline.errors import PipelineError
from pipeline.hub.ring import PROCESSING, Ring, RunSpan

__all__ = ["MAX_BATCH_BYTES", "BadSince", "Item", "Roster", "Subscription", "parse_since"]

MAX_BATCH_BYTES = 256 * 1024
"""A batch holds at most this many bytes, unless a single line is larger."""

_SINCE = re.compile(r"(?:(.+):)?([0-9]{1,18})", re.ASCII | re.DOTALL)


class BadSince(PipelineError, ValueError):
    """A ``since`` (or ``Last-Event-ID``) token is neither ``SEQ`` nor ``RUN:SEQ``."""


class Item(NamedTuple):
    """One envelope as a client receives it: ``line`` is the encoded NDJSON line.

    ``seq`` is None for a transport notice (``lagged``), which has no ``id`` in SSE.
    """

    run: str
    seq: int | None
    status: str
    line: bytes


_new_item = partial(tuple.__new__, Item)
"""``Item`` from a 4-tuple of fields, without a Python-level call."""


def parse_since(since: str | None) -> tuple[str | None, int] | None:
    """Parse a resume token into ``(run or None, seq)``; None stays None (live only).

    Raises:
        BadSince: the token is not an integer >= 0 nor ``RUN:SEQ``.

    Example:
        >>> parse_since("r1:41"), parse_since("7"), parse_since(None)
        (('r1', 41), (None, 7), None)
    """
    if since is None:
        return None
    match = _SINCE.fullmatch(since)
    if match is None:
        shown = since if len(since) <= 64 else since[:64] + "..."
        msg = f"`since` must be SEQ (an integer >= 0) or RUN:SEQ, got {shown!r}"
        raise BadSince(msg)
    return match[1], int(match[2])


class Roster(Protocol):
    """What a subscription tells its hub."""

    def left(self, sub: Subscription) -> None:
        """``sub`` ended: it no longer counts as a client."""

    def lapped(self, sub: Subscription) -> None:
        """``sub`` was dropped for falling too far behind."""


class Subscription:
    """One client's cursor into a `Hub`: an async iterator of ready batches.

    - ``async for batch in sub``: ``bytes``, every ready line concatenated (NDJSON);
    - ``async for items in sub.items()``: ``list[Item]`` (SSE frames, WebSocket frames).

    Use one of the two per subscription. A batch is everything ready when the client
    reads (at most `MAX_BATCH_BYTES`): a lone envelope comes at once, a backlog in one
    piece. The iteration ends after the run's ``complete``, at `Hub.close`, or when the
    client is lapped (then `dropped` is true; `last` is where to resume from).
    """

    __slots__ = (
        "_buffer",
        "_buffer_bytes",
        "_closed",
        "_cursor",
        "_direct",
        "_dropped",
        "_fut",
        "_last",
        "_more",
        "_notice",
        "_nudged",
        "_on_drop",
        "_replay_end",
        "_ring",
        "_roster",
        "_run",
    )

    def __init__(
        self,
        ring: Ring,
        run: RunSpan | None,
        cursor: int,
        notice: Item | None,
        client_buffer: tuple[int, int],
        *,
        hub: Roster,
        on_drop: Callable[[], object] | None = None,
    ) -> None:
        self._ring = ring
        self._roster = hub
        self._buffer, self._buffer_bytes = client_buffer  # envelopes, bytes
        self._run = run
        self._cursor = cursor
        self._notice = notice
        self._on_drop = on_drop
        # Replay backlog does not count as lagging: only what was published after it.
        self._replay_end = ring.head
        self._fut: asyncio.Future[None] | None = None
        self._closed = False
        self._dropped = False
        self._more = False
        self._nudged = False
        self._last: tuple[str, int] | None = None
        self._direct: Callable[[bytes | memoryview], bool] | None = None

    @property
    def dropped(self) -> bool:
        """Whether the client was lapped and its stream cut short."""
        return self._dropped

    @property
    def last(self) -> str | None:
        """``RUN:SEQ`` of the last envelope handed out (a resume token), or None."""
        return None if self._last is None else f"{self._last[0]}:{self._last[1]}"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe (idempotent); a reader waiting in another task ends."""
        self._closed = True
        self._finish()

    def adopt(self, run: RunSpan) -> None:
        """Follow ``run`` from its start if this client subscribed before any run."""
        if self._run is None:
            self._run = run

    def drop(self) -> None:
        """Cut the stream short because the client was lapped (idempotent)."""
        if self._dropped:
            return
        self._dropped = True
        self._roster.lapped(self)
        self._finish()
        if self._on_drop is not None:
            asyncio.get_running_loop().call_soon(self._on_drop)

    def nudge(self) -> None:
        """Make the read waiting now (or the next one that would wait) return an empty
        batch: the server's cue for a heartbeat, with no timer per read."""
        self._nudged = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def write_directly(self, write: Callable[[bytes | memoryview], bool] | None) -> None:
        """While the bytes reader (``async for batch in sub``) waits, offer each new
        batch to ``write`` from the hub's one callback per publish batch, instead of
        waking the reader's task: ``write`` returns whether it took the batch (it
        writes it at once, or declines: the reader's task then gets it). The batch is
        ``bytes``, or a view of the ring that ``write`` must not keep. Only a
        caught-up client's live lines go this way; a backlog, a ``lagged`` notice, a
        heartbeat, the end of a run or of the stream always wake the task. None: off.
        """
        self._direct = write

    def _push(self) -> bool:
        """Offer what is ready to the direct writer; return whether it took it."""
        ring, run, write = self._ring, self._run, self._direct
        if (
            write is None
            or run is None
            or run.end is not None
            or self._notice is not None
            or self._nudged
            or self._more
            or ring.closed
            or self._closed
            or self._dropped
            or self._cursor == ring.head
        ):
            return False
        start, stop = self._span()
        if stop <= start or self._more:
            return False
        batch = self._ring.view(start, stop)
        try:
            if not write(batch):
                return False
        finally:
            if type(batch) is memoryview:
                batch.release()
        self._advance(start, stop)
        return True

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        """Return the next batch of NDJSON lines as one ``bytes`` (empty after `nudge`)."""
        start, stop, notice = await self._next()
        batch = self._ring.read(start, stop) if stop > start else b""
        return batch if notice is None else notice.line + batch

    def items(self) -> _Items:
        """Iterate the same stream as lists of `Item` (for SSE and WebSocket framing)."""
        return _Items(self)

    async def _next_items(self) -> list[Item]:
        start, stop, notice = await self._next()
        ring, run = self._ring, self._run
        items: list[Item] = []
        if stop > start:
            assert run is not None
            rid, seqs, lines = run.id, ring.seq_slice(start, stop), ring.lines(start, stop)
            fields = zip(repeat(rid), seqs, repeat(PROCESSING), lines)
            items = list(map(_new_item, fields))  # all in C: no Python call per line
            for pos, status in ring.marks.items():  # the few others
                if start <= pos < stop:
                    items[pos - start] = items[pos - start]._replace(status=status)
        if notice is not None:
            items.insert(0, notice)
        return items

    async def _next(self) -> tuple[int, int, Item | None]:
        """Wait for something to read; advance the cursor past it and return its span."""
        if self._more:
            self._more = False
            await asyncio.sleep(0)  # a backlog goes out in pieces: let others run between
        ring = self._ring
        while True:
            run = self._run
            if (  # caught up and nothing else to say: wait at once (the common case)
                self._cursor == ring.head
                and run is not None
                and run.end is None
                and self._notice is None
                and not (self._nudged or ring.closed or self._closed or self._dropped)
            ):
                await self._wait()
                continue
            start, stop = self._span()
            if stop > start or self._notice is not None:
                notice, self._notice = self._notice, None
                self._advance(start, stop)
                self._nudged = False
                return start, stop, notice
            if self._done():
                self._finish()
                raise StopAsyncIteration
            if self._nudged:
                self._nudged = False
                return start, start, None
            await self._wait()

    def _span(self) -> tuple[int, int]:
        """Return the positions ready to read, capped at `MAX_BATCH_BYTES`."""
        ring, run, start = self._ring, self._run, self._cursor
        if run is None or self._closed or self._dropped:
            return start, start
        if self.lapped(ring.head):
            self.drop()
            return start, start
        stop = ring.head if run.end is None else run.end
        base = ring.offset(start)
        if stop - start > 1 and ring.offset(stop) - base > MAX_BATCH_BYTES:
            fits = bisect_right(range(start + 1, stop), base + MAX_BATCH_BYTES, key=ring.offset)
            stop, self._more = start + max(fits, 1), True
        return start, stop

    def lapped(self, head: int) -> bool:
        """Whether the head is further ahead than this client may lag (and it needs more)."""
        run, ring = self._run, self._ring
        if run is None or self._cursor == run.end:
            return False
        if self._cursor < ring.tail:  # its next line is gone
            return True
        first = max(self._cursor, self._replay_end)
        if head - first > self._buffer:
            return True
        return first < head and ring.offset(head) - ring.offset(first + 1) > self._buffer_bytes

    def _advance(self, start: int, stop: int) -> None:
        if stop > start:
            self._cursor = stop
            assert self._run is not None
            self._last = (self._run.id, self._ring.seq_at(stop - 1))

    def _done(self) -> bool:
        if self._closed or self._dropped:
            return True
        run = self._run
        if run is None:
            return self._ring.closed
        return self._cursor == run.end or self._ring.closed

    def _finish(self) -> None:
        self._notice = None
        self._roster.left(self)
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _wait(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._fut = fut
        ring = self._ring
        if self._direct is None:
            ring.waiters.add(fut)
        else:
            ring.pushers[fut] = self._push
        try:
            await fut
        finally:
            ring.waiters.discard(fut)
            ring.pushers.pop(fut, None)
            self._fut = None


class _Items:
    """``sub.items()``: the subscription's batches as lists of `Item`."""

    __slots__ = ("_sub",)

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> list[Item]:
        return await self._sub._next_items()
