"""The run's batch: a lone chunk goes out at once, a burst keeps order, seq and isolation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import anyio
import orjson
import pytest

from pipeline.engine.batch import FLUSH_EVERY, FLUSH_MAX
from pipeline.engine.run import Run
from pipeline.testing import make_stage, run_pipeline

pytestmark = pytest.mark.anyio


def tag(chunk: dict[str, Any]) -> dict[str, Any]:
    return {**chunk, "tagged": True}


async def tag_async(chunk: dict[str, Any]) -> dict[str, Any]:
    return {**chunk, "tagged": True}


@pytest.mark.parametrize("transform", [tag, tag_async], ids=["sync map", "async map"])
async def test_lone_chunk_goes_out_while_the_source_waits(transform: Callable[..., Any]) -> None:
    """A chunk the source yields before a long wait is emitted during that wait."""
    release = asyncio.Event()
    emitted = asyncio.Event()
    seen: list[str] = []

    async def source() -> AsyncIterator[dict[str, int]]:
        yield {"n": 1}
        await release.wait()
        yield {"n": 2}

    def publish(env: dict[str, Any], line: bytes) -> None:
        seen.append(env["status"])
        if env["status"] == "processing":
            emitted.set()

    run = Run(
        "p",
        make_stage(source, "source"),
        [make_stage(transform, "transform")],
        [],
        publish=publish,
    )
    task = asyncio.create_task(run.execute())
    try:
        with anyio.fail_after(30):
            await emitted.wait()
        assert seen == ["starting", "processing"]
    finally:
        release.set()
        with anyio.fail_after(30):
            await task
    assert seen == ["starting", "processing", "processing", "complete"]


def picky(chunk: Any) -> Any:
    if chunk == 4:
        raise ValueError("four")
    return chunk


@pytest.mark.parametrize("extra", [[], [tag_async]], ids=["reader", "chain"])
async def test_burst_keeps_order_seq_and_isolation(extra: list[Callable[..., Any]]) -> None:
    """One burst mixing plain chunks, a fallback encoding, an unencodable chunk and a
    failing one: envelopes in source order, seq without gaps, failures as chunk_error."""
    odd: list[Any] = [1, Decimal("2.5"), object(), 4, 5, 6]

    async def burst() -> AsyncIterator[Any]:
        for item in odd:
            yield item

    def wrap(chunk: Any) -> Any:
        return {"v": chunk}

    stages: list[Callable[..., Any]] = [picky, wrap, *extra]
    envs = await run_pipeline(burst, stages)
    assert [e["seq"] for e in envs] == list(range(1, len(envs) + 1))
    assert [e["status"] for e in envs] == [
        "starting",
        *("processing", "processing", "chunk_error", "chunk_error", "processing"),
        *("processing", "complete"),
    ]
    data = [e["data"]["v"] for e in envs if e["status"] == "processing"]
    assert data == [1, Decimal("2.5"), 5, 6]
    assert [e["error"]["type"] for e in envs if e["status"] == "chunk_error"] == [
        "UnencodableError",
        "ValueError",
    ]


async def test_hub_takes_processing_lines_in_batches() -> None:
    """With ``publish_lines``, processing lines go there with the seq of the first (the
    same bytes and numbers as one by one); other envelopes still go to ``publish`` (and a
    chunk carrying a latency probe, one by one)."""
    COUNT = 3 * FLUSH_MAX + 40
    published: list[tuple[str, int]] = []
    batches: list[tuple[int, list[bytes]]] = []

    async def burst() -> AsyncIterator[dict[str, int]]:
        for n in range(COUNT):
            yield {"n": n}

    run = Run(
        "p",
        make_stage(burst, "source"),
        [make_stage(tag, "transform")],
        [],
        publish=lambda env, line: published.append((env["status"], env["seq"])),
        publish_lines=lambda run_id, seq, lines: batches.append((seq, lines)),
    )
    assert await run.execute() == "finished"
    assert published[0] == ("starting", 1)
    assert published[-1] == ("complete", COUNT + 2)
    assert {status for status, _ in published[1:-1]} <= {"processing"}
    decoded = [orjson.loads(line) for _, lines in batches for line in lines]
    assert [d["seq"] for d in decoded] == [seq + i for seq, ls in batches for i in range(len(ls))]
    seqs = sorted([d["seq"] for d in decoded] + [seq for _, seq in published[1:-1]])
    assert seqs == list(range(2, COUNT + 2))
    assert all(d["data"] == {"n": d["seq"] - 2, "tagged": True} for d in decoded)
    # one burst, no sink: flushed each time the reader holds FLUSH_MAX chunks
    assert len(batches) > 1
    assert max(len(lines) for _, lines in batches) <= FLUSH_MAX


@pytest.mark.parametrize("buffer", [8, 64, 256, 2048])
async def test_a_sink_queue_overshoots_its_buffer_by_a_quarter_at_most(buffer: int) -> None:
    """The reader flushes once it holds a quarter of the smallest sink buffer (at least
    FLUSH_EVERY, at most FLUSH_MAX chunks), so a full queue holds at most that much more
    than its buffer."""
    count = 3 * buffer + 1000
    most: list[int] = [0]
    got: list[int] = []

    async def burst() -> AsyncIterator[dict[str, int]]:
        for n in range(count):
            yield {"n": n}

    async def slow(envelope: dict[str, Any]) -> None:
        most[0] = max(most[0], sum(run.sink_queues().values()))
        got.append(envelope["seq"])
        if len(got) % 50 == 0:
            await asyncio.sleep(0.001)

    run = Run("p", make_stage(burst, "source"), [], [make_stage(slow, "sink")], sink_buffer=buffer)
    with anyio.fail_after(60):
        assert await run.execute() == "finished"
    every = max(FLUSH_EVERY, min(FLUSH_MAX, buffer // 4))
    assert got == list(range(1, count + 3))
    assert buffer <= most[0] + 1
    assert most[0] <= buffer + every
