"""The `amqp` source and sink against the real RabbitMQ on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import Delivery, sink
from pipeline.testing import make_stage, run_pipeline
from stages.connectors import amqp
from tests.http_helpers import ndjson_file, wait_until
from tests.stages.connectors.brokers import Running, until
from tests.stages.connectors.helpers import Worker, data_of, run_until, write_config

aio_pika = pytest.importorskip("aio_pika")
pytestmark = pytest.mark.anyio
URL = amqp.URL


async def publish(
    queue: str, bodies: list[bytes], *, quorum: bool = False, dlx: str | None = None
) -> None:
    conn = await aio_pika.connect(URL)
    async with conn:
        ch = await conn.channel()
        args: dict[str, Any] = {"x-queue-type": "quorum"} if quorum else {}
        if dlx is not None:
            args["x-dead-letter-exchange"] = dlx
        await ch.declare_queue(queue, durable=True, arguments=args or None)
        for body in bodies:
            await ch.default_exchange.publish(aio_pika.Message(body), queue)


async def depth(queue: str) -> int:
    """Messages in ``queue``, ready or un-acked (from a passive declare after consumers left)."""
    conn = await aio_pika.connect(URL)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        return int(q.declaration_result.message_count)


async def consumers(queue: str) -> int:
    """Consumers of ``queue`` right now."""
    conn = await aio_pika.connect(URL)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        return int(q.declaration_result.consumer_count)


async def delete(queue: str) -> None:
    conn = await aio_pika.connect(URL)
    async with conn:
        ch = await conn.channel()
        await ch.queue_delete(queue)


@pytest.fixture
def queue(unique: str) -> Iterator[str]:
    """A queue name of this test only; deleted afterwards."""
    yield unique
    asyncio.run(delete(unique))


async def test_sink_then_source_reads_back_what_was_written(queue: str) -> None:
    """Envelopes published by the sink come back, acked, through the source."""

    async def numbers() -> AsyncIterator[dict[str, int]]:
        for i in range(50):
            yield {"n": i}

    await publish(queue, [])  # declare it
    sink = make_stage(amqp.write, "sink", params={"routing_key": queue})
    envs = await run_pipeline(numbers, [], [sink])
    assert envs[-1]["reason"] == "finished"

    got = await run_until(amqp.read, {"queue": queue}, lambda e: len(data_of(e)) >= 52)
    written = [orjson.loads(orjson.dumps(e)) for e in envs]
    assert data_of(got) == written
    assert got[-1]["reason"] == "shutdown"
    assert await depth(queue) == 0


async def test_receives_data_writes_only_data(queue: str) -> None:
    """`receives: data` publishes the data of processing envelopes, read back as chunks."""

    async def words() -> AsyncIterator[Any]:
        yield {"w": "a"}
        yield "b"
        yield [1, 2]

    await publish(queue, [])
    sink = make_stage(amqp.write, "sink", params={"routing_key": queue, "receives": "data"})
    await run_pipeline(words, [], [sink])
    got = await run_until(amqp.read, {"queue": queue}, lambda e: len(data_of(e)) >= 3)
    assert data_of(got) == [{"w": "a"}, "b", [1, 2]]


async def test_undecodable_message_is_a_chunk_error_then_acked(queue: str) -> None:
    """A body that is not JSON becomes a chunk_error; it is acked like the others."""
    await publish(queue, [b'{"ok": 1}', b"{not json", b'{"ok": 2}'])
    got = await run_until(
        amqp.read, {"queue": queue}, lambda e: len([x for x in e if x["status"] != "starting"]) >= 3
    )
    assert data_of(got) == [{"ok": 1}, {"ok": 2}]
    errors = [e for e in got if e["status"] == "chunk_error"]
    assert [(e["stage"], e["error"]["type"], e["chunk"]) for e in errors] == [
        ("source:test", "ValueError", "{not json")
    ]
    assert await depth(queue) == 0


async def test_messages_are_acked_only_after_the_sinks_accept(queue: str) -> None:
    """A sink that fails at the 3rd message leaves it and the rest in the queue."""
    await publish(queue, [orjson.dumps(i) for i in range(10)])

    def breaks(env: dict[str, Any]) -> None:
        if env["status"] == "processing" and env["data"] == 3:
            raise OSError("disk full")

    got = await run_until(
        amqp.read, {"queue": queue, "prefetch": 1}, lambda e: False, sinks=[breaks]
    )
    assert got[-1]["reason"] == "error"
    assert data_of(got)[:4] == [0, 1, 2, 3]
    assert await depth(queue) == 7


async def test_acks_go_out_in_order_many_per_frame(
    queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One held message holds back the acks after it; once accepted, one frame acks them all."""
    total = 30
    await publish(queue, [orjson.dumps(i) for i in range(total)])
    frames: list[tuple[int, bool]] = []
    plain_ack = aio_pika.IncomingMessage.ack

    async def counted(self: Any, multiple: bool = False) -> None:
        frames.append((self.delivery_tag, multiple))
        await plain_ack(self, multiple)

    monkeypatch.setattr(aio_pika.IncomingMessage, "ack", counted)
    held: list[Delivery] = []
    seen: list[int] = []

    @sink(stream=True, confirm=True, receives="data")
    async def hold_five(deliveries: AsyncIterator[Delivery]) -> None:
        async for d in deliveries:
            if d.item == 5:
                held.append(d)
            else:
                d.accept()
            seen.append(d.item)

    async with Running(amqp.read, {"queue": queue, "prefetch": 50}, [hold_five]) as run:
        await until(lambda: len(seen) == total and frames and frames[-1][0] == 5)
        assert max(tag for tag, _ in frames) == 5  # 0-4 acked; 6-29 wait behind 5
        before = len(frames)
        held[0].accept()
        await until(lambda: frames[-1][0] == total)
        assert frames[before:] == [(total, True)]  # the 25 that came due: one basic.ack
        assert all(multiple for _, multiple in frames)
        assert await run.stop() == "shutdown"
    assert await depth(queue) == 0  # the broker took every one of them as acknowledged


