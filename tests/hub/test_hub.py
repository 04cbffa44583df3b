"""The broadcast hub: live delivery, coalescing, resume, lagging, bounds and cleanup."""

from __future__ import annotations

import asyncio
import doctest
from typing import Any

import anyio
import orjson
import pytest

import pipeline.hub.hub
import pipeline.hub.ring
import pipeline.hub.subscription
from pipeline.envelope import encode
from pipeline.hub.hub import MAX_BATCH_BYTES, BadSince, Hub, Item, Subscription
from pipeline.hub.ring import SEGMENT_BYTES

pytestmark = pytest.mark.anyio


def env(run: str, seq: int, status: str = "processing", **extra: Any) -> dict[str, Any]:
    """An envelope as the engine builds it."""
    return {"status": status, "pipeline": "p", "run": run, "seq": seq, "timestamp": "t", **extra}


def pub(hub: Hub, run: str, seqs: range | list[int], status: str = "processing") -> None:
    """Publish envelopes of ``run`` with the given seqs."""
    for seq in seqs:
        e = env(run, seq, status)
        hub.publish(e, encode(e))


def complete(hub: Hub, run: str, seq: int) -> None:
    """Publish ``complete`` and end the run, as the engine does."""
    pub(hub, run, [seq], "complete")
    hub.end_run()


def lines(batch: bytes) -> list[dict[str, Any]]:
    """Decode one NDJSON batch."""
    assert batch.endswith(b"\n")
    return [orjson.loads(line) for line in batch.splitlines()]


def seqs(batch: bytes) -> list[int | None]:
    """The seqs of a batch (None for notices)."""
    return [e.get("seq") for e in lines(batch)]


async def read(sub: Subscription) -> bytes:
    """The next batch, bounded in time."""
    with anyio.fail_after(5):
        return await sub.__anext__()


async def drain(sub: Subscription) -> list[bytes]:
    """Every batch until the stream ends."""
    with anyio.fail_after(5):
        return [batch async for batch in sub]


async def test_live_delivery_starts_after_subscribing() -> None:
    """since=None gets only what is published after subscribing."""
    hub = Hub("p", retain=10, client_buffer=10)
    pub(hub, "r1", range(1, 4))
    async with hub.subscribe() as sub:
        pub(hub, "r1", [4])
        assert seqs(await read(sub)) == [4]


async def test_ready_envelopes_come_as_one_batch_and_a_lone_one_at_once() -> None:
    """Five ready envelopes are one batch; one envelope is yielded without delay."""
    hub = Hub("p", retain=10, client_buffer=10)
    hub.begin_run("r1")
    async with hub.subscribe() as sub:
        pub(hub, "r1", range(1, 6))
        assert seqs(await read(sub)) == [1, 2, 3, 4, 5]
        pub(hub, "r1", [6])
        assert seqs(await read(sub)) == [6]
        async with anyio.create_task_group() as tg:
            got: list[bytes] = []

            async def reader() -> None:
                got.append(await read(sub))

            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            pub(hub, "r1", [7])
        assert [seqs(b) for b in got] == [[7]]


async def test_batch_lines_are_the_encoded_bytes_unchanged() -> None:
    """The NDJSON fast path hands out exactly the published lines."""
    hub = Hub("p", retain=10, client_buffer=10)
    hub.begin_run("r1")
    sub = hub.subscribe()
    sent = [encode(env("r1", n, data={"x": "é" * n})) for n in (1, 2)]
    for n, line in enumerate(sent, 1):
        hub.publish(env("r1", n), line)
    assert await read(sub) == b"".join(sent)
    sub.close()


async def test_since_zero_replays_everything_retained_then_live() -> None:
    """since=0 replays the retained run, then hands over to live envelopes."""
    hub = Hub("p", retain=10, client_buffer=10)
    pub(hub, "r1", range(1, 4))
    async with hub.subscribe("0") as sub:
        pub(hub, "r1", [4])
        assert seqs(await read(sub)) == [1, 2, 3, 4]
        pub(hub, "r1", [5])
        assert seqs(await read(sub)) == [5]


