"""Plain maps, run inline: sync or ``async def`` maps with no timeout, retry, thread or
concurrency, called one after the other on each item, their exceptions as `Failure` values.

`is_direct` and `is_fast` say which stages qualify; `steps_of` binds them (`Step`);
`fuse` and `fuse_async` write a chain of them out as one straight-line function (the
source reader's hot path); `apply_steps`, `apply_steps_async` and `special_map` handle
a `Carry` (its acks kept, released on a drop) or a `Failure` (passed through);
`apply_timed` and `apply_timed_async` record each call's time for the sampled chunks.
Stages that need a timeout, retries or a thread go through `pipeline.engine.isolate`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from types import CodeType
from typing import Any

from pipeline.engine.acks import release_all
from pipeline.engine.attempt import bind
from pipeline.engine.items import SPECIAL, Carry, Failure, failure
from pipeline.meter import PipelineMeter, StageMeter
from pipeline.stage import ResolvedStage

__all__ = [
    "Step",
    "apply_steps",
    "apply_steps_async",
    "apply_timed",
    "apply_timed_async",
    "failed",
    "fuse",
    "fuse_async",
    "fuse_timed_async",
    "is_direct",
    "is_fast",
    "special_map",
    "steps_of",
]


Step = tuple[Callable[[Any], Any], str, StageMeter]


def steps_of(stages: Iterable[ResolvedStage], meter: PipelineMeter) -> list[Step]:
    """Bind each plain sync map to its parameters, with its stage id and its meter."""
    return [(bind(s), s.id, meter.stage(s.id)) for s in stages]


def apply_steps(item: Any, steps: list[Step]) -> Any:
    """Run consecutive plain sync maps on one item; None when a map dropped it.

    Drops and errors are counted on each stage's meter (calls are counted by the caller).
    """
    if type(item) in SPECIAL:
        for step in steps:
            item = special_map(item, step)
            if item is None:
                return None
        return item
    for fn, sid, m in steps:
        try:
            result = fn(item)
        except Exception as exc:
            m.errors += 1
            return failure(sid, exc, item)
        if result is None:
            m.dropped += 1
            return None
        item = result
    return item


def fuse(steps: list[Step], *, plain: bool = False) -> Callable[[Any], Any]:
    """Return ``apply(item)``: `apply_steps` for these ``steps``, as straight-line code.

    The calls are written out one after the other in a function made for this chain
    (no loop, no tuple unpacking per step): measured at about 60% of `apply_steps`'s
    own cost per chunk for three maps. A `Carry` or `Failure` goes to `apply_steps`;
    with ``plain``, the caller knows ``item`` is neither (a chunk as a source made
    it) and the function does not look.
    """
    apply: Callable[[Any], Any] = _straight_line(steps, None, timed=False, plain=plain)
    return apply


def fuse_async(steps: list[Step], awaited: list[bool]) -> Callable[[Any], Awaitable[Any]]:
    """`fuse` for a chain with plain ``async def`` maps (``awaited[i]``): one coroutine
    per chunk, each async map awaited right in it (no wrapper coroutine, no layer)."""
    apply: Callable[[Any], Awaitable[Any]] = _straight_line(steps, awaited, timed=False)
    return apply


def fuse_timed_async(steps: list[Step], awaited: list[bool]) -> Callable[[Any], Awaitable[Any]]:
    """`apply_timed_async` for a plain chunk as straight-line code made for this chain:
    each map awaited (or called) in turn, its time observed, the checks inline (no
    wrapper coroutine, list or zip per map). A `Carry` or `Failure` goes to
    `apply_timed_async`."""
    apply: Callable[[Any], Awaitable[Any]] = _straight_line(steps, awaited, timed=True)
    return apply


@functools.lru_cache(maxsize=256)
def _compiled(source: str, filename: str) -> CodeType:
    """The code of a generated ``apply``: the same chain shape (map count, which are
    awaited, timed or not) is compiled once per process, not once per run (a pipeline
    run per HTTP request would pay ~0.3 ms a chain)."""
    return compile(source, filename, "exec")


def _straight_line(
    steps: list[Step], awaited: list[bool] | None, *, timed: bool, plain: bool = False
) -> Any:
    """The function `fuse`, `fuse_async` and `fuse_timed_async` return: ``apply(item)``
    calling each map in turn, written out for this chain. ``awaited`` None: a plain
    function (sync maps); else a coroutine function awaiting the maps it names.
    ``timed``: each map's time is observed in its stage's histogram. ``plain``: no look
    for a `Carry` or `Failure` (the caller knows there is none)."""
    if awaited is None:
        head, slow, label = "def", "slow(item, steps)", "maps"
        fallback: Any = apply_steps
    else:
        head, slow = "async def", "await slow(item, steps, awaited)"
        fallback = apply_timed_async if timed else apply_steps_async
        label = "timed async maps" if timed else "async maps"
    names: dict[str, Any] = {"Carry": Carry, "Failure": Failure, "slow": fallback}
    names.update(steps=steps, awaited=awaited, clock=time.perf_counter)
    lines = [f"{head} apply(item):"]
    if not plain:
        lines += [
            "    kind = type(item)",
            "    if kind is Carry or kind is Failure:",
            f"        return {slow}",
        ]
    for i, (fn, _, m) in enumerate(steps):
        names[f"f{i}"] = fn
        call = f"await f{i}(item)" if awaited is not None and awaited[i] else f"f{i}(item)"
        if timed:
            names[f"t{i}"] = m.seconds.observe
            lines += [
                "    started = clock()",
                "    try:",
                f"        result = {call}",
                "    except Exception as exc:",
                f"        t{i}(clock() - started)",
                f"        return fail({i}, exc, item)",
                f"    t{i}(clock() - started)",
            ]
        else:
            lines += [
                "    try:",
                f"        result = {call}",
                "    except Exception as exc:",
                f"        return fail({i}, exc, item)",
            ]
        lines += [
            "    if result is None:",
            f"        return drop({i})",
            "    item = result",
        ]
    lines.append("    return item")

    def fail(i: int, exc: Exception, item: Any) -> Failure:
        _, sid, m = steps[i]
        m.errors += 1
        return failure(sid, exc, item)

    def drop(i: int) -> None:
        steps[i][2].dropped += 1

    names.update(fail=fail, drop=drop)
    exec(_compiled("\n".join(lines), f"<{label} {len(steps)}>"), names)
    return names["apply"]


async def apply_steps_async(item: Any, steps: list[Step], awaited: list[bool]) -> Any:
    """`apply_steps` with some maps awaited (``awaited[i]``); a `Carry` keeps its acks."""
    carry = type(item) is Carry
    acks = item.acks if carry else ()
    chunk = item.chunk if carry else item
    if type(chunk) is Failure:
        return item
    for (fn, sid, m), wait in zip(steps, awaited, strict=True):
        try:
            result = fn(chunk)
            if wait:
                result = await result
        except Exception as exc:
            m.errors += 1
            fail = failure(sid, exc, chunk)
            return Carry(fail, acks) if carry else fail
        if result is None:
            m.dropped += 1
            release_all(acks)
            return None
        chunk = result
    return Carry(chunk, acks) if carry else chunk


async def apply_timed_async(item: Any, steps: list[Step], awaited: list[bool]) -> Any:
    """`apply_steps_async`, recording how long each call took (the sampled chunks)."""
    clock = time.perf_counter
    for step, wait in zip(steps, awaited, strict=True):
        started = clock()
        item = await apply_steps_async(item, [step], [wait])
        step[2].seconds.observe(clock() - started)
        if item is None or failed(item):
            return item
    return item


def failed(item: Any) -> bool:
    """Whether ``item`` is a `Failure`, bare or carried."""
    return type(item) is Failure or (type(item) is Carry and type(item.chunk) is Failure)


def apply_timed(item: Any, steps: list[Step]) -> Any:
    """`apply_steps`, recording how long each call took (the sampled chunks)."""
    if failed(item):
        return item
    if type(item) is Carry:
        return _carried_timed(item, steps)
    clock = time.perf_counter
    started = clock()
    for fn, sid, m in steps:
        try:
            result = fn(item)
        except Exception as exc:
            m.errors += 1
            m.seconds.observe(clock() - started)
            return failure(sid, exc, item)
        ended = clock()
        m.seconds.observe(ended - started)
        if result is None:
            m.dropped += 1
            return None
        item, started = result, ended
    return item


def _carried_timed(item: Carry, steps: list[Step]) -> Any:
    clock = time.perf_counter
    for step in steps:
        started = clock()
        item = special_map(item, step)
        step[2].seconds.observe(clock() - started)
        if item is None:
            return None
    return item


def special_map(item: Any, step: Step) -> Any:
    """Apply one sync map to a `Carry` or pass a `Failure` through; None when dropped."""
    if type(item) is Failure or type(item.chunk) is Failure:
        return item
    fn, sid, m = step
    try:
        result = fn(item.chunk)
    except Exception as exc:
        m.errors += 1
        return Carry(failure(sid, exc, item.chunk), item.acks)
    if result is None:
        m.dropped += 1
        release_all(item.acks)
        return None
    return Carry(result, item.acks)


def is_direct(stage: ResolvedStage) -> bool:
    """Whether a stage is a plain map, sync or ``async def``: no timeout, retry, thread or
    concurrency (the source reader runs a chain of them itself)."""
    return (
        stage.kind == "map"
        and stage.concurrency == 1
        and stage.timeout is None
        and stage.retry.attempts <= 1
        and not stage.blocking
    )


def is_fast(stage: ResolvedStage) -> bool:
    """Whether a stage is a plain sync map: no timeout, retry, thread or concurrency."""
    return is_direct(stage) and stage.calling != "async"
