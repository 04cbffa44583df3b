"""Acks on a quiet stream, and a stopped source finishing what it already fetched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from pipeline import Message, sink
from pipeline.testing import run_pipeline

pytestmark = pytest.mark.anyio


async def test_stream_sink_acks_last_message_on_a_quiet_stream() -> None:
    """A stream sink that wrote the last message gets it acked without a next message."""
    acked = asyncio.Event()
    written: list[Any] = []

    async def quiet() -> AsyncIterator[Message]:
        yield Message({"n": 1}, ack=acked.set)
        with anyio.fail_after(10):  # before the fix this waited for a next message forever
            await acked.wait()

    @sink(stream=True, receives="data")
    async def keep(items: AsyncIterator[Any]) -> None:
        async for item in items:
            written.append(item)

    envs = await run_pipeline(quiet, [], [keep])
    assert envs[-1]["reason"] == "finished"
    assert written == [{"n": 1}]
    assert acked.is_set()


async def test_stream_sink_acks_only_after_writing() -> None:
    """While a stream sink works on an item, that item's message is not acked."""
    acked: list[int] = []
    seen_unacked: list[bool] = []

    async def broker() -> AsyncIterator[Message]:
        for i in range(4):
            yield Message(i, ack=lambda i=i: acked.append(i))

    @sink(stream=True, receives="data")
    async def slow(items: AsyncIterator[int]) -> None:
        async for item in items:
            await asyncio.sleep(0)
            seen_unacked.append(item not in acked)

    await run_pipeline(broker, [], [slow])
    assert seen_unacked == [True] * 4
    assert sorted(acked) == [0, 1, 2, 3]


def _holding_source(fetched: int, release: asyncio.Event | None = None) -> Any:
    """A broker-like source: fetched chunks it has not yielded are yielded after a stop."""

    async def broker() -> AsyncIterator[int]:
        held = list(range(fetched))
        try:
            while held:
                yield held.pop(0)
                if release is not None and len(held) == fetched - 1:
                    await release.wait()  # a stop lands here: it is waiting
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            while held:  # asked to stop: finish what was fetched, fetch no more
                yield held.pop(0)

    return broker


@pytest.mark.parametrize("where", ["waiting", "at_yield"])
async def test_a_stopped_source_finishes_what_it_already_fetched(where: str) -> None:
    """stop() tells the source at its yield: one that catches it yields what it holds."""
    from pipeline.engine.run import Run
    from pipeline.testing import make_stage

    release, gate = asyncio.Event(), asyncio.Event()
    source = _holding_source(20, release if where == "waiting" else None)
    written: list[int] = []

    @sink(stream=True, receives="data")
    async def gated(items: AsyncIterator[int]) -> None:
        async for item in items:
            if where == "at_yield":
                await gate.wait()  # the queue fills: the reader waits to hand over, not to read
            written.append(item)

    envs: list[dict[str, Any]] = []
    run = Run(
        "t",
        make_stage(source, "source"),
        sinks=[make_stage(gated, "sink")],
        publish=lambda env, line: envs.append(env),
        sink_buffer=1,
    )
    task = asyncio.create_task(run.execute())
    with anyio.fail_after(10):
        while not any(e["status"] == "processing" for e in envs):
            await asyncio.sleep(0.01)
    run.stop()
    gate.set()
    with anyio.fail_after(10):
        assert await task == "shutdown"
    if where == "at_yield":  # told at its yield: it hands over all it fetched
        assert written == list(range(20))
    else:  # told by cancelling its wait: the chunk it yielded instead, then it ends
        assert written == [0, 1]


def _fetching_source(release: asyncio.Event) -> Any:
    """A broker-like source stopped in a fetch that still brings its batch (as NATS's does)."""

    async def fetch() -> list[int]:
        with contextlib.suppress(asyncio.CancelledError):
            await release.wait()  # the stop lands here, in the fetch
        return list(range(1, 20))  # ... which brings its batch all the same

    async def broker() -> AsyncIterator[int]:
        ready = [0]
        try:
            while True:
                if not ready:
                    ready = await fetch()
                yield ready.pop(0)
        except asyncio.CancelledError:
            while ready:  # told again at its yield: finish what was fetched
                yield ready.pop(0)

    return broker


async def test_a_source_stopped_in_its_fetch_finishes_the_batch_it_got() -> None:
    """A stop caught in the source's wait is told again at its yield; the batch is finished."""
    from pipeline.engine.run import Run
    from pipeline.testing import make_stage

    written: list[int] = []

    @sink(stream=True, receives="data")
    async def keep(items: AsyncIterator[int]) -> None:
        async for item in items:
            written.append(item)

    envs: list[dict[str, Any]] = []
    run = Run(
        "t",
        make_stage(_fetching_source(asyncio.Event()), "source"),
        sinks=[make_stage(keep, "sink")],
        publish=lambda env, line: envs.append(env),
    )
    task = asyncio.create_task(run.execute())
    with anyio.fail_after(10):
        while not any(e["status"] == "processing" for e in envs):
            await asyncio.sleep(0.01)
    run.stop()
    with anyio.fail_after(10):
        assert await task == "shutdown"
    assert written == list(range(20))
