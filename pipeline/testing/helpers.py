"""In-process helpers for stage authors and tests: run stages and pipelines to lists.

Example:
    >>> import asyncio
    >>> async def numbers(count: int = 3):
    ...     for i in range(count):
    ...         yield i
    >>> envs = asyncio.run(run_pipeline(numbers, [lambda n: n * 10]))
    >>> [e["data"] for e in envs if e["status"] == "processing"]
    [0, 10, 20]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.engine.run import Run
from pipeline.errors import StageLoadError
from pipeline.stage import (
    ResolvedStage,
    RetryPolicy,
    calling_of,
    is_resource,
    meta_of,
    resource_sink,
    resource_source,
)
from pipeline.testing.harness import ListSource, RunResult, run_stages
from pipeline.types import Chunk, Envelope, StageKind

__all__ = ["collect_source", "make_stage", "run_pipeline", "run_stage", "run_transform"]


def _kind(fn: Callable[..., Any], role: str) -> StageKind:
    meta = meta_of(fn)
    if role == "source":
        return "source"
    if role == "sink":
        return "sink"
    if meta is not None and meta.stream:
        return "stream"
    if is_resource(fn):
        return "map"  # the run learns map or flat_map from what it yields
    if calling_of(fn) in ("gen", "asyncgen"):
        return "flat_map"
    return "map"


def make_stage(
    fn: Callable[..., Any] | ResolvedStage,
    role: str = "transform",
    *,
    id: str | None = None,
    params: Mapping[str, Any] | None = None,
    concurrency: int = 1,
    ordered: bool = True,
    timeout: float | None = None,
    retry: tuple[int, float] | None = None,
    blocking: bool = False,
) -> ResolvedStage:
    """Build a `ResolvedStage` from a plain function, as the loader would from YAML.

    Raises:
        StageLoadError: ``fn`` is not callable.
    """
    if isinstance(fn, ResolvedStage):
        return fn
    if not callable(fn):
        msg = f"a {role} must be callable, got `{type(fn).__qualname__}`"
        raise StageLoadError(msg)
    name = getattr(fn, "__name__", "stage")
    if is_resource(fn) and role in ("source", "sink"):  # adapted as the loader does
        meta = meta_of(fn)
        receives = meta.receives if meta is not None else "envelopes"
        fn = resource_source(fn) if role == "source" else resource_sink(fn, receives)
    return ResolvedStage(
        id=id or f"{role}:{name}",
        kind=_kind(fn, role),
        fn=fn,
        params=dict(params or {}),
        concurrency=concurrency,
        ordered=ordered,
        timeout=timeout,
        retry=RetryPolicy(*retry) if retry else RetryPolicy(),
        blocking=blocking,
        meta=meta_of(fn),
    )


async def run_pipeline(
    source: Callable[..., Any] | ResolvedStage,
    transforms: Sequence[Callable[..., Any] | ResolvedStage] = (),
    sinks: Sequence[Callable[..., Any] | ResolvedStage] = (),
    *,
    name: str = "test",
    dead_letter: Callable[..., Any] | ResolvedStage | None = None,
    max_chunk_errors: int | None = None,
    source_params: Mapping[str, Any] | None = None,
) -> list[Envelope]:
    """Run a pipeline in-process and return every envelope it emitted, in order."""
    envelopes: list[Envelope] = []
    run = Run(
        name,
        make_stage(source, "source"),
        [
            make_stage(t, "transform", id=f"transforms[{i}]:{_name(t)}")
            for i, t in enumerate(transforms)
        ],
        [make_stage(s, "sink", id=f"sinks[{i}]:{_name(s)}") for i, s in enumerate(sinks)],
        make_stage(dead_letter, "sink", id="dead_letter") if dead_letter is not None else None,
        max_chunk_errors=max_chunk_errors,
        publish=lambda env, line: envelopes.append(env),
        source_params=source_params,
    )
    await run.execute()
    return envelopes


def _name(fn: Any) -> str:
    return fn.id if isinstance(fn, ResolvedStage) else getattr(fn, "__name__", "stage")


async def collect_source(fn: Callable[..., Any], **params: Any) -> list[Chunk]:
    """Run a source alone and return its chunks."""
    envs = await run_pipeline(fn, source_params=params)
    return [e["data"] for e in envs if e["status"] == "processing"]


async def run_transform(
    fn: Callable[..., Any], chunks: Sequence[Chunk], **params: Any
) -> list[Envelope]:
    """Run one transform over ``chunks``; return its ``processing``/``chunk_error`` envelopes."""

    async def source() -> Any:
        for chunk in chunks:
            yield chunk

    envs = await run_pipeline(source, [make_stage(fn, params=params)])
    return [e for e in envs if e["status"] in ("processing", "chunk_error")]


async def run_stage(
    fn: Callable[..., Any],
    chunks: Sequence[Chunk] | None = None,
    /,
    *,
    timeout: float = 30.0,
    **params: Any,
) -> RunResult:
    """Run one stage through the real engine and return everything that came out.

    Without ``chunks``, ``fn`` is the source. With ``chunks`` (yielded by `source_from`,
    each acknowledged like a broker message), ``fn`` is the only transform, or the only
    sink when it is marked `@sink`. ``params`` are its ``with:``.

    Example:
        >>> import asyncio
        >>> out = asyncio.run(run_stage(lambda n: n * 2, [1, 2]))
        >>> out.data, out.acked
        ([2, 4], [0, 1])
    """
    name = getattr(fn, "__name__", "stage")
    if chunks is None:
        source = make_stage(fn, "source", id=f"source:{name}", params=params)
        return await run_stages("test", source, timeout=timeout)
    source = make_stage(ListSource(chunks), "source", id="source:source_from")
    meta = meta_of(fn)
    if meta is not None and meta.role == "sink":
        sink = make_stage(fn, "sink", id=f"sinks[0]:{name}", params=params)
        return await run_stages("test", source, [], [sink], timeout=timeout)
    stage = make_stage(fn, id=f"transforms[0]:{name}", params=params)
    return await run_stages("test", source, [stage], timeout=timeout)
