"""The retention ring shared by a `pipeline.hub.hub.Hub` and its subscriptions.

Positions count every line ever published; the line at position ``p`` lives at index
``p % cap`` of three parallel lists (the encoded line, its ``(run, seq, status, line)``
tuple and the bytes published before it). The hub appends; each subscription reads
slices between its cursor and the head and waits on the ring when it has caught up.

The ring is bounded twice: at most ``cap`` lines, and the lines after the oldest one it
holds (``tail``) total at most ``max_bytes``. So it holds at most ``max_bytes`` plus one
line, and a line of any size stays readable until ``max_bytes`` more were published
after it. A position below ``tail`` is gone: its line is released at once.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

__all__ = ["Ring", "RunSpan"]

_T = TypeVar("_T")

RingItem = tuple[str, int, str, bytes]
"""``(run, seq, status, line)``: a plain tuple per line (an `Item` is made when read)."""

_GONE: RingItem = ("", 0, "", b"")


class RunSpan:
    """One run as the ring sees it: where it starts and where it ended."""

    __slots__ = ("counts", "end", "id", "last_seq", "start")

    def __init__(self, run_id: str, start: int) -> None:
        self.id = run_id
        self.start = start
        self.end: int | None = None
        self.last_seq = 0
        self.counts: dict[str, int] = {}


class Ring:
    """A fixed-capacity ring of encoded lines with the readers waiting on it.

    Example:
        >>> ring = Ring(2)
        >>> for seq in (1, 2, 3):
        ...     _ = ring.append(("r", seq, "processing", b"%d\\n" % seq))
        >>> ring.head, ring.tail, ring.slice(ring.lines, 1, 3), ring.offset(3)
        (3, 1, [b'2\\n', b'3\\n'], 6)
        >>> ring = Ring(10, max_bytes=4)
        >>> for size in (8, 2, 2, 2):
        ...     _ = ring.append(("r", size, "processing", b"x" * size))
        >>> ring.tail, ring.held
        (1, 6)
    """

    __slots__ = (
        "bytes",
        "cap",
        "closed",
        "head",
        "items",
        "lines",
        "max_bytes",
        "offsets",
        "tail",
        "waiters",
    )

    def __init__(self, cap: int, max_bytes: int | None = None) -> None:
        self.cap = cap
        self.max_bytes = max_bytes
        self.tail = 0  # the oldest position still held
        self.lines: list[bytes] = []
        self.items: list[RingItem] = []
        self.offsets: list[int] = []  # bytes published before this line
        self.head = 0
        self.bytes = 0
        self.waiters: set[asyncio.Future[None]] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self.lines)

    def append(self, item: RingItem) -> int:
        """Store one line (``item[3]``, already right-sized) at the head; return the new head."""
        line = item[3]
        head = self.head
        if head < self.cap:  # still filling up
            self.lines.append(line)
            self.items.append(item)
            self.offsets.append(self.bytes)
        else:
            i = head % self.cap
            self.lines[i] = line
            self.items[i] = item
            self.offsets[i] = self.bytes
        self.bytes += len(line)
        self.head = head = head + 1
        if head - self.tail > self.cap:
            self.tail = head - self.cap
        limit = self.max_bytes
        if limit is not None and self.bytes - self.offsets[self.tail % self.cap] > limit:
            self._trim(limit)
        return head

    @property
    def held(self) -> int:
        """Bytes of the lines held now (``tail`` to ``head``)."""
        return self.bytes - self.offset(self.tail)

    def _trim(self, limit: int) -> None:
        """Release the oldest lines while those after the oldest total over ``limit``."""
        tail, cap = self.tail, self.cap
        while self.bytes - self.offset(tail + 1) > limit:
            i = tail % cap
            self.lines[i] = b""
            self.items[i] = _GONE
            tail += 1
        self.tail = tail

    def item_at(self, pos: int) -> RingItem:
        """The tuple stored at position ``pos`` (which must still be in the ring)."""
        return self.items[pos % self.cap]

    def seq_at(self, pos: int) -> int:
        """The ``seq`` of the line at ``pos``."""
        return self.items[pos % self.cap][1]

    def offset(self, pos: int) -> int:
        """Bytes published before position ``pos`` (``pos`` may be the head)."""
        return self.bytes if pos == self.head else self.offsets[pos % self.cap]

    def slice(self, ring: list[_T], start: int, stop: int) -> list[_T]:
        """Positions ``start`` to ``stop`` of one of the parallel lists, in order."""
        i = start % self.cap
        j = i + stop - start
        return ring[i:j] if j <= self.cap else ring[i:] + ring[: j - self.cap]

    def wake(self) -> None:
        """Wake every reader waiting for more."""
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters.clear()

    def close(self) -> None:
        """No more lines will come: wake every reader so it can drain and end."""
        self.closed = True
        self.wake()
