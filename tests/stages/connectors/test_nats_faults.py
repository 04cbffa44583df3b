"""`nats` workers as real processes: SIGKILL, SIGTERM, a refused start, a restart, auth.

Faults that touch the server (a restart, a password, a refused port) use a throwaway
``nats-server`` on a free port; the others use unique streams on the shared server.
"""

from __future__ import annotations

import asyncio
import signal
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from tests.http_helpers import wait_until
from tests.stages.connectors.brokers import NatsServer, Worker, unique
from tests.stages.connectors.test_redis_faults import GATE

pytestmark = [pytest.mark.services, pytest.mark.slow]
SHARED = "nats://127.0.0.1:4222"


def config(tmp: Path, url: str, stream: str, **source: Any) -> Path:
    """A worker config: nats STREAM.in -> gate -> nats STREAM.out (JetStream, data only)."""
    params = {"url": url, "subject": f"{stream}.in", "stream": stream, **source}
    out = {"url": url, "subject": f"{stream}.out", "jetstream": True, "receives": "data"}
    text = f"""
    pipelines:
      worker:
        source:
          use: nats
          with: {orjson.dumps(params).decode()}
        transforms:
          - use: gate:gate
        sinks:
          - use: nats
            with: {orjson.dumps(out).decode()}
    """
    (tmp / "gate.py").write_text(GATE)
    path = tmp / "pipelines.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def call(url: str, fn: Any) -> Any:
    """Run ``fn(js)`` on a fresh connection to ``url``."""

    async def go() -> Any:
        nc = await nats.connect(url)
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(go())


def make_stream(url: str, stream: str) -> None:
    async def go(js: Any) -> None:
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])

    call(url, go)


def widen(url: str, stream: str) -> None:
    async def go(js: Any) -> None:
        await js.update_stream(name=stream, subjects=[f"{stream}.>"])

    call(url, go)


def produce(url: str, stream: str, start: int, stop: int) -> None:
    async def go(js: Any) -> None:
        futures = [
            await js.publish_async(f"{stream}.in", orjson.dumps({"n": n}))
            for n in range(start, stop)
        ]
        await asyncio.gather(*futures)

    call(url, go)


def written(url: str, stream: str) -> list[int]:
    """Every ``n`` written to STREAM.out, read with a throwaway ordered consumer."""

    async def go(js: Any) -> list[int]:
        info = await js.stream_info(stream, subjects_filter=f"{stream}.out")
        total = (info.state.subjects or {}).get(f"{stream}.out", 0)
        if not total:
            return []
        sub = await js.subscribe(f"{stream}.out", ordered_consumer=True)
        out = []
        try:
            while len(out) < total:
                msg = await sub.next_msg(timeout=5)
                out.append(orjson.loads(msg.data)["n"])
        finally:
            await sub.unsubscribe()
        return out

    result: list[int] = call(url, go)
    return result


def consumer(url: str, stream: str) -> Any:
    async def go(js: Any) -> Any:
        return await js.consumer_info(stream, "pipeline")

    return call(url, go)


@pytest.fixture
def stream() -> Iterator[str]:
    name = unique("F").replace("-", "_")
    make_stream(SHARED, name)
    yield name

    async def drop(js: Any) -> None:
        await js.delete_stream(name)

    call(SHARED, drop)


def test_sigkill_loses_nothing_three_workers(tmp_path: Path, stream: str) -> None:
    """3 workers share 10,000 messages; one is killed holding un-acked ones; none is lost."""
    produce(SHARED, stream, 0, 10_000)
    cfg = config(tmp_path, SHARED, stream, batch=100, max_in_flight=200, ack_wait=5.0)
    gate_file = tmp_path / "held"
    victim = Worker(cfg, env={"HOLD_AFTER": "50", "GATE_FILE": str(gate_file)}).start()
    survivors: list[Worker] = []
    try:
        wait_until(gate_file.exists, timeout=30)
        held = consumer(SHARED, stream).num_ack_pending
        assert held > 0
        victim.signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        survivors = [Worker(cfg).start() for _ in range(2)]
        wait_until(lambda: len(set(written(SHARED, stream))) == 10_000, timeout=120, every=0.5)
        wait_until(lambda: consumer(SHARED, stream).num_ack_pending == 0, timeout=30)
        for w in survivors:
            w.signal(signal.SIGTERM)
        codes = [w.wait(30) for w in survivors]
        assert codes == [0, 0], "\n".join(w.log[-3000:] for w in survivors)
    finally:
        for w in [victim, *survivors]:
            w.stop()
    counts = Counter(written(SHARED, stream))
    assert set(counts) == set(range(10_000))
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= 200  # max_in_flight of the one killed worker


def test_sigterm_drains_and_leaves_nothing_unacked(tmp_path: Path, stream: str) -> None:
    """On SIGTERM a worker stops fetching, finishes and acks what it holds, exits 0."""
    produce(SHARED, stream, 0, 2000)
    cfg = config(tmp_path, SHARED, stream, batch=50, max_in_flight=100)
    worker = Worker(cfg, env={"DELAY": "0.002"}).start()
    try:
        wait_until(lambda: len(written(SHARED, stream)) >= 100, timeout=30, every=0.2)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.stop()
    got = written(SHARED, stream)
    assert 100 <= len(got) < 2000
    assert len(set(got)) == len(got)
    info = consumer(SHARED, stream)
    assert info.num_ack_pending == 0
    assert info.num_pending + info.num_redelivered + len(got) >= 2000  # the rest waits
    assert worker.envelopes()[-1]["reason"] == "shutdown"
    assert not worker.events("nats_disconnected")  # its own close is no warning


def test_refused_start_then_restart_lose_nothing(tmp_path: Path) -> None:
    """Server down at start: one line per attempt; then up, restarted: nothing lost."""
    server = NatsServer(tmp_path)
    cfg = config(tmp_path, server.url, "R", ack_wait=2.0)
    worker = Worker(cfg).start()
    try:
        wait_until(lambda: worker.events("nats_unavailable"), timeout=30)
        server.start()
        wait_until(lambda: worker.events("nats_stream_created"), timeout=30)
        widen(server.url, "R")  # the source made it for R.in; the sink writes R.out
        produce(server.url, "R", 0, 500)
        wait_until(lambda: len(set(written(server.url, "R"))) == 500, timeout=60, every=0.2)
        server.stop()
        server = NatsServer(tmp_path, port=server.port).start()  # same store
        produce(server.url, "R", 500, 1000)
        wait_until(lambda: len(set(written(server.url, "R"))) == 1000, timeout=60, every=0.2)
        wait_until(lambda: consumer(server.url, "R").num_ack_pending == 0, timeout=30)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.stop()
        server.stop()
    event = worker.events("nats_unavailable")[0]
    assert f"127.0.0.1:{server.port}" in worker.log or "Connect call failed" in event["error"]
    assert "Traceback" not in worker.log and "exception" not in event


def test_wrong_password_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    """A wrong password ends the run with one clear error; the password is never printed."""
    server = NatsServer(tmp_path, user="u", password="right-pw-123").start()
    url = f"nats://u:wrong-pw-456@127.0.0.1:{server.port}"
    cfg = config(tmp_path, url, "P")
    try:
        worker = Worker(cfg).start()
        assert worker.wait(60) == 1
    finally:
        server.stop()
    error = next(e for e in worker.envelopes() if e["status"] == "error")
    assert error["error"]["type"] == "AuthenticationFailed"
    assert f"nats://u:***@127.0.0.1:{server.port}" in error["error"]["message"]
    assert "wrong-pw-456" not in worker.log + worker.stdout_path.read_text()