@pytest.mark.parametrize("reject_first", [False, True], ids=["ack", "reject"])
async def test_settling_on_a_closed_channel_fails_and_the_messages_stay_queued(
    queue: str, reject_first: bool
) -> None:
    """An ack (or a rejection, with the ack waiting behind it) that cannot go out raises
    for each message it covers; nothing is lost."""
    await publish(queue, [b"1", b"2"])
    conn = await aio_pika.connect(URL)
    async with conn:
        channel = await conn.channel()
        q = await channel.declare_queue(queue, passive=True)
        acks = amqp._Acks()
        tracked = []
        async with q.iterator() as messages:
            async for message in messages:
                tracked.append(acks.track(message, reject=reject_first and not tracked))
                if len(tracked) == 2:
                    break
        await channel.close()
        second = tracked[1]()  # waits behind the first
        first = tracked[0]()
        with pytest.raises(aio_pika.exceptions.ChannelInvalidStateError):
            await first
        with pytest.raises(aio_pika.exceptions.ChannelInvalidStateError):
            await second
    assert await depth(queue) == 2


async def test_max_deliveries_turns_a_poison_message_into_a_chunk_error(queue: str) -> None:
    """A message delivered too often is a MaxDeliveriesExceeded chunk_error, then acked."""
    await publish(queue, [b'"poison"'], quorum=True)
    conn = await aio_pika.connect(URL)
    async with conn:  # two deliveries that die without an ack
        for _ in range(2):
            ch = await conn.channel()
            q = await ch.declare_queue(queue, passive=True)
            msg = await q.get(no_ack=False, timeout=5)
            assert msg is not None
            await msg.nack(requeue=True)
            await ch.close()
    dead: list[dict[str, Any]] = []
    got = await run_until(
        amqp.read,
        {"queue": queue, "max_deliveries": 2},
        lambda e: any(x["status"] == "chunk_error" for x in e),
        dead_letter=lambda env: dead.append(env),
    )
    errors = [e for e in got if e["status"] == "chunk_error"]
    assert [(e["error"]["type"], e["chunk"]) for e in errors] == [
        ("MaxDeliveriesExceeded", '"poison"')
    ]
    assert errors[0]["error"]["message"] == "delivered 3 times (max_deliveries: 2)"
    assert dead == errors
    assert await depth(queue) == 0


async def _deliver_twice_unacked(queue: str) -> None:
    conn = await aio_pika.connect(URL)
    async with conn:  # two deliveries that die without an ack
        for _ in range(2):
            ch = await conn.channel()
            q = await ch.declare_queue(queue, passive=True)
            msg = await q.get(no_ack=False, timeout=5)
            assert msg is not None
            await msg.nack(requeue=True)
            await ch.close()


