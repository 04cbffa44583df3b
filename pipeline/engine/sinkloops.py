"""How each kind of sink reads its queue, and when what it read counts as accepted.

A plain sink (`run_calls`) is called once per payload: accepted when the call returns.
A stream sink (`run_stream`) is called once with an async iterator of payloads: one is
accepted when the sink asks for the next, or returns after the last. A batch sink
(`run_batches`) gets each list of ready payloads at once, accepted the same way. Each
loop answers the `Flush` markers it meets and ends at `END`; a stream or batch sink that
returns before `END` has failed (it stopped reading). The queue is
`pipeline.engine.sinkqueue.Worker`; `pipeline.engine.fanout.Fanout` starts one loop per
sink and reports its failure.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator
from typing import Any

from pipeline.engine.sinkqueue import END, Flush, Pending, Worker

__all__ = ["run_batches", "run_calls", "run_stream"]


async def run_calls(w: Worker) -> None:
    """A plain sink: one call per payload, accepted when the call returns."""
    stage = w.stage
    fn = functools.partial(stage.fn, **stage.params) if stage.params else stage.fn
    is_async = stage.calling == "async"
    while True:
        items, held, _ = await w.take()
        held.append((-1, None))  # type: ignore[arg-type]  # a sentinel: never matched
        h = 0
        for i, payload in enumerate(items):
            w.finished(1)
            if payload is END:
                return
            if type(payload) is Flush:
                payload.event.set()
                continue
            if stage.blocking:
                await asyncio.to_thread(fn, payload)
            elif is_async:
                await fn(payload)
            else:
                result = fn(payload)
                if inspect.isawaitable(result):
                    await result
            if held[h][0] == i:
                held[h][1].accept()
                h += 1


async def run_stream(w: Worker) -> None:
    """A stream sink: one call with an iterator; a payload is accepted when the sink asks
    for the next (or returns after the last)."""
    last: list[Pending | None] = [None]
    finished = [False]

    async def items() -> AsyncIterator[Any]:
        while True:
            batch, held, _ = await w.take()
            held.append((-1, None))  # type: ignore[arg-type]  # a sentinel: never matched
            h = 0
            for i, payload in enumerate(batch):
                w.finished(1)
                if payload is END:
                    finished[0] = True
                    return
                if type(payload) is Flush:
                    payload.event.set()
                    continue
                keep = None
                if held[h][0] == i:
                    keep = held[h][1]
                    h += 1
                last[0] = keep
                yield payload
                if keep is not None:  # it asks for the next one: this one is accepted
                    last[0] = None
                    keep.accept()

    await w.stage.fn(items(), **w.stage.params)
    _check_finished(finished[0])
    if last[0] is not None:
        last[0].accept()


async def run_batches(w: Worker) -> None:
    """A batch sink: each list of ready payloads at once, accepted when it asks for
    the next list (or returns after the last)."""
    last: list[list[Pending]] = [[]]
    finished = [False]

    async def batches() -> AsyncIterator[list[Any]]:
        while True:
            items, held, marks = await w.take()
            if not marks and not held:  # the common case: only payloads
                yield items
                w.finished(len(items))
                continue
            marks.append(len(items))
            start, h = 0, 0
            for m in marks:
                if m > start:
                    taken = []
                    while h < len(held) and held[h][0] < m:
                        taken.append(held[h][1])
                        h += 1
                    last[0] = taken
                    yield items if start == 0 and m == len(items) else items[start:m]
                    last[0] = []
                    for p in taken:  # it asks for the next batch: these are accepted
                        p.accept()
                w.finished(min(m + 1, len(items)) - start)
                if m == len(items):
                    break
                marker = items[m]
                if marker is END:
                    finished[0] = True
                    return
                marker.event.set()
                start = m + 1

    await w.stage.fn(batches(), **w.stage.params)
    _check_finished(finished[0])
    for p in last[0]:
        p.accept()


def _check_finished(finished: bool) -> None:
    if not finished:
        msg = "sink stopped reading before the end of the run"
        raise RuntimeError(msg)
