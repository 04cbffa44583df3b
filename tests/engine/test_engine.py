"""The engine: envelope sequences, isolation, reasons, limits, sinks and cleanup."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from pipeline import BadChunk, Message, sink, stream_transform
from pipeline.engine.run import Run
from pipeline.engine.source import FAIRNESS_EVERY
from pipeline.testing import make_stage, run_pipeline

pytestmark = pytest.mark.anyio


async def numbers(count: int = 5) -> AsyncIterator[dict[str, int]]:
    for i in range(count):
        yield {"n": i}


def statuses(envs: list[dict[str, Any]]) -> list[str]:
    return [e["status"] for e in envs]


def assert_well_formed(envs: list[dict[str, Any]]) -> None:
    assert envs[0]["status"] == "starting"
    assert envs[-1]["status"] == "complete"
    assert statuses(envs).count("complete") == 1
    assert [e["seq"] for e in envs] == list(range(1, len(envs) + 1))
    assert len({e["run"] for e in envs}) == 1
    stats = envs[-1]["stats"]
    assert stats["processed"] == statuses(envs).count("processing")
    assert stats["chunk_errors"] == statuses(envs).count("chunk_error")
    assert stats["errors"] == statuses(envs).count("error")


async def test_simple_run_sequence() -> None:
    """A run is starting, one processing per chunk, then complete(finished)."""
    envs = await run_pipeline(numbers, [lambda c: {**c, "x": c["n"] * 2}])
    assert_well_formed(envs)
    assert statuses(envs) == ["starting"] + ["processing"] * 5 + ["complete"]
    assert [e["data"]["x"] for e in envs[1:-1]] == [0, 2, 4, 6, 8]
    assert envs[-1]["reason"] == "finished"
    assert envs[-1]["pipeline"] == "test"


async def test_chunk_error_and_run_goes_on() -> None:
    """A chunk that raises becomes chunk_error with stage, error and chunk; the run goes on."""

    def picky(chunk: dict[str, int]) -> dict[str, int]:
        if chunk["n"] == 2:
            raise ValueError("two is bad")
        return chunk

    envs = await run_pipeline(numbers, [picky])
    assert_well_formed(envs)
    err = envs[3]
    assert err["status"] == "chunk_error"
    assert err["stage"] == "transforms[0]:picky"
    assert err["error"] == {"type": "ValueError", "message": "two is bad"}
    assert err["chunk"] == {"n": 2}
    assert statuses(envs).count("processing") == 4
    assert envs[-1]["reason"] == "finished"


async def test_none_drops_and_failures_skip_later_stages() -> None:
    """None drops a chunk; a failed chunk skips the remaining transforms."""
    seen: list[int] = []

    def evens(chunk: dict[str, int]) -> dict[str, int] | None:
        return chunk if chunk["n"] % 2 == 0 else None

    def boom_on_zero(chunk: dict[str, int]) -> dict[str, int]:
        if chunk["n"] == 0:
            raise KeyError("zero")
        return chunk

    def record(chunk: dict[str, int]) -> dict[str, int]:
        seen.append(chunk["n"])
        return chunk

    envs = await run_pipeline(numbers, [evens, boom_on_zero, record])
    assert_well_formed(envs)
    assert statuses(envs) == ["starting", "chunk_error", "processing", "processing", "complete"]
    assert seen == [2, 4]


async def test_async_and_flat_map() -> None:
    """An async function maps; an async generator of one chunk flat-maps in order."""

    async def double(chunk: dict[str, int]) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"n": chunk["n"] * 2}

    async def explode(chunk: dict[str, int]) -> AsyncIterator[int]:
        for i in range(chunk["n"] // 2):
            yield i

    envs = await run_pipeline(numbers, [double, explode])
    assert_well_formed(envs)
    assert [e["data"] for e in envs if e["status"] == "processing"] == [
        0,
        0,
        1,
        0,
        1,
        2,
        0,
        1,
        2,
        3,
    ]


async def test_mixed_sync_and_async_maps() -> None:
    """Sync and async maps in one chain: each failure and drop lands on its own stage."""

    def sync_one(chunk: dict[str, int]) -> dict[str, int]:
        if chunk["n"] == 1:
            raise ValueError("sync one")
        return chunk

    async def async_two(chunk: dict[str, int]) -> dict[str, Any] | None:
        if chunk["n"] == 2:
            raise ValueError("async two")
        return None if chunk["n"] == 3 else {**chunk, "a": 1}

    def tag(chunk: dict[str, Any]) -> dict[str, Any]:
        return {**chunk, "s": 2}

    envs = await run_pipeline(numbers, [sync_one, async_two, tag], source_params={"count": 5})
    assert_well_formed(envs)
    got = [(e["status"], e.get("stage"), e.get("data")) for e in envs[1:-1]]
    assert got == [
        ("processing", None, {"n": 0, "a": 1, "s": 2}),
        ("chunk_error", "transforms[0]:sync_one", None),
        ("chunk_error", "transforms[1]:async_two", None),
        ("processing", None, {"n": 4, "a": 1, "s": 2}),
    ]


async def test_flat_map_failure_keeps_earlier_outputs() -> None:
    """A flat-map that raises after two outputs keeps them and adds one chunk_error."""

    async def partial(chunk: dict[str, int]) -> AsyncIterator[int]:
        yield 1
        yield 2
        raise RuntimeError("half way")

    envs = await run_pipeline(numbers, [partial], source_params={"count": 1})
    assert statuses(envs) == ["starting", "processing", "processing", "chunk_error", "complete"]
    assert envs[3]["error"]["message"] == "half way"


async def test_sync_generator_flat_map() -> None:
    """A sync generator of one chunk is a flat-map too."""

    def twice(chunk: dict[str, int]) -> Any:
        yield chunk
        yield chunk

    envs = await run_pipeline(numbers, [twice], source_params={"count": 2})
    assert statuses(envs).count("processing") == 4


async def test_stream_transform_batches_and_failures_bypass() -> None:
    """A whole-stream transform sees chunks only; failures bypass it, order kept."""

    @stream_transform
    async def pairs(chunks: AsyncIterator[Any]) -> AsyncIterator[list[Any]]:
        batch: list[Any] = []
        async for chunk in chunks:
            batch.append(chunk["n"])
            if len(batch) == 2:
                yield batch
                batch = []
        if batch:
            yield batch

    def fail_one(chunk: dict[str, int]) -> dict[str, int]:
        if chunk["n"] == 1:
            raise ValueError("one")
        return chunk

    envs = await run_pipeline(numbers, [fail_one, pairs])
    assert_well_formed(envs)
    assert statuses(envs) == ["starting", "chunk_error", "processing", "processing", "complete"]
    assert [e.get("data") for e in envs[2:4]] == [[0, 2], [3, 4]]


async def test_stream_transform_crash_is_run_error() -> None:
    """A whole-stream transform that raises ends the run: error then complete(error)."""

    @stream_transform
    async def broken(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for chunk in chunks:
            if chunk["n"] == 2:
                raise RuntimeError("window broke")
            yield chunk

    envs = await run_pipeline(numbers, [broken])
    assert_well_formed(envs)
    assert statuses(envs) == ["starting", "processing", "processing", "error", "complete"]
    assert envs[3]["stage"] == "transforms[0]:broken"
    assert envs[3]["error"] == {"type": "RuntimeError", "message": "window broke"}
    assert envs[-1]["reason"] == "error"


async def test_stream_transform_with_aiostream_operators() -> None:
    """A stream transform may use aiostream's operators on the chunk iterator."""
    from aiostream import stream

    @stream_transform
    async def triples(chunks: AsyncIterator[Any]) -> AsyncIterator[list[int]]:
        async with stream.chunks(stream.map(chunks, lambda c: c["n"]), 3).stream() as batches:
            async for batch in batches:
                yield batch

    envs = await run_pipeline(numbers, [triples], source_params={"count": 7})
    assert_well_formed(envs)
    assert [e["data"] for e in envs if e["status"] == "processing"] == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("ordered", [True, False])
