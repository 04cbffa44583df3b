"""``GET /metrics`` and the JSON stats behind ``pipeline top`` and the dashboard (SPEC §9).

Nothing here runs per chunk. The engine counts with plain integers on each pipeline's
`PipelineMeter`; a scrape reads them through `PipelineCollector` (a prometheus-client
custom collector, imported only when ``/metrics`` is first asked for), and `snapshot`
reads the same numbers into JSON. Labels are pipeline names, stage and sink ids,
transports, statuses and reasons: never a URL, a parameter or a token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pipeline.meter import SAMPLE_EVERY, Histogram, PipelineMeter
from pipeline.server.reload_status import RELOAD_OUTCOMES, ReloadStatus

if TYPE_CHECKING:
    from prometheus_client.registry import Collector, CollectorRegistry

__all__ = [
    "TRANSPORTS",
    "LoopCollector",
    "PipelineCollector",
    "ReloadCollector",
    "metrics_text",
    "registry_for",
    "snapshot",
]

TRANSPORTS = ("ndjson", "sse", "ws")
"""The ``transport`` label values of ``pipeline_clients``."""
STATES = ("pending", "running", "completed", "failed")

Clients = Callable[[str], Mapping[str, int]]
"""``clients(pipeline) -> {transport: open connections}``."""


def stage_rows(meter: PipelineMeter) -> list[dict[str, Any]]:
    """Per stage (the source first): id, outcomes, and the sampled call-time histogram."""
    rows: list[dict[str, Any]] = []
    src = meter.source
    if src is not None:
        rows.append(
            {
                "stage": src.id,
                "role": "source",
                "ok": src.passed,
                "dropped": 0,
                "error": src.bad,
                "retried": 0,
                "in": src.read,
                "seconds": None,
            }
        )
    for m in meter.stages.values():
        rows.append(
            {
                "stage": m.id,
                "role": "transform",
                "ok": m.passed,
                "dropped": m.dropped,
                "error": m.errors,
                "retried": m.retried,
                "in": m.called,
                "seconds": m.seconds,
            }
        )
    return rows


def snapshot(
    state: Mapping[str, Any], meter: PipelineMeter, clients: Mapping[str, int]
) -> dict[str, Any]:
    """The ``stats`` object of one pipeline in ``/pipelines``: counters, not rates.

    Rates are the difference of two snapshots over the time between them (``pipeline
    top`` and the dashboard poll once a second); ``p99`` is the upper bound of the
    bucket holding the 99th percentile of the sampled calls.
    """
    stages = []
    for row in stage_rows(meter):
        hist = row.pop("seconds")
        p99 = hist.quantile(0.99) if isinstance(hist, Histogram) else None
        stages.append({**row, "p99_s": p99, "timed": hist.count if hist else 0})
    src = meter.source
    envelopes = meter.envelope_totals()
    return {
        "in": src.read if src is not None else 0,
        "out": envelopes.get("processing", 0),
        "chunk_errors": envelopes.get("chunk_error", 0),
        "envelopes": envelopes,
        "runs": dict(meter.runs_ended),
        "clients": dict(clients),
        "sink_queue": meter.sink_queues(),
        "acks_pending": meter.acks_pending(),
        "backlog": src.backlog if src is not None else None,
        "latency_p99_s": meter.latency.quantile(0.99),
        "stages": stages,
        "state": state.get("state"),
    }


class PipelineCollector:
    """A prometheus-client collector reading every pipeline's meter at scrape time."""

    def __init__(
        self,
        meters: Callable[[], Mapping[str, PipelineMeter]],
        states: Callable[[str], str],
        clients: Clients,
        dropped: Callable[[str], int],
        evicted: Callable[[str], int],
    ) -> None:
        self.meters = meters
        self.states = states
        self.clients = clients
        self.dropped = dropped
        self.evicted = evicted

    def collect(self) -> Iterator[Any]:
        """Yield the metric families of SPEC §9 (called by the registry per scrape)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        c = CounterMetricFamily
        g = GaugeMetricFamily
        envelopes = c("pipeline_envelopes", "Envelopes emitted", labels=["pipeline", "status"])
        chunks = c(
            "pipeline_stage_chunks",
            "Chunks per stage and outcome (ok, dropped, error; retried: retry attempts)",
            labels=["pipeline", "stage", "outcome"],
        )
        seconds = HistogramMetricFamily(
            "pipeline_stage_seconds",
            f"Time of one stage call (sampled: one call in {SAMPLE_EVERY})",
            labels=["pipeline", "stage"],
        )
        latency = HistogramMetricFamily(
            "pipeline_latency_seconds",
            "End to end: a chunk read from the source to its envelope accepted by every sink "
            "(sampled)",
            labels=["pipeline"],
        )
        queue = g("pipeline_sink_queue", "Envelopes waiting per sink", labels=["pipeline", "sink"])
        clients = g("pipeline_clients", "HTTP clients connected", labels=["pipeline", "transport"])
        dropped = c(
            "pipeline_clients_dropped", "Clients dropped for falling behind", labels=["pipeline"]
        )
        evicted = c(
            "pipeline_clients_evicted",
            "Idle streams ended at max_clients to make room for a new client",
            labels=["pipeline"],
        )
        runs = c("pipeline_runs", "Runs ended, by reason", labels=["pipeline", "reason"])
        acks = g(
            "pipeline_acks_pending", "Messages read, not yet acknowledged", labels=["pipeline"]
        )
        backlog = g(
            "pipeline_source_backlog",
            "Messages in the broker not yet delivered to this consumer (when it tells)",
            labels=["pipeline"],
        )
        state = g(
            "pipeline_state", "1 for the pipeline's current state", labels=["pipeline", "state"]
        )
        for name, meter in self.meters().items():
            for status, n in sorted(meter.envelope_totals().items()):
                envelopes.add_metric([name, status], n)
            for row in stage_rows(meter):
                for outcome in ("ok", "dropped", "error", "retried"):
                    chunks.add_metric([name, row["stage"], outcome], row[outcome])
                hist = row["seconds"]
                if isinstance(hist, Histogram):
                    seconds.add_metric([name, row["stage"]], *_buckets(hist))
            latency.add_metric([name], *_buckets(meter.latency))
            for sink, n in sorted(meter.sink_queues().items()):
                queue.add_metric([name, sink], n)
            open_clients = self.clients(name)
            for transport in TRANSPORTS:
                clients.add_metric([name, transport], open_clients.get(transport, 0))
            dropped.add_metric([name], self.dropped(name))
            evicted.add_metric([name], self.evicted(name))
            for reason, n in sorted(meter.runs_ended.items()):
                runs.add_metric([name, reason], n)
            acks.add_metric([name], meter.acks_pending())
            if meter.source is not None and meter.source.backlog is not None:
                backlog.add_metric([name], meter.source.backlog)
            current = self.states(name)
            for s in STATES:
                state.add_metric([name, s], 1 if s == current else 0)
        yield from (envelopes, chunks, seconds, latency, queue, clients, dropped, evicted, runs)
        yield from (acks, backlog, state)


class ReloadCollector:
    """The outcome of reloads (SIGHUP, ``--reload``), read from a `ReloadStatus` per scrape."""

    def __init__(self, status: ReloadStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        """Yield ``pipeline_reloads_total`` and the ``pipeline_reload_*`` gauges."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.status
        total = CounterMetricFamily(
            "pipeline_reloads",
            "Reloads by outcome: applied, rejected (the config did not validate), "
            "failed (an unexpected error)",
            labels=["outcome"],
        )
        for outcome in RELOAD_OUTCOMES:
            total.add_metric([outcome], getattr(s, outcome))
        yield total
        yield GaugeMetricFamily(
            "pipeline_reload_last_successful",
            "1 if the last reload applied (or none was tried yet), 0 if it did not",
            value=0 if s.last_outcome in ("rejected", "failed") else 1,
        )
        if s.last_attempt is not None:
            yield GaugeMetricFamily(
                "pipeline_reload_last_attempt_timestamp_seconds",
                "UNIX time of the last reload tried",
                value=s.last_attempt,
            )
        if s.last_success is not None:
            yield GaugeMetricFamily(
                "pipeline_reload_last_success_timestamp_seconds",
                "UNIX time of the last reload that applied",
                value=s.last_success,
            )


