"""Confirming sinks: acceptance when written, one rejected item -> its own chunk_error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipeline import Delivery, Message, sink
from pipeline.testing import run_pipeline

pytestmark = pytest.mark.anyio


def broker(count: int, acked: list[int]) -> Any:
    async def source() -> AsyncIterator[Message]:
        for i in range(count):
            yield Message({"n": i}, ack=lambda i=i: acked.append(i))

    return source


async def test_acks_fire_only_when_the_batch_is_confirmed() -> None:
    """A batching sink's items are acknowledged when it accepts them, not when it reads on."""
    acked: list[int] = []
    acked_at_flush: list[list[int]] = []

    @sink(stream=True, confirm=True)
    async def batches(deliveries: AsyncIterator[Delivery]) -> None:
        held: list[Delivery] = []
        it = aiter(deliveries)
        while True:
            try:
                d = await asyncio.wait_for(anext(it), 0.05)
            except TimeoutError:
                d = None
            except StopAsyncIteration:
                return
            if d is not None and d.item["status"] != "processing":
                d.accept()
                continue
            if d is not None:
                held.append(d)
            if len(held) == 3 or (d is None and held):
                acked_at_flush.append(list(acked))
                for h in held:
                    h.accept()
                held = []

    envs = await run_pipeline(broker(7, acked), [], [batches])
    assert envs[-1]["reason"] == "finished"
    assert acked_at_flush == [[], [0, 1, 2], [0, 1, 2, 3, 4, 5]]
    assert sorted(acked) == list(range(7))


async def test_a_rejected_item_becomes_its_chunk_error_and_is_acked_after_dead_letter() -> None:
    """One rejected item: a chunk_error naming the sink; the others are written."""
    acked: list[int] = []
    dead: list[dict[str, Any]] = []

    @sink(stream=True, confirm=True, receives="data")
    async def picky(deliveries: AsyncIterator[Delivery]) -> None:
        async for d in deliveries:
            if d.item["n"] == 2:
                assert 2 not in acked
                d.reject(ValueError("duplicate key `n`=2"))
            else:
                d.accept()

    def dead_letter(env: dict[str, Any]) -> None:
        dead.append(env)

    envs = await run_pipeline(broker(4, acked), [], [picky], dead_letter=dead_letter)
    errors = [e for e in envs if e["status"] == "chunk_error"]
    assert [(e["stage"], e["error"], e["chunk"]) for e in errors] == [
        ("sinks[0]:picky", {"type": "ValueError", "message": "duplicate key `n`=2"}, {"n": 2})
    ]
    assert [e["seq"] for e in dead] == [errors[0]["seq"]]
    assert envs[-1]["status"] == "complete"
    assert envs[-1]["stats"]["chunk_errors"] == 1
    assert [e["seq"] for e in envs] == list(range(1, len(envs) + 1))
    assert sorted(acked) == [0, 1, 2, 3]


async def test_rejections_at_the_last_flush_come_before_complete() -> None:
    """A sink that flushes only when its input goes quiet still reports before `complete`."""
    acked: list[int] = []

    @sink(stream=True, confirm=True, receives="data")
    async def lazy(deliveries: AsyncIterator[Delivery]) -> None:
        held: list[Delivery] = []
        it = aiter(deliveries)
        while True:
            try:
                d = await asyncio.wait_for(anext(it), 0.05)
            except TimeoutError:
                for h in held:
                    h.reject(RuntimeError("no")) if h.item["n"] % 2 else h.accept()
                held = []
                continue
            except StopAsyncIteration:
                return
            held.append(d)

    envs = await run_pipeline(broker(4, acked), [], [lazy])
    assert [e["status"] for e in envs] == [
        "starting",
        *["processing"] * 4,
        "chunk_error",
        "chunk_error",
        "complete",
    ]
    assert [e["chunk"]["n"] for e in envs if e["status"] == "chunk_error"] == [1, 3]
    assert sorted(acked) == [0, 1, 2, 3]


async def test_unanswered_items_of_a_failed_sink_are_never_acked() -> None:
    """A confirming sink that dies holding items leaves them unacknowledged."""
    acked: list[int] = []

    @sink(stream=True, confirm=True, receives="data")
    async def dies(deliveries: AsyncIterator[Delivery]) -> None:
        async for d in deliveries:
            if d.item["n"] < 2:
                d.accept()
            if d.item["n"] == 3:
                raise OSError("connection lost")

    envs = await run_pipeline(broker(5, acked), [], [dies])
    assert envs[-1]["reason"] == "error"
    assert acked == [0, 1]


def test_confirm_needs_a_stream_sink() -> None:
    """`confirm=True` on a per-item sink is refused where it is declared."""
    with pytest.raises(TypeError, match="`confirm=True` needs `stream=True`"):
        sink(confirm=True)(lambda env: None)


