"""The counters a pipeline keeps about itself, read at scrape time (SPEC §9).

The engine counts with plain ``int`` increments on these objects: no lock, no call into
a metrics library, nothing on the hot path beyond an attribute increment. Per-call
timings are *sampled* (one chunk in `SAMPLE_EVERY` per stage, and at most one
end-to-end latency sample per `LATENCY_INTERVAL` seconds), so a cheap stage stays cheap.
Whoever exports them (``GET /metrics``, ``pipeline top``, the dashboard) reads the
objects when asked.

A source that can tell how far behind it is (a broker consumer's lag) reports it with
`report_backlog`, from inside the source while it runs::

    from pipeline import report_backlog

    async def my_source(url: str):
        async with connect(url) as consumer:
            while True:
                batch = await consumer.fetch(100)
                report_backlog(consumer.pending)  # messages not yet delivered to this group
                for message in batch:
                    yield message

Outside a run (a unit test calling the source directly) `report_backlog` does nothing.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

__all__ = [
    "LATENCY_INTERVAL",
    "SAMPLE_EVERY",
    "SECONDS_BUCKETS",
    "Histogram",
    "PipelineMeter",
    "SourceMeter",
    "StageMeter",
    "current_source",
    "report_backlog",
]

SAMPLE_EVERY = 64
"""One call in this many is timed, per stage (a power of two, a multiple of 16).

Timing three cheap maps costs ~10 k instructions (four clock readings, three histogram
observations): one chunk in 16 cost ~0.65 k per chunk, one in 64 ~0.16 k."""
LATENCY_INTERVAL = 0.01
"""At most one chunk per this many seconds carries an end-to-end latency probe."""
SECONDS_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (seconds) of the histogram buckets; one more bucket is ``+Inf``."""


class Histogram:
    """Fixed buckets in a plain list: ``observe`` is a bisect and three increments."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, the last bound ``inf``."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None when empty)."""
        if not self.count:
            return None
        rank = q * self.count
        for bound, total in self.cumulative():
            if total >= rank:
                return bound if bound != float("inf") else self.bounds[-1]
        return self.bounds[-1]  # pragma: no cover - the last total is the count


class StageMeter:
    """One transform's outcomes (cumulative over the pipeline's runs) and sampled timings.

    ``upstream`` is set for a plain sync map applied by the source reader: its calls are
    then not counted one by one but derived (every chunk its upstream passed on reached
    it), which keeps the fastest path free of per-stage increments.
    """

    __slots__ = ("calls", "dropped", "errors", "id", "outputs", "retried", "seconds", "upstream")

    def __init__(self, stage_id: str) -> None:
        self.id = stage_id
        self.calls = 0
        self.dropped = 0
        self.errors = 0
        self.retried = 0
        self.outputs: int | None = None  # a stream transform: chunks out (calls = chunks in)
        self.seconds = Histogram()
        self.upstream: StageMeter | SourceMeter | None = None

    @property
    def called(self) -> int:
        """Chunks this stage was called on."""
        return self.upstream.passed if self.upstream is not None else self.calls

    @property
    def passed(self) -> int:
        """Chunks it passed on (``ok``)."""
        if self.outputs is not None:
            return self.outputs
        return max(self.called - self.dropped - self.errors, 0)


class SourceMeter:
    """The source: chunks read, undecodable chunks, and the broker backlog if it tells."""

    __slots__ = ("backlog", "bad", "id", "read")

    def __init__(self, stage_id: str) -> None:
        self.id = stage_id
        self.read = 0
        self.bad = 0
        self.backlog: int | None = None

    @property
    def passed(self) -> int:
        """Chunks handed to the first transform."""
        return self.read - self.bad


class PipelineMeter:
    """Everything one pipeline counts, over all its runs (live ones read at scrape time).

    The live `runs` are objects with ``counts`` (envelopes per status), ``acks.pending``
    and ``sink_queues()``; when a run ends it is folded into the totals with `finish`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.source: SourceMeter | None = None
        self.stages: dict[str, StageMeter] = {}
        self.latency = Histogram()
        self.envelopes: dict[str, int] = {}
        self.runs_ended: dict[str, int] = {}
        self.live: list[Any] = []

    def source_meter(self, stage_id: str) -> SourceMeter:
        """The source's meter (kept across runs)."""
        if self.source is None or self.source.id != stage_id:
            self.source = SourceMeter(stage_id)
        return self.source

    def stage(self, stage_id: str) -> StageMeter:
        """The meter of the transform ``stage_id`` (kept across runs)."""
        meter = self.stages.get(stage_id)
        if meter is None:
            meter = self.stages[stage_id] = StageMeter(stage_id)
        return meter

    def chain(self, source_id: str, stage_ids: Iterable[str]) -> None:
        """Declare the stages in order (listed before their first chunk); forget others.

        A reload that changed the chain drops the meters of stages that are gone; the
        counters of the stages that stay go on from where they were.
        """
        self.source_meter(source_id)
        ids = list(stage_ids)
        self.stages = {sid: self.stage(sid) for sid in ids}

    def begin(self, run: Any) -> None:
        """A run started: it is read live from now on."""
        self.live.append(run)

    def finish(self, run: Any, reason: str) -> None:
        """A run ended: fold its envelope counts into the totals."""
        if run in self.live:
            self.live.remove(run)
        for status, n in run.counts.items():
            self.envelopes[status] = self.envelopes.get(status, 0) + n
        self.runs_ended[reason] = self.runs_ended.get(reason, 0) + 1

    def envelope_totals(self) -> dict[str, int]:
        """Envelopes emitted per status, over every run so far (live ones included)."""
        out = dict(self.envelopes)
        for run in self.live:
            for status, n in run.counts.items():
                out[status] = out.get(status, 0) + n
        return out

    def acks_pending(self) -> int:
        """Messages read and not yet acknowledged, over the live runs."""
        return sum(run.acks.pending for run in self.live)

    def sink_queues(self) -> dict[str, int]:
        """Envelopes waiting per sink, over the live runs."""
        out: dict[str, int] = {}
        for run in self.live:
            for sink, n in run.sink_queues().items():
                out[sink] = out.get(sink, 0) + n
        return out


current_source: ContextVar[SourceMeter | None] = ContextVar("current_source", default=None)
"""The meter of the source being read in this task (set by the engine)."""


def report_backlog(messages: int | None) -> None:
    """Report how many messages wait in the broker for this consumer (None: unknown).

    Call it from inside a source, as often as the broker tells (each fetch, say); it is
    exported as ``pipeline_source_backlog`` and shown by ``pipeline top``. Outside a run
    it does nothing.
    """
    meter = current_source.get()
    if meter is not None:
        meter.backlog = messages