def _buckets(hist: Histogram) -> tuple[list[tuple[str, float]], float]:
    out = [("+Inf" if b == float("inf") else repr(b), float(n)) for b, n in hist.cumulative()]
    return out, hist.sum


class LoopCollector:
    """The event loop's lag, read per scrape from ``lags() -> (last, max since start)``."""

    def __init__(self, lags: Callable[[], tuple[float, float]]) -> None:
        self.lags = lags

    def collect(self) -> Iterator[Any]:
        """Yield ``pipeline_event_loop_lag_seconds`` and its maximum."""
        from prometheus_client.core import GaugeMetricFamily

        last, most = self.lags()
        yield GaugeMetricFamily(
            "pipeline_event_loop_lag_seconds",
            "How late the event loop last ran a timer (a sync stage holding it shows here)",
            value=last,
        )
        yield GaugeMetricFamily(
            "pipeline_event_loop_lag_max_seconds", "The largest loop lag since start", value=most
        )


def registry_for(*collectors: Collector) -> CollectorRegistry:
    """A private registry holding only ``collectors`` (no process or platform metrics)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, which every Prometheus version reads."""


def metrics_text(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition text of ``registry`` and its content type."""
    from prometheus_client import generate_latest

    return generate_latest(registry), CONTENT_TYPE