async def test_rejecting_an_envelope_that_is_no_chunk_is_only_logged() -> None:
    """`starting`/`complete` rejected: no chunk_error (no loop through the sink), acks fire."""
    acked: list[int] = []

    @sink(stream=True, confirm=True)
    async def refuses_all(deliveries: AsyncIterator[Delivery]) -> None:
        async for d in deliveries:
            d.reject(OSError("refused"))

    envs = await run_pipeline(broker(2, acked), [], [refuses_all])
    assert [e["status"] for e in envs] == [
        "starting",
        "processing",
        "processing",
        "chunk_error",
        "chunk_error",
        "complete",
    ]
    assert envs[-1]["stats"]["chunk_errors"] == 2
    assert sorted(acked) == [0, 1]


async def test_every_sink_gets_envelopes_in_seq_order_when_rejections_meet_a_full_queue() -> None:
    """A rejection's chunk_error, numbered while a slow sink's queue is full, waits its turn.

    The run emits rejections from a task of their own; without ordering, it could put
    its envelope into a queue that just got room ahead of the envelope already waiting.
    """
    from pipeline.engine.run import Run
    from pipeline.testing import make_stage

    @sink(stream=True, confirm=True)
    async def picky(deliveries: AsyncIterator[Delivery]) -> None:
        async for d in deliveries:
            if d.item["status"] == "processing" and d.item["data"] % 3 == 0:
                d.reject(ValueError("no multiples of 3"))
            else:
                d.accept()

    got: list[dict[str, Any]] = []

    async def slow(env: dict[str, Any]) -> None:
        got.append(env)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def numbers() -> AsyncIterator[int]:
        for i in range(600):
            yield i

    published: list[int] = []
    run = Run(
        "test",
        make_stage(numbers, "source"),
        [],
        [make_stage(picky, "sink", id="sinks[0]"), make_stage(slow, "sink", id="sinks[1]")],
        publish=lambda env, line: published.append(env["seq"]),
        sink_buffer=4,
    )
    assert await run.execute() == "finished"
    seqs = [e["seq"] for e in got]
    assert seqs == sorted(seqs) == list(range(1, len(got) + 1))
    assert published == seqs
    assert sum(1 for e in got if e["status"] == "chunk_error") == 200


async def test_a_delivery_cancelled_while_waiting_for_room_leaves_the_order_intact() -> None:
    """A waits for room, B waits behind it and is cancelled, C comes after: each was queued
    when it was offered (as the hub got it), so the sink gets A, B, C in order, no gap."""
    from pipeline.engine.fanout import Fanout
    from pipeline.testing import make_stage

    gate = asyncio.Event()
    got: list[int] = []

    async def slow(env: dict[str, Any]) -> None:
        await gate.wait()
        got.append(env["seq"])

    fanout = Fanout([make_stage(slow, "sink", id="sinks[0]")], buffer=1)
    await fanout.start()

    def env(seq: int) -> Any:
        return {"status": "processing", "seq": seq, "data": seq}

    await fanout.deliver(env(1), b"")  # taken by the sink, which waits at the gate
    await fanout.deliver(env(2), b"")  # fills the queue
    a = asyncio.ensure_future(fanout.deliver(env(3), b""))  # queued, then waits for room
    b = asyncio.ensure_future(fanout.deliver(env(4), b""))  # queued after it, waits too
    c = asyncio.ensure_future(fanout.deliver(env(5), b""))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not (a.done() or b.done() or c.done())
    b.cancel()
    gate.set()
    await asyncio.wait_for(asyncio.gather(a, c), 10)
    await fanout.close(10)
    assert got == [1, 2, 3, 4, 5]
    assert b.cancelled()


async def test_a_confirming_batch_sink_gets_lists_of_deliveries_and_acks_what_it_accepts() -> None:
    """`confirm=True, batch=True`: lists of deliveries; a list is acknowledged only as
    the sink accepts each, and a rejected one becomes its chunk_error."""
    acked: list[int] = []
    sizes: list[int] = []
    answered: list[int] = []

    @sink(stream=True, confirm=True, batch=True, receives="data")
    async def lists(batches: AsyncIterator[list[Delivery]]) -> None:
        async for deliveries in batches:
            sizes.append(len(deliveries))
            for d in deliveries:
                assert sorted(a for a in acked if a != 3) == answered  # only what it accepted
                if d.item["n"] == 3:
                    d.reject(ValueError("no 3"))
                else:
                    d.accept()
                    answered.append(d.item["n"])

    envs = await run_pipeline(broker(6, acked), [], [lists], dead_letter=lambda env: None)
    assert sum(sizes) == 6
    assert [e["chunk"] for e in envs if e["status"] == "chunk_error"] == [{"n": 3}]
    assert sorted(acked) == list(range(6))


def test_batch_needs_a_stream_sink() -> None:
    """`batch=True` on a per-item sink is refused where it is declared."""
    with pytest.raises(TypeError, match="`batch=True` needs `stream=True`"):
        sink(batch=True)(lambda env: None)