async def test_concurrency_bounded_and_ordered(ordered: bool) -> None:
    """concurrency=4 keeps at most 4 chunks in flight; ordered keeps input order."""
    in_flight = 0
    peak = 0

    async def slow(chunk: dict[str, int]) -> dict[str, int]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001 * (5 - chunk["n"] % 5))
        in_flight -= 1
        return chunk

    stage = make_stage(slow, id="slow", concurrency=4, ordered=ordered)
    envs = await run_pipeline(numbers, [stage], source_params={"count": 20})
    assert_well_formed(envs)
    got = [e["data"]["n"] for e in envs if e["status"] == "processing"]
    assert sorted(got) == list(range(20))
    if ordered:
        assert got == list(range(20))
    assert peak == 4


async def test_concurrent_failures_isolated() -> None:
    """With concurrency, a failing chunk is still only a chunk_error."""

    async def odd_fails(chunk: dict[str, int]) -> dict[str, int]:
        await asyncio.sleep(0)
        if chunk["n"] % 2:
            raise ValueError("odd")
        return chunk

    stage = make_stage(odd_fails, id="odd", concurrency=3)
    envs = await run_pipeline(numbers, [stage], source_params={"count": 10})
    assert_well_formed(envs)
    assert statuses(envs).count("chunk_error") == 5
    assert envs[-1]["reason"] == "finished"


