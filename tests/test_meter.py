"""The engine's own counters (SPEC §9): outcomes per stage, timings, latency, acks, backlog."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipeline import BadChunk, Message, report_backlog, stream_transform
from pipeline.engine.run import Run
from pipeline.meter import SAMPLE_EVERY, Histogram, PipelineMeter
from pipeline.testing import make_stage

pytestmark = pytest.mark.anyio


async def numbers(count: int = 100) -> AsyncIterator[dict[str, int]]:
    for i in range(count):
        yield {"n": i}


def evens(chunk: dict[str, int]) -> dict[str, int] | None:
    return chunk if chunk["n"] % 2 == 0 else None


def no_sevens(chunk: dict[str, int]) -> dict[str, int]:
    if chunk["n"] % 7 == 0:
        raise ValueError("seven")
    return chunk


async def async_no_sevens(chunk: dict[str, int]) -> dict[str, int]:
    return no_sevens(chunk)


async def twice(chunk: dict[str, int]) -> AsyncIterator[dict[str, int]]:
    if chunk["n"] % 10 == 0:
        return
    yield chunk
    yield chunk


@stream_transform
async def pairs(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    held: list[Any] = []
    async for c in chunks:
        held.append(c)
        if len(held) == 2:
            yield held
            held = []


def outcomes(meter: PipelineMeter, sid: str) -> tuple[int, int, int, int]:
    m = meter.stages[sid]
    return m.called, m.passed, m.dropped, m.errors


async def run(source: Any, transforms: list[Any], meter: PipelineMeter | None = None) -> Run:
    r = Run("p", source, transforms, [], publish=lambda env, line: None, meter=meter)
    await r.execute()
    return r


async def test_leading_sync_maps_are_derived_exactly() -> None:
    """Plain sync maps run by the source reader: calls derived, drops and errors counted."""
    r = await run(
        make_stage(numbers, "source"),
        [make_stage(evens, id="evens"), make_stage(no_sevens, id="sevens")],
    )
    m = r.meter
    assert m.source is not None and m.source.read == 100
    assert outcomes(m, "evens") == (100, 50, 50, 0)
    assert outcomes(m, "sevens") == (50, 42, 0, 8)  # 0, 14, ..., 98: eight even sevens
    assert r.processed == 42 and r.chunk_errors == 8
    assert 0 < m.stages["evens"].seconds.count <= 100 // SAMPLE_EVERY + 1


async def async_no_64(chunk: dict[str, int]) -> dict[str, int] | None:
    return None if chunk["n"] == 64 else chunk


async def test_leading_async_maps_timed_and_counted() -> None:
    """Plain async maps run by the source reader, mixed with a sync one: the sampled chunks
    (the first one raises, chunk 64 is dropped) count and time like the others."""
    r = await run(
        make_stage(numbers, "source", params={"count": 200}),
        [
            make_stage(async_no_sevens, id="a7"),
            make_stage(evens, id="evens"),
            make_stage(async_no_64, id="a64"),
        ],
    )
    m = r.meter
    assert outcomes(m, "a7") == (200, 171, 0, 29)  # 0, 7, ..., 196
    assert outcomes(m, "evens") == (171, 85, 86, 0)
    assert outcomes(m, "a64") == (85, 84, 1, 0)
    assert r.processed == 84 and r.chunk_errors == 29
    for sid in ("a7", "evens", "a64"):
        assert 1 <= m.stages[sid].seconds.count <= 200 // SAMPLE_EVERY + 1


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_async_maps_count_calls_errors_and_retries(concurrency: int) -> None:
    """An async map with retries, alone or concurrent: every outcome and retry attempt."""
    r = await run(
        make_stage(numbers, "source"),
        [
            make_stage(evens, id="evens"),
            make_stage(async_no_sevens, id="a", retry=(3, 0.0), concurrency=concurrency),
        ],
    )
    m = r.meter
    assert outcomes(m, "a") == (50, 42, 0, 8)
    assert m.stages["a"].retried == 16  # two retries for each of the 8 failures
    assert m.stages["a"].seconds.count >= 1


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_flat_map_counts_dropped_inputs(concurrency: int) -> None:
    """A flat-map: an input with no output is dropped; the others are ok."""
    r = await run(
        make_stage(numbers, "source"),
        [make_stage(twice, id="twice", concurrency=concurrency)],
    )
    assert outcomes(r.meter, "twice") == (100, 90, 10, 0)
    assert r.processed == 180


async def test_stream_transform_counts_in_and_out() -> None:
    """A whole-stream transform: chunks in are its calls, chunks out its ok."""
    r = await run(make_stage(numbers, "source"), [make_stage(pairs, id="pairs")])
    called, passed, _, _ = outcomes(r.meter, "pairs")
    assert (called, passed) == (100, 50)


async def test_maps_after_a_slow_layer_are_counted() -> None:
    """Plain maps after an async stage share one layer and are still counted exactly."""
    r = await run(
        make_stage(numbers, "source"),
        [
            make_stage(async_no_sevens, id="a"),
            make_stage(evens, id="evens"),
            make_stage(lambda c: c, id="same"),
        ],
    )
    assert outcomes(r.meter, "a") == (100, 85, 0, 15)
    assert outcomes(r.meter, "evens") == (85, 42, 43, 0)
    assert outcomes(r.meter, "same") == (42, 42, 0, 0)


async def test_latency_is_sampled_from_read_to_delivery() -> None:
    """End-to-end probes ride on chunks (also past a filter) and are recorded once delivered."""

    async def paced() -> AsyncIterator[dict[str, int]]:
        for i in range(400):
            yield {"n": i}
            if i % 50 == 0:
                await asyncio.sleep(0.02)

    r = await run(make_stage(paced, "source"), [make_stage(evens, id="evens")])
    lat = r.meter.latency
    assert 1 <= lat.count <= r.processed
    assert lat.sum > 0


async def test_acks_pending_and_backlog() -> None:
    """Messages not yet acknowledged are pending; a source reports its broker backlog."""
    acked: list[int] = []
    seen: list[tuple[int, int | None]] = []
    meter = PipelineMeter("p")

    async def broker() -> AsyncIterator[Any]:
        for i in range(5):
            report_backlog(5 - i)
            yield Message({"n": i}, ack=lambda i=i: acked.append(i))
        yield BadChunk(b"\xff", ValueError("undecodable"), ack=lambda: acked.append(99))
        await asyncio.sleep(0)

    gate = asyncio.Event()

    async def held(chunk: Any) -> Any:
        if chunk["n"] == 2:
            seen.append((meter.acks_pending(), meter.source.backlog if meter.source else None))
            gate.set()
        return chunk

    r = await run(make_stage(broker, "source"), [make_stage(held, id="h")], meter)
    assert gate.is_set()
    assert seen[0][0] >= 1 and seen[0][1] == 3
    assert sorted(acked) == [0, 1, 2, 3, 4, 99]
    assert meter.acks_pending() == 0 and r.acks.pending == 0
    assert meter.source is not None and meter.source.bad == 1


def test_report_backlog_outside_a_run_does_nothing() -> None:
    """A source called directly (a unit test) may report without a run."""
    report_backlog(7)


async def test_totals_accumulate_over_runs() -> None:
    """Envelope counts and run reasons are cumulative per pipeline, live runs included."""
    meter = PipelineMeter("p")
    for _ in range(2):
        await run(make_stage(numbers, "source"), [make_stage(evens, id="evens")], meter)
    totals = meter.envelope_totals()
    assert totals == {"starting": 2, "processing": 100, "complete": 2}
    assert meter.runs_ended == {"finished": 2}
    assert outcomes(meter, "evens") == (200, 100, 100, 0)
    assert meter.live == []


def test_histogram_quantile_and_buckets() -> None:
    """Quantiles are bucket upper bounds; cumulative counts end with +Inf = count."""
    h = Histogram((0.1, 1.0))
    assert h.quantile(0.99) is None
    for v in (0.05, 0.5, 0.5, 5.0):
        h.observe(v)
    assert h.cumulative() == [(0.1, 1), (1.0, 3), (float("inf"), 4)]
    assert h.quantile(0.5) == 1.0
    assert h.quantile(0.99) == 1.0  # +Inf reports the last finite bound
    assert h.sum == pytest.approx(6.05)
