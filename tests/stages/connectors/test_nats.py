"""The `nats` source and sink against the real NATS JetStream on 127.0.0.1:4222."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import nats
import orjson
import pytest
from nats.js import api as jsapi
from nats.js.errors import NotFoundError
from structlog.testing import capture_logs

from pipeline import sink
from stages.connectors import _nats_conn, _nats_member
from stages.connectors.nats import read as nats_source, write as nats_sink
from tests.stages.connectors.brokers import Running, unique, until

pytestmark = [pytest.mark.anyio, pytest.mark.services]
URL = "nats://127.0.0.1:4222"


@pytest.fixture
async def js() -> AsyncIterator[Any]:
    """A JetStream context on the shared server; deletes the test's streams afterwards."""
    nc = await nats.connect(URL)
    ctx = nc.jetstream()
    ctx.test_streams = []
    yield ctx
    for name in ctx.test_streams:
        with contextlib.suppress(Exception):  # already gone
            await ctx.delete_stream(name)
    await nc.close()


async def new_stream(js: Any) -> tuple[str, str]:
    """A unique stream and the subject it holds."""
    name = unique("T").replace("-", "_")
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    js.test_streams.append(name)
    return name, f"{name}.in"


async def publish(js: Any, subject: str, payloads: list[Any]) -> None:
    futures = [
        await js.publish_async(subject, p if isinstance(p, bytes) else orjson.dumps(p))
        for p in payloads
    ]
    await asyncio.gather(*futures)


async def ack_pending(js: Any, stream: str, durable: str = "pipeline") -> int:
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:  # not created yet
        return -1
    return int(info.num_ack_pending)


async def stream_data(js: Any, stream: str, subject: str) -> list[Any]:
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        if msg.subject == subject:
            out.append(orjson.loads(msg.data))
    return out


async def test_jetstream_round_trip_acks_everything(js: Any) -> None:
    """Messages flow source -> transform -> JetStream sink in order; all acked."""
    stream, subject = await new_stream(js)
    out = f"{stream}.out"
    await publish(js, subject, [{"n": i} for i in range(300)])

    def double(chunk: dict[str, int]) -> dict[str, int]:
        return {"n": chunk["n"] * 2}

    params = {"url": URL, "subject": subject, "stream": stream, "batch": 50}
    sink_params = {"url": URL, "subject": out, "jetstream": True, "receives": "data"}
    async with Running(
        nats_source, params, [nats_sink], transforms=[double], sink_params=[sink_params]
    ) as run:
        await until(lambda: len(run.data()) >= 300)
        await until(lambda: _equals(ack_pending(js, stream), 0))
        assert await run.stop() == "shutdown"
    assert await stream_data(js, stream, out) == [{"n": i * 2} for i in range(300)]
    info = await js.consumer_info(stream, "pipeline")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def _equals(value: Any, n: int) -> bool:
    return int(await value) == n


async def test_sink_writes_envelopes_a_source_reads_back(js: Any) -> None:
    """The sink writes whole envelopes by default; a `nats` source reads them back."""
    stream, subject = await new_stream(js)
    out = f"{stream}.out"
    await publish(js, subject, [{"n": 1}])
    async with Running(
        nats_source,
        {"url": URL, "subject": subject, "stream": stream},
        [nats_sink],
        sink_params=[{"url": URL, "subject": out, "jetstream": True}],
    ) as run:
        await until(run.data)
        await run.stop()
    params = {"url": URL, "subject": out, "stream": stream, "durable": "back"}
    async with Running(nats_source, params) as back:
        await until(lambda: len(back.data()) >= 3)
        await back.stop()
    assert [d["status"] for d in back.data()] == ["starting", "processing", "complete"]
    assert back.data()[1]["data"] == {"n": 1}


async def test_undecodable_and_max_deliveries_are_dead_lettered_then_acked(js: Any) -> None:
    """Bad JSON, and a message delivered more than max_deliveries times: chunk_errors, acked."""
    stream, subject = await new_stream(js)
    await publish(js, subject, [b"{not json", {"poison": True}, {"fine": True}])
    config = jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.EXPLICIT, ack_wait=30)
    psub = await js.pull_subscribe(subject, durable="d", stream=stream, config=config)
    for _ in range(3):  # the poison message was delivered 3 times already (and NAKed)
        msgs = await psub.fetch(3, timeout=5)
        for m in msgs:
            if m.data == b'{"poison":true}':
                await m.nak()
            else:
                await m.nak()
    await psub.unsubscribe()
    dead: list[dict[str, Any]] = []
    params = {"url": URL, "subject": subject, "stream": stream, "durable": "d"}
    params["max_deliveries"] = 3
    async with Running(nats_source, params, dead_letter=dead.append) as run:
        await until(lambda: len(dead) >= 3)
        await until(lambda: _equals(ack_pending(js, stream, "d"), 0))
        await run.stop()
    assert run.data() == []
    assert sorted(e["error"]["type"] for e in dead) == ["MaxDeliveriesExceeded"] * 3
    info = await js.consumer_info(stream, "d")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_in_progress_acks_prevent_redelivery_of_slow_work(js: Any) -> None:
    """A chunk slower than ack_wait is not redelivered to another worker."""
    stream, subject = await new_stream(js)
    await publish(js, subject, [{"n": 1}])
    gate = asyncio.Event()

    async def slow(chunk: Any) -> Any:
        await gate.wait()
        return chunk

    params = {"url": URL, "subject": subject, "stream": stream, "ack_wait": 0.6}
    async with Running(nats_source, params, transforms=[slow]) as first:
        await until(lambda: _equals(ack_pending(js, stream), 1))
        async with Running(nats_source, params) as second:
            await asyncio.sleep(2.4)  # four times ack_wait
            gate.set()
            await until(first.data)
            await until(lambda: _equals(ack_pending(js, stream), 0))
            await second.stop()
        await first.stop()
    assert first.data() == [{"n": 1}]
    assert second.data() == []
    info = await js.consumer_info(stream, "pipeline")
    assert info.num_redelivered == 0