async def test_timeout_becomes_chunk_error() -> None:
    """A stage that overruns its timeout becomes chunk_error(TimeoutError)."""

    async def hang(chunk: dict[str, int]) -> dict[str, int]:
        if chunk["n"] == 1:
            await asyncio.sleep(30)
        return chunk

    envs = await run_pipeline(numbers, [make_stage(hang, id="hang", timeout=0.05)])
    assert_well_formed(envs)
    assert envs[2]["status"] == "chunk_error"
    assert envs[2]["error"] == {"type": "TimeoutError", "message": "stage timed out after 0.05 s"}


@pytest.mark.parametrize("flat", [False, True])
async def test_timeout_chunk_error_says_how_many_attempts(flat: bool) -> None:
    """A retried stage that keeps timing out says the timeout and the attempts made."""

    async def hang(chunk: dict[str, int]) -> dict[str, int]:
        await asyncio.sleep(30)
        return chunk

    async def hang_flat(chunk: dict[str, int]) -> AsyncIterator[dict[str, int]]:
        await asyncio.sleep(30)
        yield chunk

    stage = make_stage(hang_flat if flat else hang, id="hang", timeout=0.02, retry=(3, 0.001))
    envs = await run_pipeline(numbers, [stage], source_params={"count": 1})
    assert statuses(envs) == ["starting", "chunk_error", "complete"]
    assert envs[1]["error"] == {
        "type": "TimeoutError",
        "message": "stage timed out after 0.02 s (3 attempts)",
    }


@pytest.mark.parametrize(("attempts", "expected"), [(3, "processing"), (2, "chunk_error")])
async def test_retry(attempts: int, expected: str) -> None:
    """A flaky stage is retried `attempts` times before becoming a chunk_error."""
    calls = 0

    def flaky(chunk: dict[str, int]) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("try again")
        return chunk

    stage = make_stage(flaky, id="flaky", retry=(attempts, 0.001))
    envs = await run_pipeline(numbers, [stage], source_params={"count": 1})
    assert statuses(envs) == ["starting", expected, "complete"]
    assert calls == min(attempts, 3)


async def test_blocking_runs_in_worker_thread() -> None:
    """A `blocking: true` stage runs off the event loop thread."""
    loop_thread = threading.get_ident()

    def where(chunk: dict[str, int]) -> dict[str, Any]:
        return {"n": chunk["n"], "off_loop": threading.get_ident() != loop_thread}

    envs = await run_pipeline(numbers, [make_stage(where, id="where", blocking=True)])
    data = [e["data"] for e in envs if e["status"] == "processing"]
    assert data == [{"n": n, "off_loop": True} for n in range(5)]


