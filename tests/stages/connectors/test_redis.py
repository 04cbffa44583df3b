"""The `redis_stream` source and sink against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from pipeline import sink
from stages.connectors import _redis_group
from stages.connectors.redis import read as redis_stream_source, write as redis_stream_sink
from tests.stages.connectors.brokers import Running, unique, until

pytestmark = [pytest.mark.anyio, pytest.mark.services]
URL = "redis://127.0.0.1:6379"


@pytest.fixture
async def r() -> AsyncIterator[Any]:
    """A client of the shared Redis; deletes the test's keys afterwards."""
    client = aioredis.Redis.from_url(URL)
    client.test_keys = []  # type: ignore[attr-defined]
    yield client
    if client.test_keys:  # type: ignore[attr-defined]
        await client.delete(*client.test_keys)  # type: ignore[attr-defined]
    await client.aclose()


def key(r: Any, prefix: str = "test") -> str:
    name = unique(prefix)
    r.test_keys.append(name)
    return name


async def fill(r: Any, stream: str, payloads: list[Any], field: str = "data") -> list[bytes]:
    pipe = r.pipeline(transaction=False)
    for p in payloads:
        pipe.xadd(stream, {field: p if isinstance(p, bytes | str) else orjson.dumps(p)})
    return list(await pipe.execute())


async def pending(r: Any, stream: str, group: str = "g") -> int:
    try:
        return int((await r.xpending(stream, group))["pending"])
    except redis.exceptions.ResponseError:  # no group yet
        return -1


async def test_source_to_sink_round_trip_acks_everything(r: Any) -> None:
    """Entries flow source -> transform -> sink in order; all acked; the consumer leaves."""
    src, out = key(r), key(r)
    await fill(r, src, [{"n": i} for i in range(300)])

    def double(chunk: dict[str, int]) -> dict[str, int]:
        return {"n": chunk["n"] * 2}

    params = {"url": URL, "stream": src, "group": "g", "batch": 64}
    async with Running(
        redis_stream_source,
        params,
        [redis_stream_sink],
        transforms=[double],
        sink_params=[{"url": URL, "stream": out, "receives": "data"}],
    ) as run:
        await until(lambda: r.xlen(out), timeout=20)
        await until(lambda: _at_least(r.xlen(out), 300))
        assert await run.stop() == "shutdown"
    written = [orjson.loads(f[b"data"]) for _, f in await r.xrange(out)]
    assert written == [{"n": i * 2} for i in range(300)]
    assert await pending(r, src) == 0
    assert await r.xinfo_consumers(src, "g") == []  # a generated name is removed when empty


async def _at_least(value: Any, n: int) -> bool:
    return int(await value) >= n


async def test_sink_writes_envelopes_a_source_reads_back(r: Any) -> None:
    """The sink writes whole envelopes by default; a source of the same kind reads them."""
    src, out = key(r), key(r)
    await fill(r, src, [{"n": 1}, {"n": 2}])
    async with Running(
        redis_stream_source,
        {"url": URL, "stream": src, "group": "g"},
        [redis_stream_sink],
        sink_params=[{"url": URL, "stream": out, "maxlen": 1000}],
    ) as run:
        await until(lambda: _at_least(r.xlen(out), 3))  # starting + 2 processing
        await run.stop()
    async with Running(redis_stream_source, {"url": URL, "stream": out, "group": "g"}) as back:
        await until(lambda: len(back.data()) >= 4)  # ... + complete
        await back.stop()
    statuses = [d["status"] for d in back.data()]
    assert statuses == ["starting", "processing", "processing", "complete"]
    assert [d["data"] for d in back.data()[1:3]] == [{"n": 1}, {"n": 2}]


async def test_formats_and_undecodable_entries(r: Any) -> None:
    """text, raw and fields formats; bad JSON and a missing field become acked chunk_errors."""
    src = key(r)
    await fill(r, src, [b"caf\xc3\xa9"])
    for fmt, want in [("text", "café"), ("raw", b"caf\xc3\xa9"), ("fields", {"data": "café"})]:
        async with Running(
            redis_stream_source, {"url": URL, "stream": src, "group": fmt, "format": fmt}
        ) as run:
            await until(run.data)
            await run.stop()
        assert run.data() == [want]
    bad = key(r)
    await fill(r, bad, [b"{not json", b'{"ok": 1}'])
    await r.xadd(bad, {"other": "x"})
    dead: list[dict[str, Any]] = []
    async with Running(
        redis_stream_source, {"url": URL, "stream": bad, "group": "g"}, dead_letter=dead.append
    ) as run:
        await until(lambda: len(run.data()) + len(run.errors()) >= 3)
        await until(lambda: _equals(pending(r, bad), 0))
        await run.stop()
    assert run.data() == [{"ok": 1}]
    types = [e["error"]["type"] for e in run.errors()]
    assert types == ["ValueError", "MissingField"]
    assert [e["error"]["type"] for e in dead] == types
    assert run.errors()[1]["chunk"] == {"other": "x"}


async def _equals(value: Any, n: int) -> bool:
    return int(await value) == n


