"""The per-pipeline broadcast hub: one ring of encoded lines, one cursor per client.

The producer (the pipeline's envelope-numbering coroutine, or a broker connector) calls
`Hub.begin_run`, `Hub.publish`, `Hub.end_run` and `Hub.close`. None of them awaits or
blocks: `publish` copies one line into the ring's open segment and wakes the readers that
wait. Each client reads through a `Subscription`, a cursor into that ring:

- a client may fall ``client_buffer`` envelopes and ``client_buffer_bytes`` bytes
  behind: more than that published past its cursor (or past the end of the replay it
  was handed at subscribe; in bytes, past the first line it has not read) and it is
  *lapped*: its stream ends at once, `Subscription.dropped` is true and ``on_drop`` is
  scheduled. It never slows the producer or other clients. Memory is one ring of at
  most ``retain + client_buffer`` lines and ``retain_bytes + client_buffer_bytes``
  bytes plus one line (plus the released start of its oldest 64 KiB segment), whatever
  the number of clients;
- the last ``retain`` envelopes of the current run, at most ``retain_bytes`` together,
  are replayed to clients that ask with ``since`` (see `Hub.subscribe`); replay hands
  over to live envelopes with no gap and no duplicate, because both are the same ring
  read from one cursor. A line larger than ``retain_bytes`` is delivered live to the
  clients keeping up, but never replayed: a client asking for it gets ``lagged``.

A run's streams end right after its ``complete`` (`Hub.end_run`); at shutdown
(`Hub.close`) every stream ends once it has drained what was published.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate

from pipeline.envelope import encode, lagged
from pipeline.hub.ring import PROCESSING, Ring, RunSpan
from pipeline.hub.subscription import MAX_BATCH_BYTES, BadSince, Item, Subscription, parse_since
from pipeline.types import Envelope

__all__ = ["MAX_BATCH_BYTES", "BadSince", "Hub", "Item", "Subscription", "parse_since"]

_SWEEP_MIN = 64
RETAIN_BYTES = 64 * 1024 * 1024
"""Default ``retain_bytes``: the replay of a run holds at most this many bytes."""
CLIENT_BUFFER_BYTES = 16 * 1024 * 1024
"""Default ``client_buffer_bytes``: how far behind (in bytes) a client may fall."""


class Hub:
    """Broadcast the envelopes of one pipeline to any number of clients.

    Args:
        name: the pipeline's name (it goes into ``lagged`` notices).
        retain: how many envelopes of the current run are kept for replay (>= 0).
        client_buffer: how many envelopes a client may fall behind (beyond the replay
            it was handed) before it is dropped (>= 1).
        retain_bytes: the replay holds at most this many bytes (>= 0).
        client_buffer_bytes: how many bytes may be published after the first line a
            client has not read (beyond its replay) before it is dropped (>= 1).

    Example:
        >>> hub = Hub("demo", retain=100, client_buffer=100)
        >>> hub.begin_run("r1")
        >>> env = {"status": "starting", "pipeline": "demo", "run": "r1", "seq": 1}
        >>> hub.publish(env, encode(env))
        >>> hub.run, hub.last_seq, hub.counts, hub.clients
        ('r1', 1, {'starting': 1}, 0)
    """

    def __init__(
        self,
        name: str,
        *,
        retain: int,
        client_buffer: int,
        retain_bytes: int = RETAIN_BYTES,
        client_buffer_bytes: int = CLIENT_BUFFER_BYTES,
    ) -> None:
        if retain < 0 or client_buffer < 1 or retain_bytes < 0 or client_buffer_bytes < 1:
            msg = (
                f"hub `{name}`: need retain >= 0, client_buffer >= 1, retain_bytes >= 0 "
                f"and client_buffer_bytes >= 1, got retain={retain}, "
                f"client_buffer={client_buffer}, retain_bytes={retain_bytes}, "
                f"client_buffer_bytes={client_buffer_bytes}"
            )
            raise ValueError(msg)
        self.name = name
        self.retain = retain
        self.client_buffer = client_buffer
        self.retain_bytes = retain_bytes
        self.client_buffer_bytes = client_buffer_bytes
        # Replay backlog (<= retain) plus client_buffer envelopes behind it must fit.
        self._cap = retain + client_buffer
        self._ring = Ring(self._cap, retain_bytes + client_buffer_bytes)
        self._run: RunSpan | None = None
        self._subs: set[Subscription] = set()
        self._dropped = 0
        self._sweep_every = max(_SWEEP_MIN, client_buffer // 8)
        self._sweep_pos = 0  # ring.head at which to sweep again
        self._sweep_at = 0  # ring.bytes at which to sweep again
        self._settle()

    # -- counters --------------------------------------------------------------------

    @property
    def run(self) -> str | None:
        """The current (or last) run id; None before the first run."""
        return None if self._run is None else self._run.id

    @property
    def last_seq(self) -> int:
        """The last ``seq`` published in the current run (0 before any)."""
        return 0 if self._run is None else self._last_seq(self._run)

    @property
    def counts(self) -> dict[str, int]:
        """Envelopes published in the current run, per status (a copy)."""
        run = self._run
        if run is None:
            return {}
        end = self._ring.head if run.end is None else run.end
        processing = end - run.start - sum(run.counts.values())
        return ({PROCESSING: processing} if processing else {}) | run.counts

    def _last_seq(self, run: RunSpan) -> int:
        """The last ``seq`` published in ``run`` (the current run: its lines are held)."""
        end = self._ring.head if run.end is None else run.end
        return self._ring.seq_at(end - 1) if end > run.start else 0

    @property
    def clients(self) -> int:
        """Subscriptions open right now."""
        return len(self._subs)

    @property
    def dropped_clients(self) -> int:
        """Clients dropped since the hub was made because they were lapped."""
        return self._dropped

    @property
    def buffered(self) -> int:
        """Lines the ring holds now (never more than ``retain + client_buffer``)."""
        return self._ring.head - self._ring.tail

    @property
    def held_bytes(self) -> int:
        """Bytes of the lines the ring holds now (at most ``retain_bytes +
        client_buffer_bytes`` plus the oldest line)."""
        return self._ring.held

    def finished(self, run: str, seq: int) -> bool:
        """Whether ``run`` is the current run, it has ended, and ``seq`` is its last.

        A client that resumes from there has nothing more to get (SSE: 204).
        """
        cur = self._run
        return (
            cur is not None and cur.id == run and cur.end is not None and seq >= self._last_seq(cur)
        )

    # -- producer side: never awaits -------------------------------------------------

    def begin_run(self, run: str) -> None:
        """Start a new run: its envelopes replace the previous run's for replay.

        Readers of the previous run still get its envelopes up to where it ended.
        Clients that subscribed before the first run follow this one from its start.
        """
        old, head = self._run, self._ring.head
        if old is not None and old.end is None:
            old.end = head
        self._run = new = RunSpan(run, head)
        for sub in self._subs:
            sub.adopt(new)
        self._ring.wake()

    def publish(self, envelope: Envelope, line: bytes) -> None:
        """Append one envelope (and its encoded line) to the ring and wake the readers.

        ``envelope`` needs ``status``, ``run`` and ``seq``. An envelope of a run other
        than the current one (or after `end_run`) begins that run first. The line is
        copied into the ring's open segment (`Ring.add`, written out here: this runs for
        every envelope).
        """
        run = self._run
        if run is None or run.end is not None or envelope["run"] != run.id:
            self.begin_run(envelope["run"])
            run = self._run
            assert run is not None
        ring = self._ring
        ring.offs.append(ring.bytes)
        ring.data += line  # a copy: orjson's own bytes (~4 KiB each) are not kept
        ring.bytes = total = ring.bytes + len(line)
        ring.seqs.append(envelope["seq"])
        status: str = envelope["status"]
        if status != PROCESSING:
            ring.marks[ring.head] = status
            run.counts[status] = run.counts.get(status, 0) + 1
        ring.head = head = ring.head + 1
        if ring.waiters or ring.pushers:
            ring.wake()
        if head >= ring.check_pos or total >= ring.check_bytes:
            self._settle()

    def publish_lines(self, run_id: str, seq: int, lines: list[bytes]) -> None:
        """Append ``processing`` lines numbered ``seq``, ``seq + 1``... of run ``run_id``
        (what `publish` does for each, in a few C-level steps for all of them).

        Example:
            >>> hub = Hub("demo", retain=10, client_buffer=10)
            >>> hub.publish_lines("r1", 1, [b'{"seq":1}\\n', b'{"seq":2}\\n'])
            >>> hub.run, hub.last_seq, hub.counts, hub.held_bytes
            ('r1', 2, {'processing': 2}, 20)
        """
        if not lines:
            return
        run = self._run
        if run is None or run.end is not None or run_id != run.id:
            self.begin_run(run_id)
        ring = self._ring
        ends = list(accumulate(map(len, lines), initial=ring.bytes))
        ring.bytes = total = ends.pop()
        ring.offs += ends
        ring.data += b"".join(lines)
        ring.seqs += range(seq, seq + len(lines))
        ring.head = head = ring.head + len(lines)
        if ring.waiters or ring.pushers:
            ring.wake()
        if head >= ring.check_pos or total >= ring.check_bytes:
            self._settle()

    def end_run(self) -> None:
        """End the current run after its ``complete``: its streams end once drained."""
        run = self._run
        if run is not None and run.end is None:
            run.end = self._ring.head
            self._ring.wake()

    def close(self) -> None:
        """Shut down: every subscription ends once it has drained what it can read."""
        self._ring.close()

    # -- consumer side ---------------------------------------------------------------

    def subscribe(
        self, since: str | None = None, *, on_drop: Callable[[], object] | None = None
    ) -> Subscription:
        """Open a subscription; use it as ``async with hub.subscribe(since) as sub``.

        ``since`` (SPEC §6) picks where the stream starts:

        - None: live envelopes only. If the current run has already ended, its retained
          envelopes and then the end of the stream (no ``lagged`` notice).
        - ``"SEQ"``: retained envelopes of the current run with a higher seq, then live
          (``"0"``: everything retained). A SEQ past the last one means live only.
        - ``"RUN:SEQ"``: like ``SEQ`` when RUN is the current run; for another run, the
          current run from its first retained envelope.
        - Before the first run, every client waits and then gets the first run from
          its start, whatever ``since`` says.

        When envelopes asked for are no longer retained, the stream starts with a
        ``lagged`` notice whose ``missed`` counts them exactly. ``on_drop`` is
        scheduled on the loop (never called by the producer) if the client is lapped.

        Raises:
            BadSince: ``since`` is neither ``SEQ`` nor ``RUN:SEQ``.
        """
        want = parse_since(since)
        run = self._run
        cursor, notice = self._ring.head, None
        if run is not None:
            cursor, notice = self._start(run, want)
        sub = Subscription(
            self._ring,
            run,
            cursor,
            notice,
            (self.client_buffer, self.client_buffer_bytes),
            on_drop=on_drop,
            hub=self,
        )
        self._subs.add(sub)
        return sub

    def _start(self, run: RunSpan, want: tuple[str | None, int] | None) -> tuple[int, Item | None]:
        """Return the cursor and the ``lagged`` notice (if any) for a new subscription."""
        ring = self._ring
        head = ring.head
        oldest = max(run.start, head - self.retain, ring.tail)
        if ring.bytes - ring.offset(oldest) > self.retain_bytes:  # the newest that fit
            floor = ring.bytes - self.retain_bytes
            oldest += bisect_left(range(oldest, head), floor, key=ring.offset)
        if want is None:
            return (head if run.end is None else oldest), None
        want_run, seq = want
        changed = want_run is not None and want_run != run.id
        first = 1 if changed else seq + 1
        oldest_seq = ring.seq_at(oldest) if oldest < head else self._last_seq(run) + 1
        if first >= oldest_seq and not changed:
            cursor = bisect_left(range(oldest, head), first, key=ring.seq_at) + oldest
            return cursor, None
        missed = max(oldest_seq - first, 0)
        if changed:  # always said: the client's run is gone, this is another one
            notice = lagged(self.name, run.id, missed, "run_changed", previous_run=want_run)
        else:
            notice = lagged(self.name, run.id, missed, "not_retained")
        line = memoryview(encode(notice)).tobytes()
        return oldest, Item(run.id, None, "lagged", line)

    def _settle(self) -> None:
        """Bound and trim the ring; every `_sweep_every` lines or a share of
        ``client_buffer_bytes``, drop every lapped client now, so that even a frozen one
        is noticed."""
        ring = self._ring
        ring.settle()
        if ring.head >= self._sweep_pos or ring.bytes >= self._sweep_at:
            self._sweep_pos = ring.head + self._sweep_every
            self._sweep_at = ring.bytes + max(self.client_buffer_bytes // 8, 1)
            for sub in [s for s in self._subs if s.lapped(ring.head)]:
                sub.drop()
        ring.check_pos = min(ring.check_pos, self._sweep_pos)
        ring.check_bytes = min(ring.check_bytes, self._sweep_at)

    # -- called by subscriptions -----------------------------------------------------

    def left(self, sub: Subscription) -> None:
        """``sub`` ended (closed, drained or dropped): it no longer counts as a client."""
        self._subs.discard(sub)

    def lapped(self, sub: Subscription) -> None:
        """``sub`` was dropped for falling too far behind."""
        self._dropped += 1