async def test_max_chunk_errors_ends_run() -> None:
    """Passing max_chunk_errors ends the run with error, and the source stops."""
    produced = 0

    async def endless() -> AsyncIterator[dict[str, int]]:
        nonlocal produced
        while True:
            produced += 1
            yield {"n": produced}

    def always(chunk: Any) -> Any:
        raise ValueError("nope")

    envs = await run_pipeline(endless, [always], max_chunk_errors=2)
    assert_well_formed(envs)
    assert statuses(envs) == ["starting"] + ["chunk_error"] * 3 + ["error", "complete"]
    assert envs[-2]["error"]["message"] == "more than 2 chunk errors (max_chunk_errors)"
    assert envs[-1]["reason"] == "error"
    assert produced < 10


async def test_source_error_after_chunks() -> None:
    """A source that raises: chunks so far delivered, then error, then complete(error)."""

    async def dies() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise OSError("disk gone")

    envs = await run_pipeline(dies)
    assert_well_formed(envs)
    assert statuses(envs) == ["starting", "processing", "processing", "error", "complete"]
    assert envs[3]["stage"] == "source:dies"
    assert envs[3]["error"] == {"type": "OSError", "message": "disk gone"}
    assert envs[-1]["reason"] == "error"


async def test_source_failing_to_start() -> None:
    """A source that raises when called still gives starting, error, complete."""

    def broken() -> Any:
        raise RuntimeError("cannot connect")

    envs = await run_pipeline(broken)
    assert statuses(envs) == ["starting", "error", "complete"]


async def test_bad_chunk_from_source() -> None:
    """A source may yield BadChunk for an undecodable record: a chunk_error, run goes on."""

    async def mixed() -> AsyncIterator[Any]:
        yield {"ok": 1}
        yield BadChunk("{oops", ValueError("bad JSON"))
        yield {"ok": 2}

    envs = await run_pipeline(mixed, [lambda c: c])
    assert statuses(envs) == ["starting", "processing", "chunk_error", "processing", "complete"]
    assert envs[2]["stage"] == "source:mixed"
    assert envs[2]["chunk"] == "{oops"


async def test_plain_iterable_and_sync_generator_sources() -> None:
    """A sync generator or a function returning a list works as a source."""

    def gen() -> Any:
        yield from range(3)

    def listing() -> list[int]:
        return [7, 8]

    assert statuses(await run_pipeline(gen)).count("processing") == 3
    envs = await run_pipeline(listing)
    assert [e["data"] for e in envs if e["status"] == "processing"] == [7, 8]


async def test_unencodable_data_becomes_chunk_error() -> None:
    """Data orjson cannot encode becomes chunk_error, without the chunk if unencodable too."""

    def weird(chunk: dict[str, int]) -> Any:
        return {"obj": object()} if chunk["n"] == 1 else chunk

    envs = await run_pipeline(numbers, [weird], source_params={"count": 3})
    assert_well_formed(envs)
    assert envs[2]["status"] == "chunk_error"
    assert envs[2]["stage"] == "transforms[0]:weird"
    assert envs[2]["error"]["type"] == "UnencodableError"
    assert "chunk" not in envs[2]


async def test_colliding_keys_become_a_chunk_error_naming_them() -> None:
    """Data whose keys collide as JSON text (`1` and `"1"`) is a chunk_error, never a
    line with a duplicate key."""

    def clash(chunk: dict[str, int]) -> Any:
        return {1: "int", "1": "str"} if chunk["n"] == 1 else chunk

    envs = await run_pipeline(numbers, [clash], source_params={"count": 3})
    assert_well_formed(envs)
    assert envs[2]["status"] == "chunk_error"
    assert envs[2]["error"]["type"] == "UnencodableError"
    assert envs[2]["error"]["message"] == "keys 1 and '1' would both be '1' in JSON"