async def test_a_stop_during_a_fetch_finishes_what_the_fetch_brings(
    js: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while its fetch waits, the source takes, writes and acks what it brings."""
    monkeypatch.setattr(_nats_member, "FETCH_WAIT", 5.0)  # the fetch outlives the stop
    stream, subject = await new_stream(js)
    written: list[Any] = []

    @sink(stream=True, receives="data")
    async def keep(items: AsyncIterator[Any]) -> None:
        async for item in items:
            written.append(item)

    params = {"url": URL, "subject": subject, "stream": stream, "batch": 100}
    async with Running(nats_source, params, [keep]) as run:
        await until(lambda: _fetching(js, stream))  # its fetch waits on the server
        run.run.stop()
        await publish(js, subject, [{"n": i} for i in range(5)])
        assert await run.stop() == "shutdown"
    info = await js.consumer_info(stream, "pipeline")
    assert info.num_ack_pending == 0  # nothing fetched was left un-acked (or NAKed)
    assert len(written) >= 1
    assert written == [{"n": i} for i in range(len(written))]
    assert info.num_pending + len(written) == 5
    assert info.num_redelivered == 0


async def _fetching(js: Any, stream: str) -> bool:
    try:
        info = await js.consumer_info(stream, "pipeline")
    except NotFoundError:  # not created yet
        return False
    return int(info.num_waiting) >= 1


async def test_core_subject_queue_group_at_most_once() -> None:
    """Without `stream` the source reads a core subject in a queue group."""
    subject = unique("core")
    nc = await nats.connect(URL)
    params = {"url": URL, "subject": subject, "format": "text"}
    async with Running(nats_source, params) as run:
        await asyncio.sleep(0.3)  # subscribed (core messages before that are not kept)
        for i in range(3):
            await nc.publish(subject, f"m{i}".encode())
        await nc.flush()
        await until(lambda: len(run.data()) >= 3)
        await run.stop()
    await nc.close()
    assert run.data() == ["m0", "m1", "m2"]


async def test_max_in_flight_bounds_unacked_messages(js: Any) -> None:
    """With a transform that holds on, the source fetches no more than max_in_flight."""
    stream, subject = await new_stream(js)
    await publish(js, subject, [{"n": i} for i in range(100)])
    gate = asyncio.Event()

    @sink(stream=True, receives="data")
    async def gated(items: AsyncIterator[Any]) -> None:
        async for _ in items:
            await gate.wait()

    params = {"url": URL, "subject": subject, "stream": stream, "batch": 4}
    params["max_in_flight"] = 10
    async with Running(nats_source, params, [gated]) as run:
        await until(lambda: _equals(ack_pending(js, stream), 10))
        await asyncio.sleep(0.5)
        assert await ack_pending(js, stream) == 10
        gate.set()
        await until(lambda: len(run.data()) >= 100)
        await run.stop()
    assert sorted(d["n"] for d in run.data()) == list(range(100))


async def test_position_reads_both_ack_subject_formats() -> None:
    """Stream sequence and delivery count, as nats-py reads them, from v1 and v2 subjects."""
    from nats.aio.msg import Msg

    from stages.connectors._nats_member import _position

    v1 = "$JS.ACK.S.C.3.17.9.1700000000000000000.0"
    v2 = "$JS.ACK._.HASH.S.C.3.17.9.1700000000000000000.0.token"
    for reply in (v1, v2):
        meta = Msg.Metadata._from_reply(reply)
        assert _position(reply) == (meta.sequence.stream, meta.num_delivered) == (17, 3)


async def test_jetstream_sink_publishes_again_until_a_stream_takes_it(js: Any) -> None:
    """Published where no stream listens yet: refused, published again (logged) until a
    stream holds the subject; every message is stored once, in order."""
    name = unique("T").replace("-", "_")
    subject = f"{name}.out"

    async def ten() -> AsyncIterator[dict[str, int]]:
        for n in range(10):
            yield {"n": n}
        await asyncio.Event().wait()  # stays open: the run ends by `stop`

    sink_params = {"url": URL, "subject": subject, "jetstream": True, "receives": "data"}
    with capture_logs() as logs:
        async with Running(ten, {}, [nats_sink], sink_params=[sink_params]) as run:
            await until(lambda: any(e["event"] == "nats_publish_retry" for e in logs), 30)
            await js.add_stream(name=name, subjects=[f"{name}.>"])
            js.test_streams.append(name)
            await until(lambda: _stored(js, name, 10), timeout=30)
            await run.stop()
    assert await stream_data(js, name, subject) == [{"n": n} for n in range(10)]


async def _stored(js: Any, stream: str, n: int) -> bool:
    return int((await js.stream_info(stream)).state.messages) >= n


async def test_stages_of_one_server_share_one_connection_the_last_closes_it() -> None:
    """A source and a sink of the same URL get one connection; it closes with its last user."""
    first = await _nats_conn.acquire(URL)
    second = await _nats_conn.acquire(URL)
    assert first is second
    await _nats_conn.release(URL, first)
    assert not second.is_closed  # the other user still has it
    await _nats_conn.release(URL, second)
    assert second.is_closed
    third = await _nats_conn.acquire(URL)  # a new connection once the last one closed
    assert third is not first and not third.is_closed
    await _nats_conn.release(URL, third)
