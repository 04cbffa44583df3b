"""Per-chunk transforms that hold a resource for the length of a run (`pipeline.resource`).

When a run starts, `opened` enters each such stage's context (its set-up runs once) and
hands the run the stage it yielded, with the YAML's options (``concurrency``,
``timeout``, ``retry``, ``blocking``). When the run's chain has closed, however the run
ended (finished, error, cancelled, shutdown, reload), each context is exited (its
tear-down runs once), in reverse order. A set-up or tear-down that raises is a
`StageCrash` of that stage: the run ends with ``error``.

Resource sources and sinks need nothing here: the loader adapts them into an async
generator and a stream sink, whose own lifetimes already span the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from pipeline.engine.chain import StageCrash
from pipeline.stage import ResolvedStage, calling_of, is_resource, open_resource
from pipeline.types import StageKind

__all__ = ["bound", "opened"]


@asynccontextmanager
async def opened(stages: Sequence[ResolvedStage]) -> AsyncIterator[tuple[ResolvedStage, ...]]:
    """Enter every resource stage of ``stages``; yield the stages for this run.

    Raises:
        StageCrash: a set-up or a tear-down raised, or a resource yielded no stage.
    """
    if not any(is_resource(stage.fn) for stage in stages):
        yield tuple(stages)
        return
    async with AsyncExitStack() as stack:
        out = []
        for stage in stages:
            if is_resource(stage.fn):
                stage = bound(stage, await stack.enter_async_context(_entered(stage)))
            out.append(stage)
        yield tuple(out)


@asynccontextmanager
async def _entered(stage: ResolvedStage) -> AsyncIterator[Any]:
    """The stage's own context; whatever it raises becomes a `StageCrash` of the stage."""
    try:
        cm = open_resource(stage.fn, stage.params)
        value = await cm.__aenter__()
    except Exception as exc:
        raise StageCrash(stage.id, exc) from exc
    try:
        yield value
    except BaseException as ending:
        try:  # a stage cannot swallow the run's ending: it is raised again below
            await cm.__aexit__(type(ending), ending, ending.__traceback__)
        except Exception as failed:
            if failed is not ending:
                raise StageCrash(stage.id, failed) from failed
        raise
    try:
        await cm.__aexit__(None, None, None)
    except Exception as failed:
        raise StageCrash(stage.id, failed) from failed


def bound(stage: ResolvedStage, value: Any) -> ResolvedStage:
    """The stage for one run: ``value`` (what the resource yielded) with the options.

    Raises:
        StageCrash: ``value`` is not a function of one chunk, or is async on a
            ``blocking: true`` stage.
    """
    if not callable(value):
        msg = (
            f"stage `{stage.id}` is a resource that yielded {type(value).__name__}, "
            "not a function of one chunk"
        )
        raise StageCrash(stage.id, TypeError(msg))
    calling = calling_of(value)
    if stage.blocking and calling in ("async", "asyncgen"):
        msg = f"stage `{stage.id}` is `blocking: true` but its resource yielded an async function"
        raise StageCrash(stage.id, TypeError(msg))
    kind: StageKind = "flat_map" if calling in ("gen", "asyncgen") else "map"
    return dataclasses.replace(stage, fn=value, params={}, kind=kind)