async def test_dead_letter_gets_chunk_errors_only() -> None:
    """The dead-letter sink receives every chunk_error envelope and nothing else."""
    dead: list[dict[str, Any]] = []
    every: list[str] = []

    def fails_odd(chunk: dict[str, int]) -> dict[str, int]:
        if chunk["n"] % 2:
            raise ValueError("odd")
        return chunk

    envs = await run_pipeline(
        numbers, [fails_odd], [lambda e: every.append(e["status"])], dead_letter=dead.append
    )
    assert [d["chunk"] for d in dead] == [{"n": 1}, {"n": 3}]
    assert every == statuses(envs)


async def test_data_only_and_lines_sinks() -> None:
    """A sink may ask for data only, or for the encoded NDJSON lines."""
    data: list[Any] = []
    lines: list[bytes] = []

    @sink(receives="data")
    def keep(d: Any) -> None:
        data.append(d)

    @sink(receives="lines")
    def raw(line: bytes) -> None:
        lines.append(line)

    envs = await run_pipeline(numbers, [], [keep, raw], source_params={"count": 2})
    assert data == [{"n": 0}, {"n": 1}]
    assert len(lines) == len(envs) and all(line.endswith(b"\n") for line in lines)


async def test_sink_failure_ends_run_with_error() -> None:
    """A sink that raises has failed for good: error(stage=sink), complete(error)."""
    other: list[str] = []

    def fragile(env: dict[str, Any]) -> None:
        if env["status"] == "processing" and env["data"]["n"] == 1:
            raise OSError("disk full")

    async def slow_numbers() -> AsyncIterator[dict[str, int]]:
        for i in range(1000):
            await asyncio.sleep(0.001)
            yield {"n": i}

    envs = await run_pipeline(slow_numbers, [], [fragile, lambda e: other.append(e["status"])])
    assert_well_formed(envs)
    err = [e for e in envs if e["status"] == "error"]
    assert err[0]["stage"] == "sinks[0]:fragile"
    assert err[0]["error"] == {"type": "OSError", "message": "disk full"}
    assert envs[-1]["reason"] == "error"
    assert other[-2:] == ["error", "complete"]
    assert len(envs) < 100


@pytest.mark.parametrize("stream", [False, True])
async def test_sink_failing_on_the_last_envelope_ends_run_with_error(stream: bool) -> None:
    """A sink that fails after the source ended still makes the run end with error."""

    async def three() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async def check(env: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)  # a sink slower than the run: it is still busy at the end
        if env["status"] == "processing" and env["data"] == 2:
            raise OSError("disk full at close")

    @sink(stream=True)
    async def streamed(envs: AsyncIterator[dict[str, Any]]) -> None:
        async for env in envs:
            await check(env)

    envs = await run_pipeline(three, [], [streamed if stream else check])
    assert_well_formed(envs)
    assert [e["status"] for e in envs] == [
        "starting",
        "processing",
        "processing",
        "processing",
        "error",
        "complete",
    ]
    assert envs[-2]["error"] == {"type": "OSError", "message": "disk full at close"}
    assert envs[-1]["reason"] == "error"


class Resources:
    """Counts open resources of test sources and sinks."""

    def __init__(self) -> None:
        self.open = 0
        self.opened = 0

    def source(self, fail_at: int | None = None, count: int = 10**6, delay: float = 0.0) -> Any:
        async def counted() -> AsyncIterator[dict[str, int]]:
            self.open += 1
            self.opened += 1
            try:
                for i in range(count):
                    if i == fail_at:
                        raise RuntimeError("source broke")
                    if delay:
                        await asyncio.sleep(delay)
                    yield {"n": i}
            finally:
                self.open -= 1

        return counted

    def sink(self, got: list[Any]) -> Any:
        @sink(stream=True)
        async def counted_sink(envs: AsyncIterator[dict[str, Any]]) -> None:
            self.open += 1
            self.opened += 1
            try:
                async for env in envs:
                    got.append(env["status"])
            finally:
                await asyncio.sleep(0)  # an awaiting cleanup, like a flush
                self.open -= 1

        return counted_sink