async def test_since_seq_and_run_seq_replay_higher_seqs() -> None:
    """SEQ and RUN:SEQ of the current run replay seq > SEQ."""
    hub = Hub("p", retain=10, client_buffer=10)
    pub(hub, "r1", range(1, 8))
    for since in ("4", "r1:4"):
        async with hub.subscribe(since) as sub:
            assert seqs(await read(sub)) == [5, 6, 7]
    async with hub.subscribe("7") as sub, hub.subscribe("99") as future:
        pub(hub, "r1", [8])
        assert seqs(await read(sub)) == [8]
        assert seqs(await read(future)) == [8]


async def test_token_of_another_run_gets_the_current_run_from_its_start() -> None:
    """RUN:SEQ naming another run replays the current run from its first envelope, after
    a `lagged` notice (reason `run_changed`) that says so, even when nothing of the
    current run was lost."""
    hub = Hub("p", retain=10, client_buffer=10)
    pub(hub, "r1", range(1, 4))
    complete(hub, "r1", 4)
    pub(hub, "r2", range(1, 3))
    async with hub.subscribe("r1:2") as sub:
        batch = lines(await read(sub))
    assert batch[0] == {
        "status": "lagged",
        "pipeline": "p",
        "run": "r2",
        "missed": 0,
        "reason": "run_changed",
        "previous_run": "r1",
        "timestamp": batch[0]["timestamp"],
    }
    assert [(e["run"], e["seq"]) for e in batch[1:]] == [("r2", 1), ("r2", 2)]


async def test_token_of_another_run_with_losses_starts_with_lagged() -> None:
    """When the current run's start is gone, a `lagged` notice says how many."""
    hub = Hub("p", retain=3, client_buffer=3)
    pub(hub, "r2", range(1, 11))
    async with hub.subscribe("old:99") as sub:
        first = lines(await read(sub))
    assert first[0] == {
        "status": "lagged",
        "pipeline": "p",
        "run": "r2",
        "missed": 7,
        "reason": "run_changed",
        "previous_run": "old",
        "timestamp": first[0]["timestamp"],
    }
    assert [e["seq"] for e in first[1:]] == [8, 9, 10]


async def test_lagged_counts_exactly_what_is_no_longer_retained() -> None:
    """since=3 with only 16..20 retained misses exactly 4..15."""
    hub = Hub("p", retain=5, client_buffer=5)
    pub(hub, "r1", range(1, 21))
    async with hub.subscribe("r1:3") as sub:
        batch = lines(await read(sub))
        pub(hub, "r1", [21])
        assert seqs(await read(sub)) == [21]
    assert (batch[0]["status"], batch[0]["missed"]) == ("lagged", 12)
    assert [e["seq"] for e in batch[1:]] == [16, 17, 18, 19, 20]


async def test_retain_zero_replays_nothing_and_reports_every_envelope_missed() -> None:
    """retain=0: since=0 gets `lagged` for all published so far, alone, then live."""
    hub = Hub("p", retain=0, client_buffer=4)
    pub(hub, "r1", range(1, 11))
    async with hub.subscribe("0") as sub:
        notice = lines(await read(sub))
        pub(hub, "r1", [11])
        assert seqs(await read(sub)) == [11]
    assert [(e["status"], e["missed"]) for e in notice] == [("lagged", 10)]


async def test_ended_run_gets_its_retained_envelopes_and_the_stream_ends() -> None:
    """A client of an ended run gets what is retained, then the stream ends."""
    hub = Hub("p", retain=3, client_buffer=10)
    pub(hub, "r1", range(1, 5))
    complete(hub, "r1", 5)
    assert [seqs(b) for b in await drain(hub.subscribe())] == [[3, 4, 5]]
    assert [seqs(b) for b in await drain(hub.subscribe("r1:4"))] == [[5]]
    assert await drain(hub.subscribe("r1:5")) == []
    assert [seqs(b) for b in await drain(hub.subscribe("0"))] == [[None, 3, 4, 5]]
    assert hub.clients == 0


