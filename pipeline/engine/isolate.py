"""Per-chunk isolation: run one transform on one chunk, turning exceptions into values.

This module is the only place that catches a stage's exceptions per chunk. It applies
the stage's ``timeout`` and ``retry`` policy and returns a `Failure` value instead of
raising, so one bad chunk becomes a ``chunk_error`` and the stream goes on. It catches
`Exception`, never `BaseException`: cancellation and interpreter exit pass through.

Timeouts: an async stage is cancelled when it overruns. A ``blocking`` stage's worker
thread cannot be stopped; its result is discarded when it arrives after the deadline. A
sync stage on the event loop cannot be interrupted either: when it returns after its
deadline the chunk still fails with `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pipeline.stage import ResolvedStage, RetryPolicy

__all__ = ["Failure", "failure", "flat_caller", "map_caller"]


@dataclass(frozen=True, slots=True)
class Failure:
    """One chunk failed in one stage: becomes a ``chunk_error`` envelope."""

    stage: str
    type: str
    message: str
    chunk: Any
    exc: BaseException | None = None


def failure(stage: str, exc: BaseException, chunk: Any) -> Failure:
    """Build the failure value of ``exc`` raised by ``stage`` on ``chunk``."""
    if isinstance(exc, TimeoutError):
        return Failure(stage, "TimeoutError", "stage timed out", chunk, exc)
    return Failure(stage, type(exc).__name__, str(exc), chunk, exc)


def _bind(stage: ResolvedStage) -> Callable[..., Any]:
    return functools.partial(stage.fn, **stage.params) if stage.params else stage.fn


def _delay(policy: RetryPolicy, attempt: int) -> float:
    return float(min(policy.backoff * (2**attempt), policy.max_backoff))


def _one_call(stage: ResolvedStage) -> Callable[[Any], Awaitable[Any]]:
    """One attempt on one chunk, under the stage's timeout; raises on failure."""
    fn = _bind(stage)
    timeout = stage.timeout
    if stage.blocking:

        async def call(chunk: Any) -> Any:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(fn, chunk)

    elif inspect.iscoroutinefunction(stage.fn):

        async def call(chunk: Any) -> Any:
            async with asyncio.timeout(timeout):
                return await fn(chunk)

    else:

        async def call(chunk: Any) -> Any:
            started = time.monotonic()
            result = fn(chunk)
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError
            return result

    return call


def map_caller(stage: ResolvedStage) -> Callable[[Any], Awaitable[Any]]:
    """Return ``call(chunk) -> new chunk | None | Failure`` for a per-chunk map stage."""
    policy, sid = stage.retry, stage.id
    if (
        policy.attempts <= 1
        and stage.timeout is None
        and not stage.blocking
        and inspect.iscoroutinefunction(stage.fn)
    ):
        fn = _bind(stage)

        async def plain(chunk: Any) -> Any:  # the common async stage: no timer, no loop
            try:
                return await fn(chunk)
            except Exception as exc:
                return failure(sid, exc, chunk)

        return plain
    attempt_once = _one_call(stage)

    async def call(chunk: Any) -> Any:
        for attempt in range(policy.attempts):
            try:
                return await attempt_once(chunk)
            except Exception as exc:
                if attempt + 1 >= policy.attempts:
                    return failure(sid, exc, chunk)
            await asyncio.sleep(_delay(policy, attempt))
        raise AssertionError  # pragma: no cover - attempts >= 1

    return call


def _flat_source(stage: ResolvedStage, chunk: Any) -> AsyncIterator[Any]:
    fn = _bind(stage)
    if inspect.isasyncgenfunction(stage.fn):
        return fn(chunk)  # type: ignore[no-any-return]

    async def from_sync() -> AsyncIterator[Any]:
        if stage.blocking:
            for item in await asyncio.to_thread(lambda: list(fn(chunk))):
                yield item
        else:
            for item in fn(chunk):
                yield item

    return from_sync()


def flat_caller(stage: ResolvedStage) -> Callable[[Any], AsyncIterator[Any]]:
    """Return ``call(chunk)``: an async iterator of output chunks, then maybe a `Failure`.

    Outputs stream as the stage yields them. A failure after some outputs keeps those
    outputs and ends with the `Failure`; a retry happens only while nothing was yielded,
    so no output is ever duplicated. ``timeout`` bounds the whole chunk.
    """
    policy, sid, timeout = stage.retry, stage.id, stage.timeout

    async def call(chunk: Any) -> AsyncIterator[Any]:
        for attempt in range(policy.attempts):
            emitted = 0
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            gen = _flat_source(stage, chunk)
            try:
                while True:
                    async with asyncio.timeout_at(deadline):
                        try:
                            item = await anext(gen)
                        except StopAsyncIteration:
                            return
                    emitted += 1
                    yield item
            except Exception as exc:
                if emitted or attempt + 1 >= policy.attempts:
                    yield failure(sid, exc, chunk)
                    return
            finally:
                await gen.aclose()  # type: ignore[attr-defined]
            await asyncio.sleep(_delay(policy, attempt))

    return call
