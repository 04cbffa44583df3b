"""Built-in transforms: parse_json, batch, throttle, dedupe."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

import anyio
import pytest

from pipeline.stage import meta_of
from pipeline.testing import run_stage
from stages.transforms import batch, dedupe, parse_json, throttle


class Upstream:
    """A source that records whether it was closed or cancelled."""

    def __init__(self, items: Iterable[Any], *, gap: float = 0.0) -> None:
        self.items = list(items)
        self.gap = gap
        self.closed = 0
        self.cancelled = False
        self.release = asyncio.Event()

    async def __call__(self) -> AsyncGenerator[Any, None]:
        try:
            for item in self.items:
                if item is WAIT:
                    await self.release.wait()
                    continue
                if self.gap:
                    await asyncio.sleep(self.gap)
                yield item
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed += 1


WAIT: Any = object()


async def collect(it: AsyncIterator[Any]) -> list[Any]:
    with anyio.fail_after(10):
        return [item async for item in it]


# -- parse_json ---------------------------------------------------------------------------------


def test_parse_json_text_and_bytes() -> None:
    """A str or bytes chunk is replaced by its parsed value."""
    assert parse_json('{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_json(b"3.5") == 3.5


def test_parse_json_field() -> None:
    """With `field`, only that field is parsed and the rest of the chunk is kept."""
    chunk = {"id": 1, "payload": '{"x": true}'}
    assert parse_json(chunk, field="payload") == {"id": 1, "payload": {"x": True}}
    assert chunk["payload"] == '{"x": true}'


def test_parse_json_bad_text_raises_value_error() -> None:
    """Bad JSON raises a ValueError with a short message (it becomes a chunk_error)."""
    with pytest.raises(ValueError, match=r"^invalid JSON: "):
        parse_json("{not json")


@pytest.mark.anyio
async def test_parse_json_in_a_run_bad_chunks_become_chunk_errors() -> None:
    """In a run, each chunk that does not parse is a chunk_error; every chunk is acked."""
    out = await run_stage(parse_json, ['{"a": 1}', "{not json", b"[2]", 5])
    out.assert_finished().assert_data([{"a": 1}, [2]])
    out.assert_chunk_errors(
        {"stage": "transforms[0]:parse_json", "type": "ValueError", "chunk": "{not json"},
        {"type": "TypeError", "message": re.escape("expected JSON text (str or bytes), got `int`")},
    )
    out.assert_acked("all")


def test_parse_json_missing_field_and_wrong_type() -> None:
    """A missing field and a non-text value are clear errors."""
    with pytest.raises(ValueError, match=r"^chunk has no field `payload`$"):
        parse_json({"id": 1}, field="payload")
    with pytest.raises(TypeError, match=re.escape("expected JSON text (str or bytes), got `int`")):
        parse_json(5)


def test_markers() -> None:
    """Whole-stream transforms carry the marker; parse_json is a plain per-chunk function."""
    assert meta_of(parse_json) is None
    for fn in (batch, throttle, dedupe):
        meta = meta_of(fn)
        assert meta is not None
        assert meta.stream


# -- batch --------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("max_wait", [None, 30.0])
async def test_batch_by_size_with_remainder(max_wait: float | None) -> None:
    """Full batches of `size`, then the remainder when the stream ends."""
    up = Upstream(range(10))
    got = await collect(batch(up(), size=3, max_wait=max_wait))
    assert got == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert up.closed == 1


@pytest.mark.anyio
async def test_batch_flushes_a_partial_batch_after_max_wait() -> None:
    """A partial batch goes out after max_wait while the upstream is still waiting."""
    up = Upstream([0, 1, WAIT, 2])
    gen = batch(up(), size=10, max_wait=0.02)
    with anyio.fail_after(10):
        assert await anext(gen) == [0, 1]
        up.release.set()
        assert await anext(gen) == [2]
        with pytest.raises(StopAsyncIteration):
            await anext(gen)
    assert up.closed == 1
    assert not up.cancelled


@pytest.mark.anyio
async def test_batch_timeouts_never_cancel_the_upstream() -> None:
    """An upstream slower than max_wait loses nothing and is never cancelled."""
    up = Upstream(range(5), gap=0.01)
    got = await collect(batch(up(), size=100, max_wait=0.001))
    assert [x for b in got for x in b] == list(range(5))
    assert all(b for b in got)
    assert not up.cancelled
    assert up.closed == 1


@pytest.mark.anyio
@pytest.mark.parametrize("max_wait", [None, 30.0])
async def test_batch_closes_the_upstream_when_the_consumer_stops(max_wait: float | None) -> None:
    """Closing the batch early closes the upstream too (its finally runs)."""
    up = Upstream(range(1000))
    gen = batch(up(), size=2, max_wait=max_wait)
    with anyio.fail_after(10):
        assert await anext(gen) == [0, 1]
        await gen.aclose()
    assert up.closed == 1


@pytest.mark.anyio
@pytest.mark.parametrize("max_wait", [None, 30.0])
async def test_batch_passes_an_upstream_error_on_after_the_chunks_read(
    max_wait: float | None,
) -> None:
    """Chunks read before an upstream error still come out, then the error is raised."""

    async def failing() -> AsyncGenerator[int, None]:
        yield 1
        yield 2
        raise RuntimeError("source broke")

    got: list[Any] = []
    with pytest.raises(RuntimeError, match="source broke"):
        async for items in batch(failing(), size=10, max_wait=max_wait):
            got.append(items)
    assert got == [[1, 2]]


@pytest.mark.anyio
async def test_batch_rejects_bad_parameters() -> None:
    """size < 1 and max_wait <= 0 are clear errors."""
    with pytest.raises(ValueError, match="`size` must be 1 or more, got 0"):
        await collect(batch(Upstream([])(), size=0))
    with pytest.raises(ValueError, match="`max_wait` must be more than 0 or null, got 0"):
        await collect(batch(Upstream([])(), max_wait=0))


# -- throttle -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_throttle_keeps_order_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk passes, in order; beyond the burst the chunks are delayed, not dropped."""
    requested: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        requested.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    up = Upstream(range(20))
    got = await collect(throttle(up(), rate=2000, burst=5))
    monkeypatch.undo()
    assert got == list(range(20))
    assert up.closed == 1
    # 15 chunks beyond the burst at 2000/s: about 7.5 ms of waiting asked for in all.
    assert sum(requested) >= 14 / 2000