async def test_end_run_ends_streams_right_after_complete() -> None:
    """Live streams end after `complete`, including a reader with a backlog."""
    hub = Hub("p", retain=10, client_buffer=10)
    hub.begin_run("r1")
    live, behind = hub.subscribe(), hub.subscribe()
    pub(hub, "r1", range(1, 3))
    assert seqs(await read(live)) == [1, 2]
    complete(hub, "r1", 3)
    hub.begin_run("r2")
    pub(hub, "r2", range(1, 3))
    assert [seqs(b) for b in await drain(live)] == [[3]]
    assert [seqs(b) for b in await drain(behind)] == [[1, 2, 3]]
    assert (hub.clients, hub.dropped_clients, hub.run) == (0, 0, "r2")
    assert hub.counts == {"processing": 2}


async def test_old_run_reader_lapped_by_the_next_run_is_dropped() -> None:
    """A reader still in an old run's backlog is lapped like any other."""
    hub = Hub("p", retain=4, client_buffer=4)
    hub.begin_run("r1")
    sub = hub.subscribe()
    complete(hub, "r1", 1)
    pub(hub, "r2", range(1, 10))
    assert await drain(sub) == []
    assert sub.dropped


async def test_pending_subscribers_get_the_first_run_from_its_start() -> None:
    """Before any run, subscribers wait, then follow the first run from seq 1."""
    hub = Hub("p", retain=10, client_buffer=10)
    subs = [hub.subscribe(s) for s in (None, "0", "5", "x:3")]
    assert (hub.run, hub.clients) == (None, 4)
    pub(hub, "r1", range(1, 3))
    for sub in subs:
        assert seqs(await read(sub)) == [1, 2]
        sub.close()


async def test_close_drains_then_ends_every_subscription() -> None:
    """close() lets each stream drain what was published, then end it."""
    hub = Hub("p", retain=10, client_buffer=10)
    pending = Hub("q", retain=10, client_buffer=10)
    waiting = pending.subscribe()
    hub.begin_run("r1")
    sub = hub.subscribe()
    pub(hub, "r1", range(1, 4))
    hub.close()
    pending.close()
    assert [seqs(b) for b in await drain(sub)] == [[1, 2, 3]]
    assert await drain(waiting) == []
    assert (hub.clients, pending.clients) == (0, 0)


async def test_slow_client_is_dropped_while_fast_client_gets_everything() -> None:
    """A frozen client is lapped and told via on_drop; the fast one misses nothing."""
    hub = Hub("p", retain=0, client_buffer=10)
    hub.begin_run("r1")
    told = anyio.Event()
    fast, slow = hub.subscribe(), hub.subscribe(on_drop=told.set)
    got: list[int | None] = []
    for seq in range(1, 1001):
        pub(hub, "r1", [seq])  # synchronous: the producer cannot block
        if seq % 7 == 0:
            got += seqs(await read(fast))
    got += seqs(await read(fast))
    with anyio.fail_after(5):
        await told.wait()
    assert got == list(range(1, 1001))
    assert (slow.dropped, fast.dropped, hub.clients, hub.dropped_clients) == (True, False, 1, 1)
    assert await drain(slow) == []
    assert slow.last is None
    fast.close()


async def test_lapped_reader_ends_and_can_resume_from_last() -> None:
    """A lapped reader's stream ends; resuming with `last` gets `lagged` then the rest."""
    hub = Hub("p", retain=20, client_buffer=5)
    hub.begin_run("r1")
    sub = hub.subscribe()
    pub(hub, "r1", range(1, 3))
    assert seqs(await read(sub)) == [1, 2]
    pub(hub, "r1", range(3, 30))
    assert await drain(sub) == []
    assert (sub.dropped, sub.last) == (True, "r1:2")
    async with hub.subscribe(sub.last) as again:
        batch = await read(again)
    assert lines(batch)[0]["missed"] == 7
    assert seqs(batch)[1:] == list(range(10, 30))


async def test_replaying_client_is_not_dropped_for_its_backlog() -> None:
    """retain > client_buffer: the replay backlog does not count as lagging."""
    hub = Hub("p", retain=100, client_buffer=10)
    pub(hub, "r1", range(1, 101))
    async with hub.subscribe("0") as sub:
        pub(hub, "r1", range(101, 106))
        assert seqs(await read(sub)) == list(range(1, 106))
        pub(hub, "r1", range(106, 120))
        assert await drain(sub) == []
        assert sub.dropped


