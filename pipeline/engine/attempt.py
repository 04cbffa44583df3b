"""One attempt of a stage on one chunk: how it is called, and under which deadline.

`bind` gives a stage's function with its ``with:`` parameters bound. `one_call` makes
one attempt of a per-chunk map: on the event loop, awaited, or in a worker thread
(``blocking: true``), under the stage's ``timeout``. `flat_source` starts a flat-map on
one chunk: its outputs as an async iterator (a blocking sync one in a worker thread).
Both raise on failure; the retry policy, the flat-map's deadline and turning exceptions
into values are `pipeline.engine.isolate`'s.

Timeouts: an async stage is cancelled when it overruns. A ``blocking`` stage's worker
thread cannot be stopped; its result is discarded when it arrives after the deadline. A
sync stage on the event loop cannot be interrupted either: when it returns after its
deadline the attempt still fails with `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pipeline.stage import ResolvedStage

__all__ = ["bind", "flat_source", "one_call"]


_SCALARS = (str, int, float, bool, bytes, type(None))
"""Immutable types whose equal values are as good as the default object itself."""


def _is_default(default: Any, value: Any) -> bool:
    """Whether ``value`` is the parameter's default: that object, or an equal immutable
    scalar (``unit: celsius`` in a config, where the signature says ``unit="celsius"``)."""
    if default is value:
        return True
    kind = type(value)
    return kind is type(default) and kind in _SCALARS and bool(default == value)


def bind(stage: ResolvedStage) -> Callable[..., Any]:
    """``stage.fn`` with its parameters bound; those that are its signature's defaults
    (`_is_default`) are left to Python, so a stage called with its defaults is a plain
    call (a `functools.partial` with keywords costs a dictionary per call)."""
    params = stage.params
    if params:
        try:
            defaults = {
                name: p.default
                for name, p in inspect.signature(stage.fn).parameters.items()
                if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
            }
        except (TypeError, ValueError):  # no signature to read: bind them all
            defaults = {}
        params = {
            k: v for k, v in params.items() if k not in defaults or not _is_default(defaults[k], v)
        }
    return functools.partial(stage.fn, **params) if params else stage.fn


def one_call(stage: ResolvedStage) -> Callable[[Any], Awaitable[Any]]:
    """One attempt on one chunk, under the stage's timeout; raises on failure."""
    fn = bind(stage)
    timeout = stage.timeout
    if stage.blocking:

        async def call(chunk: Any) -> Any:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(fn, chunk)

    elif stage.calling == "async":

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


def flat_source(stage: ResolvedStage, chunk: Any) -> AsyncIterator[Any]:
    """One attempt of a flat-map on one chunk: its outputs, as they come (no timeout)."""
    fn = bind(stage)
    if stage.calling == "asyncgen":
        return fn(chunk)  # type: ignore[no-any-return]

    async def from_sync() -> AsyncIterator[Any]:
        if stage.blocking:
            for item in await asyncio.to_thread(lambda: list(fn(chunk))):
                yield item
        else:
            for item in fn(chunk):
                yield item

    return from_sync()