@pytest.mark.parametrize("case", ["finished", "source_error"])
async def test_cleanup_after_end_and_failure(case: str) -> None:
    """Sources and sinks are closed after a normal end and after a failure."""
    res = Resources()
    got: list[str] = []
    fail_at = 5 if case == "source_error" else None
    envs = await run_pipeline(res.source(fail_at, count=20), [], [res.sink(got)])
    assert res.opened == 2 and res.open == 0
    assert got == statuses(envs)
    assert envs[-1]["reason"] == ("error" if fail_at else "finished")


def _run(res: Resources, got: list[str], seen: list[dict[str, Any]]) -> Run:
    return Run(
        "p",
        make_stage(res.source(delay=0.001), "source"),
        [make_stage(lambda c: c, id="t")],
        [make_stage(res.sink(got), "sink", id="s")],
        publish=lambda env, line: seen.append(env),
    )


async def test_cancellation_cleans_up_and_completes() -> None:
    """Cancelling a run still emits complete(cancelled) and closes every resource."""
    res, got, seen = Resources(), [], []
    run = _run(res, got, seen)
    task = asyncio.create_task(run.execute())
    with anyio.fail_after(5):
        while run.processed < 5:
            await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert res.open == 0 and res.opened == 2
    assert seen[-1]["status"] == "complete" and seen[-1]["reason"] == "cancelled"
    assert got[-1] == "complete"
    assert_well_formed(seen)


@pytest.mark.parametrize("hard", [False, True])
async def test_stop_is_shutdown(hard: bool) -> None:
    """stop() (graceful) or abort() ends the run with complete(shutdown) and cleanup."""
    res, got, seen = Resources(), [], []
    run = _run(res, got, seen)
    task = asyncio.create_task(run.execute())
    with anyio.fail_after(5):
        while run.processed < 3:
            await asyncio.sleep(0.001)
    run.abort("shutdown") if hard else run.stop()
    with anyio.fail_after(5):
        reason = await task
    assert reason == "shutdown"
    assert res.open == 0
    assert seen[-1]["reason"] == "shutdown"
    assert_well_formed(seen)


async def test_backpressure_from_slow_sink_reaches_source() -> None:
    """A slow sink holds the source back: it never runs more than the buffers ahead."""
    produced = 0
    consumed = 0
    lead = 0

    async def fast() -> AsyncIterator[int]:
        nonlocal produced, lead
        for i in range(2000):
            produced += 1
            lead = max(lead, produced - consumed)
            yield i

    async def slow_sink(env: dict[str, Any]) -> None:
        nonlocal consumed
        consumed += 1
        await asyncio.sleep(0)

    envs = await run_pipeline(fast, [], [slow_sink])
    assert_well_formed(envs)
    assert lead <= 256 + 256 // 4  # the sink buffer, plus the reader's batch (a quarter of it)