async def test_memory_stays_bounded_with_a_frozen_subscriber() -> None:
    """100k envelopes past a frozen client: the hub holds retain + client_buffer lines
    (its bookkeeping at most a trim period more, its bytes at most one segment more)."""
    hub = Hub("p", retain=50, client_buffer=20)
    hub.begin_run("r1")
    frozen = hub.subscribe()
    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, hub.subscribe())
        await anyio.wait_all_tasks_blocked()
        pub(hub, "r1", range(1, 100_001))
    ring = hub._ring
    assert hub.buffered == 70
    assert len(ring.offs) == len(ring.seqs) <= 70 + 256
    assert hub.held_bytes <= ring.physical <= hub.held_bytes + SEGMENT_BYTES
    assert (len(hub._ring.waiters), hub.clients, hub.dropped_clients, frozen.dropped) == (
        0,
        0,
        2,
        True,
    )
    assert hub.counts == {"processing": 100_000}


async def test_big_backlog_is_split_into_batches_of_whole_lines() -> None:
    """A backlog over MAX_BATCH_BYTES comes in several batches, lines never split."""
    hub = Hub("p", retain=400, client_buffer=400)
    for seq in range(1, 401):
        e = env("r1", seq, data="x" * 2000)
        hub.publish(e, encode(e))
    batches = await drain_until(hub.subscribe("0"), 400)
    assert len(batches) > 1
    assert all(len(b) <= MAX_BATCH_BYTES for b in batches)
    assert [s for b in batches for s in seqs(b)] == list(range(1, 401))


async def drain_until(sub: Subscription, last_seq: int) -> list[bytes]:
    """Read batches until ``last_seq`` arrived."""
    out: list[bytes] = []
    while not out or seqs(out[-1])[-1] != last_seq:
        out.append(await read(sub))
    sub.close()
    return out


async def test_items_give_run_seq_status_and_line() -> None:
    """items() yields the structure SSE and WebSocket framing need."""
    hub = Hub("p", retain=2, client_buffer=4)
    pub(hub, "r1", range(1, 4))
    async with hub.subscribe("0") as sub:
        with anyio.fail_after(5):
            items = await sub.items().__anext__()
    expected = [("r1", None, "lagged"), ("r1", 2, "processing"), ("r1", 3, "processing")]
    assert [i[:3] for i in items] == expected
    assert items[1] == Item("r1", 2, "processing", encode(env("r1", 2)))


async def test_replay_hands_over_to_live_with_no_gap_or_duplicate() -> None:
    """Clients joining and resuming while the producer runs see every seq once."""
    hub = Hub("p", retain=64, client_buffer=256)
    hub.begin_run("r1")
    total = 5000
    results: dict[int, list[int | None]] = {}

    async def producer() -> None:
        for seq in range(1, total + 1):
            pub(hub, "r1", [seq])
            if seq % 13 == 0:
                await asyncio.sleep(0)
        complete(hub, "r1", total + 1)

    async def client(n: int) -> None:
        got: list[int | None] = []
        since = "0"
        while not got or got[-1] != total + 1:
            async with hub.subscribe(since) as sub:
                async for batch in sub:
                    got += seqs(batch)
                    if len(got) % (n + 3) == 0:
                        break  # disconnect mid-run, resume from the last seen
            since = f"r1:{got[-1]}"
            await asyncio.sleep(0)
        results[n] = got

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(client, n)
            tg.start_soon(producer)
    for got in results.values():
        assert got == list(range(1, total + 2))
    assert (hub.clients, hub._ring.waiters) == (0, set())


async def test_subscribe_cycles_and_cancelled_readers_leave_nothing_behind() -> None:
    """Many subscribe/close cycles, some cancelled mid-wait, leave no subscriber."""
    hub = Hub("p", retain=10, client_buffer=10)
    hub.begin_run("r1")
    for n in range(500):
        async with hub.subscribe("0") as sub:
            with anyio.move_on_after(0 if n % 2 else 5):
                if n % 2 == 0:
                    pub(hub, "r1", [n + 1])
                await sub.__anext__()
    assert (hub.clients, hub._ring.waiters, hub.dropped_clients) == (0, set(), 0)


