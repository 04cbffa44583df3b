"""A bytes reader's direct writer: live batches written from the hub's one callback."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.envelope import encode
from pipeline.hub.hub import Hub

pytestmark = pytest.mark.anyio


def line(seq: int, status: str = "processing") -> bytes:
    return encode({"status": status, "pipeline": "p", "run": "r1", "seq": seq})


def pub(hub: Hub, seq: int, status: str = "processing") -> None:
    e = {"status": status, "pipeline": "p", "run": "r1", "seq": seq}
    hub.publish(e, encode(e))


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_caught_up_reader_gets_live_batches_through_its_writer_else_its_task() -> None:
    hub = Hub("p", retain=10, client_buffer=100)
    pub(hub, 1)
    written: list[bytes] = []
    taking = [True]

    def write(batch: bytes | memoryview) -> bool:
        if taking[0]:
            written.append(bytes(batch))  # a view of the ring is not to be kept
        return taking[0]

    got: list[bytes] = []
    sub = hub.subscribe("0")
    sub.write_directly(write)

    async def read() -> None:
        async for batch in sub:
            got.append(batch)

    task = asyncio.get_running_loop().create_task(read())
    await turns()
    assert (got, written) == ([line(1)], [])  # the replay: the task's, as always
    pub(hub, 2)
    pub(hub, 3)
    await turns()
    assert (got, written, sub.last) == ([line(1)], [line(2) + line(3)], "r1:3")
    taking[0] = False  # declined (a full socket): the task writes it
    pub(hub, 4)
    await turns()
    assert (got, written) == ([line(1), line(4)], [line(2) + line(3)])
    taking[0] = True
    pub(hub, 5, "complete")
    hub.end_run()  # the end of a run always goes through the task
    await asyncio.wait_for(task, 5)
    assert (got[2:], len(written), sub.last, hub.clients) == ([line(5, "complete")], 1, "r1:5", 0)


async def test_a_lapped_direct_reader_is_dropped_and_its_task_ends() -> None:
    hub = Hub("p", retain=0, client_buffer=2)
    pub(hub, 1)
    sub = hub.subscribe()
    sub.write_directly(lambda batch: True)

    async def read() -> list[bytes]:
        return [batch async for batch in sub]

    task = asyncio.get_running_loop().create_task(read())
    await turns()
    for seq in range(2, 6):  # lapped before the hub's callback runs
        pub(hub, seq)
    assert await asyncio.wait_for(task, 5) == []
    assert (sub.dropped, hub.dropped_clients, hub.clients) == (True, 1, 0)


async def test_a_writer_gets_a_view_of_the_ring_released_after_its_write() -> None:
    """Lines in one segment reach the writer without a copy: a view, released once the
    write returns, so the hub can append to that segment again."""
    hub = Hub("p", retain=10, client_buffer=100)
    pub(hub, 1)
    kept: list[bytes | memoryview] = []
    sub = hub.subscribe()
    sub.write_directly(lambda batch: kept.append(batch) is None)

    async def read() -> None:
        async for _ in sub:
            pass

    task = asyncio.get_running_loop().create_task(read())
    await turns()
    pub(hub, 2)
    await turns()
    assert len(kept) == 1 and isinstance(kept[0], memoryview)
    with pytest.raises(ValueError, match="released"):
        bytes(kept[0])
    pub(hub, 3)  # the segment grows again: no view holds it
    await turns()
    assert len(kept) == 2
    pub(hub, 4, "complete")
    hub.end_run()
    await asyncio.wait_for(task, 5)