@pytest.mark.anyio
async def test_throttle_rejects_bad_parameters() -> None:
    """rate <= 0 and burst < 1 are clear errors."""
    with pytest.raises(ValueError, match="`rate` must be more than 0, got 0"):
        await collect(throttle(Upstream([1])(), rate=0))
    with pytest.raises(ValueError, match="`burst` must be 1 or more, got 0"):
        await collect(throttle(Upstream([1])(), rate=1, burst=0))


# -- dedupe -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_dedupe_by_key() -> None:
    """A repeated key is dropped; chunks without the key always pass."""
    chunks = [{"id": 1, "v": "a"}, {"id": 2}, {"id": 1, "v": "b"}, {"x": 0}, {"x": 0}, {"id": 2}]
    up = Upstream(chunks)
    got = await collect(dedupe(up(), key="id"))
    assert got == [{"id": 1, "v": "a"}, {"id": 2}, {"x": 0}, {"x": 0}]
    assert up.closed == 1


@pytest.mark.anyio
async def test_dedupe_whole_chunks() -> None:
    """Without key the whole chunk is compared: key order does not matter, types do."""
    chunks = [{"a": 1, "b": 2}, {"b": 2, "a": 1}, 1, 1.0, True, "1", 1, [1], [1], {"s": {1, 2}}]
    got = await collect(dedupe(Upstream(chunks)()))
    assert got == [{"a": 1, "b": 2}, 1, 1.0, True, "1", [1], {"s": {1, 2}}]


@pytest.mark.anyio
async def test_dedupe_unhashable_key_values() -> None:
    """Key values that are lists or dicts are compared by content; a dropped chunk is acked."""
    chunks = [{"k": [1, 2]}, {"k": [1, 2]}, {"k": {"a": 1}}, {"k": {"a": 1}}]
    out = await run_stage(dedupe, chunks, key="k")
    out.assert_finished().assert_data([{"k": [1, 2]}, {"k": {"a": 1}}]).assert_acked("all")


@pytest.mark.anyio
async def test_dedupe_window_expires() -> None:
    """A key passes again once its window has passed."""
    up = Upstream([{"id": 1}, WAIT, {"id": 1}])

    async def source() -> AsyncGenerator[Any, None]:
        async for chunk in up():
            yield chunk

    gen = dedupe(source(), key="id", window=0.02)
    with anyio.fail_after(10):
        assert await anext(gen) == {"id": 1}
        await asyncio.sleep(0.05)  # longer than the window
        up.release.set()
        assert await anext(gen) == {"id": 1}
        with pytest.raises(StopAsyncIteration):
            await anext(gen)


@pytest.mark.anyio
async def test_dedupe_long_window_drops_repeats() -> None:
    """Within a long window every repeat is dropped."""
    out = await run_stage(dedupe, [{"id": i % 3} for i in range(30)], key="id", window=3600)
    out.assert_finished().assert_data([{"id": 0}, {"id": 1}, {"id": 2}])


@pytest.mark.anyio
async def test_dedupe_memory_is_bounded_by_max_keys() -> None:
    """Beyond max_keys the oldest key is forgotten, so it may pass again."""
    chunks = [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 1}, {"id": 3}]
    out = await run_stage(dedupe, chunks, key="id", window=None, max_keys=2)
    out.assert_finished().assert_data([{"id": 1}, {"id": 2}, {"id": 3}, {"id": 1}])


@pytest.mark.anyio
async def test_dedupe_rejects_bad_parameters() -> None:
    """max_keys < 1 and window <= 0 are clear errors that end the run."""
    out = await run_stage(dedupe, [1], max_keys=0)
    out.assert_reason("error").assert_data([])
    out.assert_error(type="ValueError", message=r"^`max_keys` must be 1 or more, got 0$")
    out = await run_stage(dedupe, [1], window=-1)
    out.assert_error(type="ValueError", message=r"^`window` must be more than 0 or null, got -1$")
