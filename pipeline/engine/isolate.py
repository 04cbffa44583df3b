"""Per-chunk isolation: run one transform on one chunk, turning exceptions into values.

This module wraps a stage that needs more than a plain call: it applies the stage's
``timeout`` and ``retry`` policy around each attempt (`pipeline.engine.attempt`) and
returns a `Failure` value instead of raising, so one bad chunk becomes a ``chunk_error``
and the stream goes on. Plain maps (no timeout, retry, thread or concurrency) are run
inline by `pipeline.engine.maps`, the other place a stage's exceptions are caught per
chunk. Both catch `Exception`, never `BaseException`: cancellation and interpreter exit
pass through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pipeline.engine.attempt import bind, flat_source, one_call
from pipeline.engine.items import failure
from pipeline.meter import StageMeter
from pipeline.stage import ResolvedStage, RetryPolicy
from pipeline.types import Chunk

__all__ = ["call_sync", "flat_caller", "map_caller"]


def _delay(policy: RetryPolicy, attempt: int) -> float:
    return float(min(policy.backoff * (2**attempt), policy.max_backoff))


def call_sync(fn: Callable[[Chunk], Any], sid: str, chunk: Chunk) -> Any:
    """Call a sync per-chunk stage once: its result, or the `Failure` of its exception."""
    try:
        return fn(chunk)
    except Exception as exc:
        return failure(sid, exc, chunk)


def map_caller(
    stage: ResolvedStage, meter: StageMeter | None = None
) -> Callable[[Any], Awaitable[Any]]:
    """Return ``call(chunk) -> new chunk | None | Failure`` for a per-chunk map stage.

    Each retry attempt is counted on ``meter`` (``retried``).
    """
    policy, sid = stage.retry, stage.id
    m = meter or StageMeter(sid)
    if (
        policy.attempts <= 1
        and stage.timeout is None
        and not stage.blocking
        and stage.calling == "async"
    ):
        fn = bind(stage)

        async def plain(chunk: Any) -> Any:  # the common async stage: no timer, no loop
            try:
                return await fn(chunk)
            except Exception as exc:
                return failure(sid, exc, chunk)

        return plain
    attempt_once, timeout = one_call(stage), stage.timeout

    async def call(chunk: Any) -> Any:
        for attempt in range(policy.attempts):
            try:
                return await attempt_once(chunk)
            except Exception as exc:
                if attempt + 1 >= policy.attempts:
                    return failure(sid, exc, chunk, timeout=timeout, attempts=attempt + 1)
            m.retried += 1
            await asyncio.sleep(_delay(policy, attempt))
        raise AssertionError  # pragma: no cover - attempts >= 1

    return call


def flat_caller(
    stage: ResolvedStage, meter: StageMeter | None = None
) -> Callable[[Any], AsyncIterator[Any]]:
    """Return ``call(chunk)``: an async iterator of output chunks, then maybe a `Failure`.

    Outputs stream as the stage yields them. A failure after some outputs keeps those
    outputs and ends with the `Failure`; a retry happens only while nothing was yielded,
    so no output is ever duplicated. ``timeout`` bounds the whole chunk. Each retry
    attempt is counted on ``meter`` (``retried``).
    """
    policy, sid, timeout = stage.retry, stage.id, stage.timeout
    m = meter or StageMeter(sid)

    async def call(chunk: Any) -> AsyncIterator[Any]:
        for attempt in range(policy.attempts):
            emitted = 0
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            gen = flat_source(stage, chunk)
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
                    yield failure(sid, exc, chunk, timeout=timeout, attempts=attempt + 1)
                    return
            finally:
                await gen.aclose()  # type: ignore[attr-defined]
            m.retried += 1
            await asyncio.sleep(_delay(policy, attempt))

    return call
