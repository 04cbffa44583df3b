"""`pipeline.inlet.Inlet`: bodies taken as they arrive, bounded by ``max_pending``."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import pytest

from pipeline.inlet import Inlet, InletClosed, InletFull

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _reading(inlet: Inlet, max_pending: int) -> tuple[asyncio.Task[None], list[Any]]:
    """A source reading ``inlet``; returns its task and the items it took (un-acked)."""
    taken: list[Any] = []

    async def read() -> None:
        async with aclosing(inlet.items(max_pending=max_pending, max_body=1000)) as items:
            async for item in items:
                taken.append(item)

    task = asyncio.get_running_loop().create_task(read())
    while not inlet.accepting:
        await asyncio.sleep(0)
    return task, taken


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_first_records_are_taken_whole_or_refused_whole() -> None:
    """With 2 of 3 pending, a 2-record first part is refused and nothing of it is taken."""
    inlet = Inlet("p")
    inlet.begin_run("r1")
    task, taken = await _reading(inlet, 3)
    first = inlet.open([1, 2])
    with pytest.raises(InletFull, match=r"2 chunks pending, 2 more would pass max_pending=3"):
        inlet.open([3, 4])
    await _settle()
    assert [m.data for m in taken] == [1, 2]
    assert inlet.pending == 2
    for m in taken:
        m.ack()
    inlet.close(first)
    assert first.done.is_set()
    assert first.result() == {
        "accepted": 2,
        "chunk_errors": 0,
        "run": "r1",
        "first_seq": None,
        "last_seq": None,
    }
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_rest_of_a_body_waits_for_room_then_flows() -> None:
    """5 records through max_pending=2: taken two at a time, as the source acks them."""
    inlet = Inlet("p")
    inlet.begin_run("r1")
    task, taken = await _reading(inlet, 2)
    receipt = inlet.open([0, 1, 2, 3, 4])
    assert receipt.total == 2
    more = asyncio.ensure_future(inlet.more(receipt, [2, 3, 4]))
    acked = 0
    for _ in range(100):
        await _settle()
        while acked < len(taken):
            taken[acked].ack()
            acked += 1
        if more.done():
            break
    await more
    await _settle()
    for m in taken[acked:]:
        m.ack()
    assert [m.data for m in taken] == [0, 1, 2, 3, 4]
    assert not receipt.done.is_set()  # still open: more could come
    inlet.close(receipt)
    assert receipt.done.is_set()
    assert receipt.result()["accepted"] == 5
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_run_that_ends_while_a_body_waits_for_room_fails_it() -> None:
    """The waiting part is not taken: `more` raises, the receipt says the run ended."""
    inlet = Inlet("p")
    inlet.begin_run("r1")
    task, _ = await _reading(inlet, 1)
    receipt = inlet.open([0])
    more = asyncio.ensure_future(inlet.more(receipt, [1, 2]))
    await _settle()
    assert not more.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    inlet.end_run()
    with pytest.raises(InletClosed, match="the run ended before the body was read"):
        await more
    assert receipt.failed == "the run ended before the body was delivered"
    assert receipt.done.is_set()
    with pytest.raises(InletClosed, match="pipeline `p` is not running"):
        inlet.open([3])
