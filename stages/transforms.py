"""Built-in transforms: `parse_json` per chunk; `batch`, `throttle`, `dedupe` on the stream.

Stream transforms own the upstream iterator they are given: they close it (``aclose``)
when they end for any reason, so the source's cleanup runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Hashable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import PositiveFloat, PositiveInt

from pipeline import Chunk, stream_transform

__all__ = ["batch", "dedupe", "parse_json", "throttle"]


def parse_json(chunk: Chunk, *, field: str | None = None) -> Chunk:
    """Parse JSON text: the whole chunk, or the text in one of its fields.

    A chunk that is not valid JSON becomes a ``chunk_error`` and the run goes on.

    Args:
        chunk: The chunk (given by the engine).
        field: Parse ``chunk[field]`` and put the parsed value back in its place; by
            default the whole chunk (a string or bytes) is parsed and replaced.

    Example:
        transforms:
          - use: parse_json
            with: {field: payload}
    """
    if field is not None and not (isinstance(chunk, dict) and field in chunk):
        msg = f"chunk has no field `{field}`"
        raise ValueError(msg)
    raw = chunk if field is None else chunk[field]
    if not isinstance(raw, str | bytes | bytearray | memoryview):
        msg = f"expected JSON text (str or bytes), got `{type(raw).__name__}`"
        raise TypeError(msg)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = f"invalid JSON: {exc}"
        raise ValueError(msg) from None
    return value if field is None else {**chunk, field: value}


@stream_transform
async def batch(
    chunks: AsyncIterator[Chunk], *, size: PositiveInt = 100, max_wait: PositiveFloat | None = 1.0
) -> AsyncGenerator[list[Chunk], None]:
    """Group chunks into lists of up to ``size``, each list becoming one chunk.

    A partial batch goes out once ``max_wait`` seconds have passed since its first chunk,
    so a quiet stream still delivers; what is left goes out when the stream ends.

    Args:
        chunks: The upstream chunks (given by the engine).
        size: The most chunks in one batch.
        max_wait: Seconds a partial batch may wait for more chunks; ``null`` waits until
            the batch is full or the stream ends.

    Example:
        transforms:
          - use: batch
            with: {size: 500, max_wait: 2.0}
    """
    if size < 1:
        msg = f"`size` must be 1 or more, got {size}"
        raise ValueError(msg)
    if max_wait is not None and max_wait <= 0:
        msg = f"`max_wait` must be more than 0 or null, got {max_wait}"
        raise ValueError(msg)
    gen = _batch_by_size(chunks, size) if max_wait is None else _batch_timed(chunks, size, max_wait)
    async with contextlib.aclosing(gen):
        async for items in gen:
            yield items


async def _batch_by_size(
    chunks: AsyncIterator[Chunk], size: int
) -> AsyncGenerator[list[Chunk], None]:
    items: list[Chunk] = []
    error: Exception | None = None
    try:
        async for chunk in chunks:
            items.append(chunk)
            if len(items) >= size:
                yield items
                items = []
    except Exception as exc:  # raised again below, after the chunks already read
        error = exc
    finally:
        await _aclose(chunks)
    if items:
        yield items
    if error is not None:
        raise error


@dataclass(slots=True)
class _End:
    """Put in the queue by the pump when the upstream is done (or failed)."""

    error: Exception | None = None


async def _batch_timed(
    chunks: AsyncIterator[Chunk], size: int, max_wait: float
) -> AsyncGenerator[list[Chunk], None]:
    # A pump task reads the upstream, so waiting with a timeout only ever cancels a
    # queue get, never the upstream's __anext__ (which would kill an async generator).
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=min(size, 1024))
    pump = asyncio.create_task(_pump(chunks, queue))
    items: list[Chunk] = []
    deadline = 0.0
    try:
        while True:
            if queue.empty() and items:
                try:
                    got = await asyncio.wait_for(queue.get(), deadline - loop.time())
                except TimeoutError:
                    yield items
                    items = []
                    continue
            else:
                got = await queue.get()
            if isinstance(got, _End):
                break
            if not items:
                deadline = loop.time() + max_wait
            items.append(got)
            if len(items) >= size:
                yield items
                items = []
    finally:
        pump.cancel()
        await asyncio.wait([pump])
        await _aclose(chunks)
    if items:
        yield items
    if got.error is not None:
        raise got.error


async def _pump(chunks: AsyncIterator[Chunk], queue: asyncio.Queue[Any]) -> None:
    try:
        async for chunk in chunks:
            await queue.put(chunk)
    except Exception as exc:  # handed over: the consumer raises it after its last batch
        await queue.put(_End(exc))
    else:
        await queue.put(_End())


@stream_transform
async def throttle(
    chunks: AsyncIterator[Chunk], *, rate: PositiveFloat, burst: PositiveInt = 1
) -> AsyncGenerator[Chunk, None]:
    """Pass at most ``rate`` chunks per second on average, delaying (never dropping) them.

    A token bucket: up to ``burst`` chunks may pass back to back after a quiet spell.
    Order is kept; a slow downstream is not made any slower.

    Args:
        chunks: The upstream chunks (given by the engine).
        rate: Chunks per second on average.
        burst: Chunks that may pass at once after a pause.

    Example:
        transforms:
          - use: throttle
            with: {rate: 50, burst: 10}
    """
    if rate <= 0:
        msg = f"`rate` must be more than 0, got {rate}"
        raise ValueError(msg)
    if burst < 1:
        msg = f"`burst` must be 1 or more, got {burst}"
        raise ValueError(msg)
    loop = asyncio.get_running_loop()
    tokens = float(burst)
    last = loop.time()
    try:
        async for chunk in chunks:
            now = loop.time()
            tokens = min(float(burst), tokens + (now - last) * rate)
            last = now
            if tokens < 1:
                await asyncio.sleep((1 - tokens) / rate)
                last = loop.time()
                tokens = 1.0
            tokens -= 1
            yield chunk
    finally:
        await _aclose(chunks)


@stream_transform
async def dedupe(
    chunks: AsyncIterator[Chunk],
    *,
    key: str | None = None,
    window: PositiveFloat | None = 60.0,
    max_keys: PositiveInt = 100_000,
) -> AsyncGenerator[Chunk, None]:
    """Drop a chunk whose key has already passed within the last ``window`` seconds.

    The window starts when a key passes, so a key that keeps coming passes once per
    window. Memory stays bounded: beyond ``max_keys`` the oldest keys are forgotten.
    A chunk without the ``key`` field always passes.

    Args:
        chunks: The upstream chunks (given by the engine).
        key: The field to compare; by default the whole chunk is compared (as JSON with
            sorted keys).
        window: Seconds a key is remembered; ``null`` remembers it until it is evicted.
        max_keys: The most keys remembered at once.

    Example:
        transforms:
          - use: dedupe
            with: {key: id, window: 300}
    """
    if max_keys < 1:
        msg = f"`max_keys` must be 1 or more, got {max_keys}"
        raise ValueError(msg)
    if window is not None and window <= 0:
        msg = f"`window` must be more than 0 or null, got {window}"
        raise ValueError(msg)
    clock = asyncio.get_running_loop().time
    seen: OrderedDict[Hashable, float] = OrderedDict()
    try:
        async for chunk in chunks:
            k = _key_of(chunk, key)
            if k is _MISSING:
                yield chunk
                continue
            now = clock()
            if window is not None:
                while seen and next(iter(seen.values())) <= now - window:
                    seen.popitem(last=False)
            if k in seen:
                continue
            seen[k] = now
            if len(seen) > max_keys:
                seen.popitem(last=False)
            yield chunk
    finally:
        await _aclose(chunks)


_MISSING = object()
_KEY_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def _key_of(chunk: Chunk, key: str | None) -> Hashable:
    if key is None:
        value = chunk
    elif isinstance(chunk, dict) and key in chunk:
        value = chunk[key]
    else:
        return _MISSING
    if isinstance(value, str | int | float | bool | bytes | None):
        return (type(value).__name__, value)  # 1, 1.0 and True stay distinct keys
    return orjson.dumps(value, default=_key_default, option=_KEY_OPTIONS)


def _key_default(obj: Any) -> Any:
    if isinstance(obj, set | frozenset):
        return sorted(map(repr, obj))
    return repr(obj)


async def _aclose(it: AsyncIterator[Any]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()