async def test_never_awaiting_source_does_not_starve_loop() -> None:
    """A sync source that never awaits still lets other tasks run during the run."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    ticks_during: list[int] = []

    def hog() -> Any:
        for i in range(20_000):
            if i == 19_999:
                ticks_during.append(ticks)
            yield i

    t = asyncio.create_task(ticker())
    await run_pipeline(hog)
    stop.set()
    await t
    assert ticks_during[0] >= 20_000 // FAIRNESS_EVERY - 1


async def test_acks_after_sinks_accept() -> None:
    """Acks fire once per source message after every sink took its envelope(s)."""
    acked: list[int] = []
    delivered: list[int] = []

    async def broker() -> AsyncIterator[Message]:
        for i in range(6):
            yield Message({"n": i}, ack=lambda i=i: acked.append(i))

    async def split(chunk: dict[str, int]) -> AsyncIterator[dict[str, int]]:
        for _ in range(chunk["n"] % 3):
            yield chunk

    def fail_four(chunk: dict[str, int]) -> dict[str, int]:
        if chunk["n"] == 4:
            raise ValueError("four")
        return chunk

    def record(env: dict[str, Any]) -> None:
        if env["status"] == "processing":
            assert env["data"]["n"] not in acked
            delivered.append(env["data"]["n"])

    await run_pipeline(broker, [fail_four, split], [record], dead_letter=lambda e: None)
    assert sorted(acked) == [0, 1, 2, 3, 4, 5]
    assert delivered == [1, 2, 2, 5, 5]


async def test_async_acks_awaited_and_batched_acks() -> None:
    """Awaitable acks are awaited; a stream transform passes consumed acks on."""
    acked: list[int] = []

    async def ack(i: int) -> None:
        await asyncio.sleep(0)
        acked.append(i)

    async def broker() -> AsyncIterator[Message]:
        for i in range(5):
            yield Message(i, ack=lambda i=i: ack(i))

    @stream_transform
    async def pairs(chunks: AsyncIterator[int]) -> AsyncIterator[list[int]]:
        batch: list[int] = []
        async for c in chunks:
            batch.append(c)
            if len(batch) == 2:
                yield batch
                batch = []

    await run_pipeline(broker, [pairs])
    assert sorted(acked) == [0, 1, 2, 3, 4]


async def test_no_ack_when_sink_fails() -> None:
    """A message whose envelope a failed sink never accepted is not acknowledged."""
    acked: list[int] = []

    async def broker() -> AsyncIterator[Message]:
        for i in range(5):
            await asyncio.sleep(0.001)
            yield Message(i, ack=lambda i=i: acked.append(i))

    def breaks_at_two(env: dict[str, Any]) -> None:
        if env["status"] == "processing" and env["data"] == 2:
            raise OSError("gone")

    envs = await run_pipeline(broker, [], [breaks_at_two])
    assert envs[-1]["reason"] == "error"
    assert 2 not in acked and acked == [0, 1]


DEFAULT_UNIT = "celsius-default"


def scaled(chunk: dict[str, Any], *, factor: float = 2.0, unit: str = DEFAULT_UNIT) -> Any:
    return {**chunk, "v": chunk["v"] * factor, "unit": unit}


def test_bound_maps_leave_their_defaults_to_python() -> None:
    """Parameters that are the signature's own default objects, or equal immutable
    scalars (a config restating a default), are not bound (a plain call); others are."""
    from pipeline.engine.maps import fuse, steps_of
    from pipeline.meter import PipelineMeter

    given = "".join(["cel", "sius-default"])  # equal to the default, another object
    stages = [
        make_stage(scaled, params={"factor": 2.0, "unit": DEFAULT_UNIT}, id="a"),
        make_stage(scaled, params={"factor": 3.0, "unit": given}, id="b"),
    ]
    (fa, _, _), (fb, _, _) = steps_of(stages, PipelineMeter("p"))
    assert fa is scaled
    assert fb.keywords == {"factor": 3.0}  # type: ignore[attr-defined]
    apply = fuse(steps_of(stages, PipelineMeter("p")))
    assert apply({"v": 1}) == {"v": 6.0, "unit": given}
    equal_float = make_stage(scaled, params={"factor": 2, "unit": given}, id="c")
    ((fc, _, _),) = steps_of([equal_float], PipelineMeter("p"))
    assert fc.keywords == {"factor": 2}  # type: ignore[attr-defined]  # an int is no float


async def test_fused_maps_count_drops_and_errors_per_stage() -> None:
    """The straight-line maps: a drop and an error are counted on the stage that did it."""

    def half(chunk: int) -> int | None:
        return chunk if chunk % 2 else None

    def picky(chunk: int) -> int:
        if chunk == 3:
            raise ValueError("no 3")
        return chunk

    run = Run(
        "p",
        make_stage(lambda: iter(range(1, 7)), "source"),
        [make_stage(half, id="half"), make_stage(picky, id="picky")],
        publish=lambda env, line: None,
    )
    assert await run.execute() == "finished"
    assert (run.processed, run.chunk_errors) == (2, 1)
    half_m, picky_m = run.meter.stage("half"), run.meter.stage("picky")
    assert (half_m.dropped, half_m.errors) == (3, 0)
    assert (picky_m.dropped, picky_m.errors) == (0, 1)
