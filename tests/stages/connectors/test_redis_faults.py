"""`redis_stream` workers as real processes: SIGKILL, SIGTERM, lost connections, restarts.

Faults that touch the server (CLIENT KILL, a restart, a password) use a throwaway
``redis-server`` on a free port; the others use unique keys on the shared Redis.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.http_helpers import wait_until
from tests.stages.connectors.brokers import ROOT, RedisServer, Worker, unique

pytestmark = [pytest.mark.services, pytest.mark.slow]
SHARED = "redis://127.0.0.1:6379"

GATE = '''
"""A transform that blocks for good after HOLD_AFTER chunks (and says so in a file)."""
import asyncio
import os
from pathlib import Path

seen = 0


async def gate(chunk):
    global seen
    seen += 1
    hold = int(os.environ.get("HOLD_AFTER", "0"))
    if hold and seen > hold:
        Path(os.environ["GATE_FILE"]).touch()
        await asyncio.Event().wait()
    delay = float(os.environ.get("DELAY", "0"))
    if delay:
        await asyncio.sleep(delay)
    return chunk
'''


def config(tmp: Path, url: str, src: str, out: str, **source: Any) -> Path:
    """A worker config: redis_stream -> gate -> redis_stream (data only)."""
    params = {"url": url, "stream": src, "group": "g", **source}
    text = f"""
    pipelines:
      worker:
        source:
          use: redis_stream
          with: {orjson.dumps(params).decode()}
        transforms:
          - use: gate:gate
        sinks:
          - use: redis_stream
            with: {orjson.dumps({"url": url, "stream": out, "receives": "data"}).decode()}
    """
    (tmp / "gate.py").write_text(GATE)
    path = tmp / "pipelines.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[redis.Redis, str, str]]:
    """A client of the shared Redis and two unique stream keys, deleted afterwards."""
    client = redis.Redis.from_url(SHARED)
    src, out = unique("faults-in"), unique("faults-out")
    yield client, src, out
    client.delete(src, out)
    client.close()


def produce(client: redis.Redis, stream: str, start: int, stop: int) -> None:
    pipe = client.pipeline(transaction=False)
    for n in range(start, stop):
        pipe.xadd(stream, {"data": orjson.dumps({"n": n})})
    pipe.execute()


def written(client: redis.Redis, stream: str) -> list[int]:
    return [orjson.loads(f[b"data"])["n"] for _, f in client.xrange(stream)]


def pending(client: redis.Redis, stream: str) -> int:
    try:
        return int(client.xpending(stream, "g")["pending"])
    except redis.ResponseError:
        return -1


def test_sigkill_loses_nothing_three_workers(
    tmp_path: Path, shared: tuple[redis.Redis, str, str]
) -> None:
    """3 workers share 10,000 entries; one is killed holding un-acked ones; none is lost."""
    client, src, out = shared
    produce(client, src, 0, 10_000)
    cfg = config(tmp_path, SHARED, src, out, batch=100, max_in_flight=200, claim_idle=3.0)
    gate_file = tmp_path / "held"
    victim = Worker(cfg, env={"HOLD_AFTER": "50", "GATE_FILE": str(gate_file)}).start()
    survivors: list[Worker] = []
    try:
        wait_until(gate_file.exists, timeout=30)  # it holds what it read after the 50th
        victim_name = _busiest_consumer(client, src)
        held = _pending_of(client, src, victim_name)
        assert held > 0
        victim.signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        survivors = [Worker(cfg).start() for _ in range(2)]
        wait_until(lambda: len(set(written(client, out))) == 10_000, timeout=90)
        wait_until(lambda: pending(client, src) == 0, timeout=30)
        for w in survivors:
            w.signal(signal.SIGTERM)
        assert [w.wait(30) for w in survivors] == [0, 0]
    finally:
        for w in [victim, *survivors]:
            w.stop()
    counts = Counter(written(client, out))
    assert set(counts) == set(range(10_000))  # every entry at least once
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= 200  # max_in_flight of the one killed worker
    claimed = sum(e["count"] for w in survivors for e in w.events("redis_claimed"))
    assert claimed >= 1  # the victim's un-acked entries came back through XAUTOCLAIM


def _busiest_consumer(client: redis.Redis, stream: str) -> str:
    consumers = client.xinfo_consumers(stream, "g")
    return str(max(consumers, key=lambda c: c["pending"])["name"].decode())


def _pending_of(client: redis.Redis, stream: str, consumer: str) -> int:
    for c in client.xinfo_consumers(stream, "g"):
        if c["name"].decode() == consumer:
            return int(c["pending"])
    return 0


def test_sigterm_drains_acks_and_leaves_nothing_pending(
    tmp_path: Path, shared: tuple[redis.Redis, str, str]
) -> None:
    """On SIGTERM a worker stops reading, finishes and acks what it holds, exits 0."""
    client, src, out = shared
    produce(client, src, 0, 2000)
    cfg = config(tmp_path, SHARED, src, out, batch=50, max_in_flight=100)
    worker = Worker(cfg, env={"DELAY": "0.002"}).start()
    try:
        wait_until(lambda: client.xlen(out) >= 100, timeout=30)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.stop()
    got = written(client, out)
    assert 100 <= len(got) < 2000  # it stopped reading before the end
    assert len(set(got)) == len(got)
    assert pending(client, src) == 0
    assert client.xinfo_consumers(src, "g") == []  # its generated name is gone
    groups = client.xinfo_groups(src)
    assert groups[0]["entries-read"] == len(got)  # read = written: nothing read and dropped
    envelopes = worker.envelopes()
    assert envelopes[-1]["status"] == "complete"
    assert envelopes[-1]["reason"] == "shutdown"


def test_connection_refused_at_start_logs_one_line_and_retries(tmp_path: Path) -> None:
    """With Redis down the worker logs one clear line per attempt, then works once it is up."""
    server = RedisServer(tmp_path)  # its port is chosen, nothing listens on it yet
    cfg = config(tmp_path, server.url, "in", "out")
    worker = Worker(cfg).start()
    try:
        wait_until(lambda: worker.events("redis_unavailable"), timeout=30)
        server.start()
        client = redis.Redis.from_url(server.url)
        produce(client, "in", 0, 10)
        wait_until(lambda: sorted(written(client, "out")) == list(range(10)), timeout=30)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        client.close()
    finally:
        worker.stop()
        server.stop()
    event = worker.events("redis_unavailable")[0]
    assert f"127.0.0.1:{server.port}" in event["error"]
    assert "Error 111 connecting to" in event["error"]  # ECONNREFUSED
    assert "Traceback" not in worker.log and "exception" not in event


def test_client_kill_and_restart_lose_nothing(tmp_path: Path) -> None:
    """CLIENT KILL mid-stream, then a broker restart: the worker reconnects; nothing lost."""
    server = RedisServer(tmp_path).start()
    cfg = config(tmp_path, server.url, "in", "out", batch=50, max_in_flight=100)
    worker = Worker(cfg, env={"DELAY": "0.001"}).start()
    client = redis.Redis.from_url(server.url)
    try:
        produce(client, "in", 0, 1000)
        wait_until(lambda: client.xlen("out") >= 200, timeout=30)
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1
        produce(client, "in", 1000, 1500)
        wait_until(lambda: len(set(written(client, "out"))) == 1500, timeout=60)
        server.stop()
        server = RedisServer(tmp_path, port=server.port).start()  # same port, same data
        client = redis.Redis.from_url(server.url)
        produce(client, "in", 1500, 2000)
        wait_until(lambda: len(set(written(client, "out"))) == 2000, timeout=60)
        wait_until(lambda: pending(client, "in") == 0, timeout=30)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.stop()
        client.close()
        server.stop()
    assert worker.events("redis_unavailable")  # the restart was seen and survived


def test_wrong_password_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    """A wrong password ends the run with one clear error; the password is never printed."""
    server = RedisServer(tmp_path, password="right-pw-123").start()
    url = f"redis://:wrong-pw-456@127.0.0.1:{server.port}"
    cfg = config(tmp_path, url, "in", "out")
    try:
        worker = Worker(cfg).start()
        assert worker.wait(60) == 1
        listed = subprocess.run(
            [sys.executable, "-m", "pipeline", "list", "-c", str(cfg)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop()
    error = next(e for e in worker.envelopes() if e["status"] == "error")
    assert error["error"]["type"] == "AuthenticationFailed"
    assert error["error"]["message"].startswith(
        f"Redis at `redis://:***@127.0.0.1:{server.port}` refused the credentials"
    )
    everything = worker.log + worker.stdout_path.read_text() + listed.stdout + listed.stderr
    assert "wrong-pw-456" not in everything
    assert f"redis://:***@127.0.0.1:{server.port}" in listed.stdout


def test_sink_without_script_rights_falls_back_to_pipelined_xadd(tmp_path: Path) -> None:
    """A user whose ACL refuses scripts still gets every entry written, in order (logged once)."""
    server = RedisServer(tmp_path).start()
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser(
        "worker",
        enabled=True,
        passwords=["+worker-pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-@scripting"],
    )
    url = f"redis://worker:worker-pw@127.0.0.1:{server.port}"
    worker = Worker(config(tmp_path, url, "in", "out", batch=50)).start()
    try:
        produce(admin, "in", 0, 300)
        wait_until(lambda: admin.xlen("out") >= 300, timeout=60)
        wait_until(lambda: pending(admin, "in") == 0, timeout=30)
        got = written(admin, "out")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.stop()
        admin.close()
        server.stop()
    assert got == list(range(300))
    refused = worker.events("redis_script_refused")
    assert len(refused) == 1
    assert "worker-pw" not in worker.log
