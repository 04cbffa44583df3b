"""The retention ring shared by a `pipeline.hub.hub.Hub` and its subscriptions.

Positions count every line ever published. The encoded lines are appended to
``bytearray`` segments (a segment is sealed at `SEGMENT_BYTES`), so publishing a line is
one copy into the open segment and three appends (its offset, its seq, the bytes) with
no object made per line; a reader's batch is one slice per segment it spans. Beside the
bytes the ring keeps, per position, the bytes published before it (``offs``) and its
``seq``; a status other than ``processing`` is noted in ``marks`` (``starting``,
``complete``, ``chunk_error``... are few).

The ring is bounded twice: the oldest position it holds (`Ring.tail`) is at most ``cap``
behind the head, and the lines from there on total at most ``max_bytes`` (the tail moves
past lines until they do). So it holds at most ``max_bytes`` plus one line, and a line of
any size stays readable until ``max_bytes`` more were published after it. A position
below the tail is gone: whole segments below it are released when the hub settles the
ring (`Ring.settle`, every ``cap`` lines or `SEGMENT_BYTES` bytes), so memory is the
held lines plus at most one partly released segment.

The hot path (`pipeline.hub.hub.Hub.publish`) writes the fields directly and calls
`Ring.settle` only when ``head`` reaches ``check_pos`` or ``bytes`` reaches
``check_bytes``.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import Callable

__all__ = ["PROCESSING", "SEGMENT_BYTES", "Ring", "RunSpan"]

SEGMENT_BYTES = 64 * 1024
"""A segment is sealed (and a new one opened) once it holds this many bytes."""
PROCESSING = "processing"
_TRIM_MIN = 256
"""Per-position lists are trimmed at most every this many positions."""


class RunSpan:
    """One run as the ring sees it: where it starts, where it ended, and how many
    envelopes of each status other than ``processing`` it published."""

    __slots__ = ("counts", "end", "id", "start")

    def __init__(self, run_id: str, start: int) -> None:
        self.id = run_id
        self.start = start
        self.end: int | None = None
        self.counts: dict[str, int] = {}


class Ring:
    """A bounded ring of encoded lines in ``bytearray`` segments, with its waiting readers.

    Example:
        >>> ring = Ring(2)
        >>> for seq in (1, 2, 3):
        ...     ring.add(b"%d\\n" % seq, seq)
        >>> ring.head, ring.tail, ring.read(1, 3), ring.offset(3), ring.seq_at(2)
        (3, 1, b'2\\n3\\n', 6, 3)
        >>> ring = Ring(10, max_bytes=4)
        >>> for size in (8, 2, 2, 2):
        ...     ring.add(b"x" * size, size)
        >>> ring.tail, ring.held
        (1, 6)
    """

    __slots__ = (
        "_tail",
        "bytes",
        "cap",
        "check_bytes",
        "check_pos",
        "closed",
        "data",
        "first",
        "head",
        "marks",
        "max_bytes",
        "offs",
        "push_due",
        "pushers",
        "seg_bases",
        "seg_starts",
        "segs",
        "seqs",
        "waiters",
    )

    def __init__(self, cap: int, max_bytes: int | None = None) -> None:
        self.cap = cap
        self.max_bytes = max_bytes
        self.head = 0
        self.bytes = 0  # published in all
        self._tail = 0  # the tail as the byte bound left it (`tail` adds the count bound)
        self.first = 0  # the position of offs[0] and seqs[0]
        self.offs: list[int] = []  # bytes published before each position
        self.seqs: list[int] = []
        self.marks: dict[int, str] = {}  # position -> status, when not "processing"
        self.data = bytearray()  # the open segment (the last of `segs`)
        self.segs: list[bytearray] = [self.data]
        self.seg_starts: list[int] = [0]  # the first position of each segment
        self.seg_bases: list[int] = [0]  # the bytes published before each segment
        self.check_pos = 0
        self.check_bytes = 0
        self.waiters: set[asyncio.Future[None]] = set()
        # Readers that write for themselves when they can: their wait -> their push.
        self.pushers: dict[asyncio.Future[None], Callable[[], bool]] = {}
        self.push_due = False
        self.closed = False
        self.settle()

    def __len__(self) -> int:
        return self.head - self.tail

    @property
    def tail(self) -> int:
        """The oldest position still held."""
        return max(self._tail, self.head - self.cap)

    def add(self, line: bytes, seq: int, status: str = PROCESSING) -> None:
        """Store one line at the head (what `Hub.publish` does inline)."""
        self.offs.append(self.bytes)
        self.data += line
        self.bytes += len(line)
        self.seqs.append(seq)
        if status != PROCESSING:
            self.marks[self.head] = status
        self.head += 1
        if self.head >= self.check_pos or self.bytes >= self.check_bytes:
            self.settle()

    def settle(self) -> None:
        """Apply the byte bound, seal a full segment, release what fell below the tail,
        and set the next ``check_pos`` / ``check_bytes`` (when to be called again)."""
        tail = self.tail
        limit = self.max_bytes
        if limit is not None and self.bytes - self.offset(tail) > limit:
            while self.bytes - self.offset(tail + 1) > limit:
                tail += 1
        self._tail = tail
        if len(self.data) >= SEGMENT_BYTES:
            self.data = bytearray()
            self.segs.append(self.data)
            self.seg_starts.append(self.head)
            self.seg_bases.append(self.bytes)
        self._release(tail)
        self.check_pos = self.head + max(self.cap, _TRIM_MIN)
        check = self.seg_bases[-1] + SEGMENT_BYTES
        if limit is not None:
            check = min(check, self.offset(tail) + limit + 1)
        self.check_bytes = check

    def _release(self, tail: int) -> None:
        """Drop the segments, offsets, seqs and marks of positions below ``tail``."""
        gone = bisect_right(self.seg_starts, tail) - 1  # segments wholly below the tail
        if gone > 0:
            del self.segs[:gone], self.seg_starts[:gone], self.seg_bases[:gone]
        if tail - self.first >= max(self.cap, _TRIM_MIN):
            cut = tail - self.first
            del self.offs[:cut], self.seqs[:cut]
            self.first = tail
            if self.marks:
                self.marks = {p: s for p, s in self.marks.items() if p >= tail}

    @property
    def held(self) -> int:
        """Bytes of the lines held now (``tail`` to ``head``)."""
        return self.bytes - self.offset(self.tail)

    @property
    def physical(self) -> int:
        """Bytes the segments hold now (held lines plus the released start of the oldest)."""
        return sum(map(len, self.segs))

    def offset(self, pos: int) -> int:
        """Bytes published before position ``pos`` (``pos`` may be the head)."""
        return self.bytes if pos >= self.head else self.offs[pos - self.first]

    def seq_at(self, pos: int) -> int:
        """The ``seq`` of the line at ``pos`` (which must still be held)."""
        return self.seqs[pos - self.first]

    def status_at(self, pos: int) -> str:
        """The ``status`` of the line at ``pos``."""
        return self.marks.get(pos, PROCESSING)

    def read(self, start: int, stop: int) -> bytes:
        """The lines at positions ``start`` to ``stop`` as one ``bytes`` (one copy)."""
        got = self.view(start, stop)
        if type(got) is memoryview:
            with got:
                return got.tobytes()
        return got

    def view(self, start: int, stop: int) -> memoryview | bytes:
        """The lines at positions ``start`` to ``stop`` without a copy where they lie in
        one segment: a view of it, which the caller releases before anything more is
        published (a view keeps the open segment from growing); else one slice per
        segment they span, joined."""
        a, b = self.offset(start), self.offset(stop)
        i = bisect_right(self.seg_bases, a) - 1
        base = self.seg_bases[i]
        seg = self.segs[i]
        if b - base <= len(seg):
            return memoryview(seg)[a - base : b - base]
        parts: list[bytes] = []
        while a < b:
            seg, base = self.segs[i], self.seg_bases[i]
            end = min(b, base + len(seg))
            with memoryview(seg) as whole:
                parts.append(whole[a - base : end - base].tobytes())
            a, i = end, i + 1
        return b"".join(parts)

    def lines(self, start: int, stop: int) -> list[bytes]:
        """The lines at positions ``start`` to ``stop``, one ``bytes`` each."""
        data = self.read(start, stop)
        i, j = start - self.first, stop - self.first
        offs = self.offs[i:j]
        base = offs[0]
        ends = [*offs[1:], self.offset(stop)]
        with memoryview(data) as view:
            return [view[a - base : b - base].tobytes() for a, b in zip(offs, ends, strict=True)]

    def seq_slice(self, start: int, stop: int) -> list[int]:
        """The seqs of positions ``start`` to ``stop``."""
        return self.seqs[start - self.first : stop - self.first]

    def wake(self) -> None:
        """Wake every reader waiting for more; a pushing reader is first offered what is
        ready from one callback at the loop's next turn (`push`), for all of them."""
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters.clear()
        if self.pushers and not self.push_due:
            self.push_due = True
            next(iter(self.pushers)).get_loop().call_soon(self.push)

    def push(self) -> None:
        """Let every pushing reader write what is ready itself; wake those that cannot
        (a backlog, a full socket, the end of a run...): their task takes over."""
        self.push_due = False
        for fut, push in list(self.pushers.items()):
            if not fut.done() and not push() and not fut.done():  # (a drop wakes it)
                fut.set_result(None)

    def close(self) -> None:
        """No more lines will come: wake every reader so it can drain and end."""
        self.closed = True
        self.wake()