@pytest.mark.parametrize(
    "since", ["", "-1", "abc", "r1:", "1.5", "r1:-2", " 5", "+5", "\u0663", "1_0", "r1:x"]
)
def test_bad_since_is_rejected(since: str) -> None:
    """Anything but SEQ or RUN:SEQ raises BadSince (a ValueError)."""
    hub = Hub("p", retain=1, client_buffer=1)
    with pytest.raises(BadSince) as info:
        hub.subscribe(since)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == f"`since` must be SEQ (an integer >= 0) or RUN:SEQ, got {since!r}"
    assert hub.clients == 0


def test_bad_since_message_is_truncated() -> None:
    """A huge token is not echoed whole."""
    with pytest.raises(BadSince, match=r"got 'x{64}\.\.\.'$"):
        Hub("p", retain=1, client_buffer=1).subscribe("x" * 10_000)


def test_bad_sizes_are_rejected() -> None:
    """retain < 0 or client_buffer < 1 is a ValueError naming the hub."""
    with pytest.raises(ValueError, match=r"^hub `p`: need retain >= 0"):
        Hub("p", retain=1, client_buffer=0)
    with pytest.raises(ValueError, match=r"client_buffer_bytes=0$"):
        Hub("p", retain=1, client_buffer=1, client_buffer_bytes=0)


def test_counters_follow_the_current_run() -> None:
    """Counts per status, last_seq and run reset when a run begins."""
    hub = Hub("p", retain=1, client_buffer=1)
    assert (hub.run, hub.last_seq, hub.counts) == (None, 0, {})
    pub(hub, "r1", [1], "starting")
    pub(hub, "r1", range(2, 4))
    pub(hub, "r1", [4], "chunk_error")
    assert (hub.run, hub.last_seq) == ("r1", 4)
    assert hub.counts == {"starting": 1, "processing": 2, "chunk_error": 1}
    pub(hub, "r2", [1], "starting")
    assert (hub.run, hub.last_seq, hub.counts) == ("r2", 1, {"starting": 1})


def test_docstring_examples_run() -> None:
    """The modules' examples are correct."""
    assert doctest.testmod(pipeline.hub.hub).failed == 0
    assert doctest.testmod(pipeline.hub.subscription).failed == 0
    assert doctest.testmod(pipeline.hub.ring).failed == 0


async def test_client_may_lag_exactly_client_buffer_envelopes() -> None:
    """client_buffer envelopes behind is fine; one more and the client is dropped."""
    hub = Hub("p", retain=0, client_buffer=3)
    hub.begin_run("r1")
    ok, late = hub.subscribe(), hub.subscribe()
    pub(hub, "r1", range(1, 4))
    assert seqs(await read(ok)) == [1, 2, 3]
    pub(hub, "r1", [4])
    assert await drain(late) == []
    assert (ok.dropped, late.dropped) == (False, True)
    ok.close()


MIB = 1024 * 1024


def big(hub: Hub, run: str, seqs: range, size: int = MIB) -> None:
    """Publish envelopes of ``run`` carrying ``size`` bytes each."""
    for seq in seqs:
        e = env(run, seq, data="x" * size)
        hub.publish(e, encode(e))


async def test_retention_is_bounded_in_bytes_and_a_late_client_is_told_the_rest() -> None:
    """Ten 1 MiB envelopes with retain_bytes 3 MiB: the ring holds at most retain_bytes +
    client_buffer_bytes plus one line, and a late client gets the newest that fit in
    retain_bytes after a lagged notice counting exactly the others."""
    hub = Hub("p", retain=100, client_buffer=100, retain_bytes=3 * MIB, client_buffer_bytes=MIB)
    big(hub, "r1", range(1, 11))
    complete(hub, "r1", 11)
    line = len(encode(env("r1", 1, data="x" * MIB)))
    assert hub.held_bytes <= 4 * MIB + line
    assert hub.buffered == 5  # 1 MiB + (four lines after it, 3 MiB + complete, <= 4 MiB)
    assert hub._ring.physical <= hub.held_bytes + line  # the others are released
    async with hub.subscribe("0") as late:
        got = [e for batch in await drain(late) for e in lines(batch)]
    assert [e["status"] for e in got] == ["lagged", "processing", "processing", "complete"]
    assert got[0]["missed"] == 8
    assert [e.get("seq") for e in got[1:]] == [9, 10, 11]