async def test_max_deliveries_with_a_dead_letter_exchange_rejects_it_there(queue: str) -> None:
    """With `dead_letter_exchange`, the poison message is rejected (RabbitMQ moves it to
    that exchange) after its chunk_error; the messages around it are acked as usual."""
    dlx, dead = f"{queue}-dlx", f"{queue}-dead"
    conn = await aio_pika.connect(URL)
    async with conn:
        ch = await conn.channel()
        exchange = await ch.declare_exchange(dlx, aio_pika.ExchangeType.FANOUT, auto_delete=True)
        bound = await ch.declare_queue(dead, durable=True)
        await bound.bind(exchange)
    try:
        await publish(queue, [b'"poison"'], quorum=True, dlx=dlx)
        await _deliver_twice_unacked(queue)
        await publish(queue, [b"1", b"2"], quorum=True, dlx=dlx)
        got = await run_until(
            amqp.read,
            {"queue": queue, "max_deliveries": 2, "dead_letter_exchange": dlx},
            lambda e: len([x for x in e if x["status"] in ("processing", "chunk_error")]) == 3,
            dead_letter=lambda env: None,
        )
        errors = [(e["error"]["type"], e["chunk"]) for e in got if e["status"] == "chunk_error"]
        assert errors == [("MaxDeliveriesExceeded", '"poison"')]
        assert sorted(data_of(got)) == [1, 2]
        assert await depth(queue) == 0
        conn = await aio_pika.connect(URL)
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue(dead, passive=True)
            msg = await q.get(no_ack=True, timeout=5)
            assert msg is not None and msg.body == b'"poison"'
            assert await q.get(no_ack=True, fail=False) is None
    finally:
        await delete(dead)


async def test_connection_failure_never_shows_the_password(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A refused connection is one clear error with the password masked."""
    url = "amqp://guest:hunter2secret@127.0.0.1:1/"
    envs = await run_until(amqp.read, {"url": url, "queue": "q"}, lambda e: False)
    error = next(e for e in envs if e["status"] == "error")
    assert error["error"]["message"].startswith(
        "cannot connect to RabbitMQ at `amqp://guest:***@127.0.0.1:1/`"
    )
    out, err = capfd.readouterr()
    assert "hunter2secret" not in out + err + repr(envs)


async def test_unroutable_publish_is_that_chunks_error() -> None:
    """A message no queue takes (mandatory publish returned) is a chunk_error."""

    async def one() -> AsyncIterator[int]:
        yield 1

    sink = make_stage(amqp.write, "sink", id="sinks[0]:amqp", params={"routing_key": "nowhere-x"})
    envs = await run_pipeline(one, [], [sink])
    errors = [e for e in envs if e["status"] == "chunk_error"]
    assert [(e["stage"], e["error"]["type"]) for e in errors] == [("sinks[0]:amqp", "PublishError")]
    assert envs[-1]["reason"] == "finished"


WORKER = """
pipelines:
  work:
    source:
      use: amqp
      with: {{queue: {queue}, prefetch: {prefetch}}}
    sinks:
      - use: tests.stages.connectors.gates:hold
        with: {{seen: {seen}, accept: {accept}}}
"""


def test_sigkill_loses_nothing_and_competing_workers_share(queue: str, tmp_path: Path) -> None:
    """Kill a worker holding un-acked messages: the others get everything; dups <= prefetch."""
    total, prefetch, early = 200, 10, 50
    asyncio.run(publish(queue, [orjson.dumps(i) for i in range(early)]))
    seen = {name: tmp_path / f"{name}.ndjson" for name in ("victim", "a", "b")}
    configs = {
        name: write_config(
            tmp_path / f"{name}.yaml",
            WORKER.format(
                queue=queue,
                prefetch=prefetch,
                seen=seen[name],
                accept=5 if name == "victim" else 10**9,
            ),
        )
        for name in seen
    }

    def read(name: str) -> list[int]:
        path = seen[name]
        return ndjson_file(path)

    with Worker(configs["victim"], "work", tmp_path / "victim.out") as victim:
        wait_until(lambda: len(read("victim")) == 6, timeout=60)  # 5 accepted, 1 held
        victim.kill()
    held = read("victim")[5:]
    with (
        Worker(configs["a"], "work", tmp_path / "a.out") as a,
        Worker(configs["b"], "work", tmp_path / "b.out") as b,
    ):
        wait_until(lambda: asyncio.run(consumers(queue)) == 2, timeout=60)
        asyncio.run(publish(queue, [orjson.dumps(i) for i in range(early, total)]))
        wait_until(lambda: len(set(read("a")) | set(read("b"))) >= total - 5, timeout=90)
        a.stop()
        b.stop()
    survivors = read("a") + read("b")
    everything = set(read("victim")[:5]) | set(survivors)
    assert everything == set(range(total))
    duplicates = len(read("victim")) + len(survivors) - total
    assert 1 <= duplicates <= prefetch
    assert set(held) <= set(survivors)
    assert read("a") and read("b")  # both competing consumers took a share
    assert asyncio.run(depth(queue)) == 0
