"""The `mqtt` source and sink against the real Mosquitto on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.testing import make_stage, run_pipeline
from stages.connectors import mqtt
from tests.http_helpers import ndjson_file, wait_until
from tests.stages.connectors.helpers import Worker, data_of, run_until, write_config

aiomqtt = pytest.importorskip("aiomqtt")
pytestmark = pytest.mark.anyio


async def publish(topic: str, bodies: list[bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        for body in bodies:
            await client.publish(topic, body, qos=1)


async def open_session(topic: str, client_id: str) -> None:
    """Subscribe once with a persistent session, so the broker keeps what comes next."""
    async with aiomqtt.Client(
        "127.0.0.1", 1883, identifier=client_id, clean_session=False
    ) as client:
        await client.subscribe(topic, qos=1)


async def test_persistent_session_gets_what_the_sink_wrote_meanwhile(unique: str) -> None:
    """The sink publishes while the source is away; the source's session delivers it all."""
    topic, cid = f"{unique}/out", f"{unique}-reader"
    await open_session(topic, cid)

    async def numbers() -> AsyncIterator[dict[str, int]]:
        for i in range(30):
            yield {"n": i}

    sink = make_stage(mqtt.write, "sink", params={"topic": topic})
    written = await run_pipeline(numbers, [], [sink])
    assert written[-1]["reason"] == "finished"
    got = await run_until(
        mqtt.read, {"topic": topic, "client_id": cid}, lambda e: len(data_of(e)) >= 32
    )
    assert data_of(got) == [orjson.loads(orjson.dumps(e)) for e in written]


async def test_wildcards_and_receives_data(unique: str) -> None:
    """`+` matches one level; `receives: data` publishes only the data."""
    cid = f"{unique}-reader"
    await open_session(f"{unique}/+/t", cid)
    for part, value in (("a", 1), ("b", 2), ("c", 3)):

        async def one(value: int = value) -> AsyncIterator[dict[str, int]]:
            yield {"v": value}

        topic = f"{unique}/{part}/{'t' if part != 'c' else 'other'}"
        sink = make_stage(mqtt.write, "sink", params={"topic": topic, "receives": "data"})
        await run_pipeline(one, [], [sink])
    got = await run_until(
        mqtt.read, {"topic": f"{unique}/+/t", "client_id": cid}, lambda e: len(data_of(e)) >= 2
    )
    await asyncio.sleep(0.2)  # a third message, if wrongly delivered, would show up here
    assert data_of(got) == [{"v": 1}, {"v": 2}]


async def test_unaccepted_messages_are_delivered_again_after_a_failure(unique: str) -> None:
    """A sink that fails at the 4th message: the next session gets the 4th on, not before."""
    topic, cid = f"{unique}/in", f"{unique}-reader"
    await open_session(topic, cid)
    await publish(topic, [orjson.dumps(i) for i in range(10)])

    def breaks(env: dict[str, Any]) -> None:
        if env["status"] == "processing" and env["data"] == 3:
            raise OSError("disk full")

    first = await run_until(
        mqtt.read, {"topic": topic, "client_id": cid}, lambda e: False, sinks=[breaks]
    )
    assert first[-1]["reason"] == "error"
    again = await run_until(
        mqtt.read, {"topic": topic, "client_id": cid}, lambda e: len(data_of(e)) >= 7
    )
    assert sorted(data_of(again)) == list(range(3, 10))


async def test_undecodable_payload_is_a_chunk_error(unique: str) -> None:
    """A payload that is not JSON is a chunk_error; the next message still flows."""
    topic, cid = f"{unique}/in", f"{unique}-reader"
    await open_session(topic, cid)
    await publish(topic, [b"{oops", b"[1]"])
    got = await run_until(
        mqtt.read, {"topic": topic, "client_id": cid}, lambda e: len(data_of(e)) >= 1
    )
    assert [(e["error"]["type"], e["chunk"]) for e in got if e["status"] == "chunk_error"] == [
        ("ValueError", "{oops")
    ]
    assert data_of(got) == [[1]]


async def test_connection_failure_never_shows_the_password(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A refused connection is one clear error with the password masked."""
    url = "mqtt://user:hunter2secret@127.0.0.1:1"
    envs = await run_until(mqtt.read, {"url": url, "topic": "t"}, lambda e: False)
    error = next(e for e in envs if e["status"] == "error")
    assert error["error"]["message"].startswith(
        "cannot connect to the MQTT broker at `mqtt://user:***@127.0.0.1:1`"
    )
    out, err = capfd.readouterr()
    assert "hunter2secret" not in out + err + repr(envs)


WORKER = """
pipelines:
  work:
    source:
      use: mqtt
      with: {{topic: "{topic}", client_id: {cid}}}
    sinks:
      - use: tests.stages.connectors.gates:hold
        with: {{seen: {seen}, accept: {accept}}}
"""


def test_sigkill_then_restart_with_the_same_client_id_loses_nothing(
    unique: str, tmp_path: Path
) -> None:
    """A worker killed holding un-PUBACKed messages: its restart gets them all again."""
    total = 100
    topic, cid = f"{unique}/in", f"{unique}-worker"
    asyncio.run(open_session(topic, cid))
    asyncio.run(publish(topic, [orjson.dumps(i) for i in range(total)]))
    seen = {name: tmp_path / f"{name}.ndjson" for name in ("victim", "restart")}

    def config(name: str, accept: int) -> Path:
        text = WORKER.format(topic=topic, cid=cid, seen=seen[name], accept=accept)
        return write_config(tmp_path / f"{name}.yaml", text)

    def read(name: str) -> list[int]:
        path = seen[name]
        return ndjson_file(path)

    with Worker(config("victim", 5), "work", tmp_path / "victim.out") as victim:
        wait_until(lambda: len(read("victim")) == 6, timeout=60)
        victim.kill()
    with Worker(config("restart", 10**9), "work", tmp_path / "restart.out") as restart:
        wait_until(lambda: set(read("restart")) >= set(range(5, total)), timeout=90)
        restart.stop()
    assert set(read("victim")[:5]) | set(read("restart")) == set(range(total))
    duplicates = len(read("victim")) + len(read("restart")) - total
    assert 1 <= duplicates <= 21  # the held one, plus at most Mosquitto's in-flight window


def test_sigterm_pubacks_what_it_took_before_leaving(unique: str, tmp_path: Path) -> None:
    """SIGTERM: the worker acks what it handed on; its next session gets only new messages."""
    topic, cid = f"{unique}/in", f"{unique}-worker"
    asyncio.run(open_session(topic, cid))
    asyncio.run(publish(topic, [orjson.dumps(i) for i in range(30)]))
    seen = {name: tmp_path / f"{name}.ndjson" for name in ("first", "second")}

    def read(name: str) -> list[int]:
        path = seen[name]
        return ndjson_file(path)

    def config(name: str) -> Path:
        text = WORKER.format(topic=topic, cid=cid, seen=seen[name], accept=10**9)
        return write_config(tmp_path / f"{name}.yaml", text)

    with Worker(config("first"), "work", tmp_path / "first.out") as first:
        wait_until(lambda: len(read("first")) == 30, timeout=60)
        first.stop()
    asyncio.run(publish(topic, [b"-1"]))
    with Worker(config("second"), "work", tmp_path / "second.out") as second:
        wait_until(lambda: read("second"), timeout=60)
        second.stop()
    assert read("first") == list(range(30))
    assert read("second") == [-1]