async def test_an_envelope_larger_than_every_bound_is_delivered_live_not_replayed() -> None:
    """A 3 MiB envelope with 1 MiB bounds reaches the client keeping up; it is never
    replayed (lagged, missed 1) and is released once over 2 MiB came after it."""
    hub = Hub("p", retain=100, client_buffer=100, retain_bytes=MIB, client_buffer_bytes=MIB)
    hub.begin_run("r1")
    async with hub.subscribe() as live:
        big(hub, "r1", range(1, 2), 3 * MIB)
        pub(hub, "r1", [2])
        assert seqs(await read(live)) + seqs(await read(live)) == [1, 2]  # one batch each
        assert not live.dropped
    async with hub.subscribe("0") as late:
        got = lines(await read(late))
    assert [(e["status"], e.get("seq"), e.get("missed")) for e in got] == [
        ("lagged", None, 1),
        ("processing", 2, None),
    ]
    big(hub, "r1", range(3, 8), MIB // 2)
    assert hub.held_bytes < 3 * MIB
    assert hub._ring.physical < 3 * MIB  # the 3 MiB line is released


async def test_a_client_is_dropped_past_client_buffer_bytes() -> None:
    """A frozen client is dropped once more than client_buffer_bytes were published after
    the first line it has not read; one that reads keeps going."""
    hub = Hub("p", retain=0, client_buffer=1000, retain_bytes=0, client_buffer_bytes=2 * MIB)
    hub.begin_run("r1")
    frozen, ok = hub.subscribe(), hub.subscribe()
    for seq in (1, 2):
        big(hub, "r1", range(seq, seq + 1))
        assert seqs(await read(ok)) == [seq]
    assert not frozen.lapped(hub._ring.head)  # 1 MiB after its first unread line
    big(hub, "r1", range(3, 4))  # 2 MiB and a little after it
    assert seqs(await read(ok)) == [3]
    assert await drain(frozen) == []
    assert (frozen.dropped, ok.dropped, hub.dropped_clients) == (True, False, 1)
    ok.close()


async def test_a_client_whose_next_line_was_released_is_dropped() -> None:
    """A replaying client whose next line is released (bytes bound) is dropped, not
    handed a released line."""
    hub = Hub("p", retain=100, client_buffer=100, retain_bytes=2 * MIB, client_buffer_bytes=MIB)
    big(hub, "r1", range(1, 3))
    sub = hub.subscribe("0")
    big(hub, "r1", range(3, 7))
    assert await drain(sub) == []
    assert sub.dropped


async def test_publish_lines_is_publish_for_each_line() -> None:
    """A batch of processing lines (across segments, the byte bound and a new run) reads
    back exactly as the same lines published one by one: same batches, seqs, counts."""
    one = Hub("p", retain=300, client_buffer=300, retain_bytes=200_000, client_buffer_bytes=1)
    many = Hub("p", retain=300, client_buffer=300, retain_bytes=200_000, client_buffer_bytes=1)
    for run, first in (("r1", 1), ("r2", 1)):
        envs = [env(run, seq, data="x" * 900) for seq in range(first, first + 400)]
        encoded = [encode(e) for e in envs]
        for e, line in zip(envs, encoded, strict=True):
            one.publish(e, line)
        for at in range(0, 400, 37):
            many.publish_lines(run, first + at, encoded[at : at + 37])
        complete(one, run, first + 400)
        complete(many, run, first + 400)
    assert (many.run, many.last_seq, many.counts, many.buffered, many.held_bytes) == (
        one.run,
        one.last_seq,
        one.counts,
        one.buffered,
        one.held_bytes,
    )
    async with one.subscribe("0") as a, many.subscribe("0") as b:
        got_a, got_b = await drain(a), await drain(b)
    assert [len(x) for x in got_a] == [len(x) for x in got_b]  # the same batches
    assert got_a[0].split(b"\n", 1)[1] == got_b[0].split(b"\n", 1)[1]  # after `lagged`
    assert got_a[1:] == got_b[1:]
    assert lines(got_a[0])[0] | {"timestamp": ""} == lines(got_b[0])[0] | {"timestamp": ""}