async def test_claims_entries_a_dead_consumer_left(r: Any) -> None:
    """Entries another consumer read and never acked are claimed after claim_idle."""
    src = key(r)
    await r.xgroup_create(src, "g", "0", mkstream=True)
    await fill(r, src, [{"n": i} for i in range(10)])
    await r.xreadgroup("g", "dead", {src: ">"}, count=10)
    assert await pending(r, src) == 10
    params = {"url": URL, "stream": src, "group": "g", "claim_idle": 0.2}
    async with Running(redis_stream_source, params) as run:
        await until(lambda: len(run.data()) >= 10)
        await until(lambda: _equals(pending(r, src), 0))
        await run.stop()
    assert sorted(d["n"] for d in run.data()) == list(range(10))


async def test_rereads_its_own_pending_entries_first(r: Any) -> None:
    """A worker restarted under a fixed name processes what its name still held."""
    src = key(r)
    await r.xgroup_create(src, "g", "0", mkstream=True)
    await fill(r, src, [{"n": i} for i in range(5)])
    await r.xreadgroup("g", "fixed", {src: ">"}, count=3)  # the previous life read 3
    params = {"url": URL, "stream": src, "group": "g", "consumer": "fixed", "claim_idle": 60}
    async with Running(redis_stream_source, params) as run:
        await until(lambda: len(run.data()) >= 5)
        await until(lambda: _equals(pending(r, src), 0))
        await run.stop()
    assert [d["n"] for d in run.data()] == [0, 1, 2, 3, 4]
    names = [c["name"] for c in await r.xinfo_consumers(src, "g")]
    assert names == [b"fixed"]  # a name the user chose is kept


async def test_max_deliveries_dead_letters_then_acks(r: Any) -> None:
    """An entry delivered more than max_deliveries times becomes a chunk_error, then acked."""
    src = key(r)
    await r.xgroup_create(src, "g", "0", mkstream=True)
    ids = await fill(r, src, [{"poison": True}, {"fine": True}])
    await r.xreadgroup("g", "crashy", {src: ">"}, count=1)
    for _ in range(2):  # two more deliveries of the poison entry (history reads count)
        await r.xreadgroup("g", "crashy", {src: "0"}, count=1)
    dead: list[dict[str, Any]] = []
    params = {"url": URL, "stream": src, "group": "g", "claim_idle": 0.1, "max_deliveries": 3}
    async with Running(redis_stream_source, params, dead_letter=dead.append) as run:
        await until(lambda: run.data() and dead)
        await until(lambda: _equals(pending(r, src), 0))
        await run.stop()
    assert run.data() == [{"fine": True}]
    assert [e["error"]["type"] for e in dead] == ["MaxDeliveriesExceeded"]
    assert ids[0].decode() in dead[0]["error"]["message"]
    assert dead[0]["chunk"] == {"data": '{"poison":true}'}


async def test_max_in_flight_bounds_unacked_entries(r: Any) -> None:
    """With a sink that holds on, the source reads no more than max_in_flight entries."""
    src = key(r)
    await fill(r, src, [{"n": i} for i in range(100)])
    gate = asyncio.Event()

    @sink(stream=True, receives="data")
    async def gated(items: AsyncIterator[Any]) -> None:
        async for _ in items:
            await gate.wait()

    params = {"url": URL, "stream": src, "group": "g", "batch": 4, "max_in_flight": 10}
    async with Running(redis_stream_source, params, [gated]) as run:
        await until(lambda: _equals(pending(r, src), 10))
        await asyncio.sleep(0.3)  # give it time to (wrongly) read more
        assert await pending(r, src) == 10
        gate.set()
        await until(lambda: len(run.data()) >= 100)
        await until(lambda: _equals(pending(r, src), 0))
        await run.stop()


async def test_slow_work_is_not_claimed_by_another_worker(r: Any) -> None:
    """Entries a live worker is still working on stay with it past claim_idle."""
    src = key(r)
    await fill(r, src, [{"n": 1}])
    gate = asyncio.Event()

    async def slow(chunk: Any) -> Any:
        await gate.wait()
        return chunk

    params = {"url": URL, "stream": src, "group": "g", "claim_idle": 0.3}
    async with Running(redis_stream_source, params, transforms=[slow]) as first:
        await until(lambda: _equals(pending(r, src), 1))
        async with Running(redis_stream_source, params) as second:
            await asyncio.sleep(1.5)  # five times claim_idle
            gate.set()
            await until(first.data)
            await until(lambda: _equals(pending(r, src), 0))
            await second.stop()
        await first.stop()
    assert first.data() == [{"n": 1}]
    assert second.data() == []


async def test_a_stop_during_a_read_finishes_what_the_read_brings(
    r: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while its XREADGROUP blocks, the source takes, writes and acks what that
    read brings: nothing read is left pending or handed back."""
    monkeypatch.setattr(_redis_group, "BLOCK_MS", 5000)  # the read outlives the stop
    src, name = key(r), unique("reader")
    params = {"url": f"{URL}?client_name={name}", "stream": src, "group": "g", "start": "$"}
    async with Running(redis_stream_source, params) as run:
        await until(lambda: _blocked(r, name))  # its read waits on the server
        run.run.stop()
        async with r.pipeline(transaction=True) as pipe:  # MULTI: one read gets all five
            for i in range(5):
                pipe.xadd(src, {"data": orjson.dumps({"n": i})})
            await pipe.execute()
        assert await run.stop() == "shutdown"
    assert run.data() == [{"n": i} for i in range(5)]
    assert await pending(r, src) == 0
    assert (await r.xinfo_groups(src))[0]["entries-read"] == 5


async def _blocked(r: Any, name: str) -> bool:
    clients = await r.client_list()
    return any(c["name"] == name and c["cmd"] == "xreadgroup" for c in clients)
