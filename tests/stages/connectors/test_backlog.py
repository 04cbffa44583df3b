"""Broker sources report their backlog: `pipeline_source_backlog` on a real /metrics."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.http_helpers import ServerProcess, wait_until
from tests.stages.connectors.brokers import unique

pytestmark = [pytest.mark.services, pytest.mark.slow]
REDIS = "redis://127.0.0.1:6379"
NATS = "nats://127.0.0.1:4222"
N = 500

HOLD = '''
import asyncio
import os


async def hold(chunk):
    """Holds every chunk until the test creates OPEN_FILE."""
    while not os.path.exists(os.environ["OPEN_FILE"]):
        await asyncio.sleep(0.05)
    return chunk
'''


def backlog(srv: ServerProcess) -> float | None:
    """The `pipeline_source_backlog` of pipeline `w`, or None while it is absent."""
    text = httpx.get(srv.url("/metrics")).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "pipeline_source_backlog" and s.labels.get("pipeline") == "w":
                return float(s.value)
    return None


def serve(tmp: Path, source: str, params: dict[str, Any]) -> ServerProcess:
    """`pipeline run --serve` of `w`: SOURCE (10 in flight) -> hold, released by a file."""
    (tmp / "holding.py").write_text(HOLD)
    text = f"""
    pipelines:
      w:
        source:
          use: {source}
          with: {orjson.dumps({**params, "batch": 10, "max_in_flight": 10}).decode()}
        transforms:
          - use: holding:hold
    """
    path = tmp / "pipelines.yaml"
    path.write_text(textwrap.dedent(text))
    return ServerProcess(path, env={"OPEN_FILE": str(tmp / "open")})


def drains_to_zero(tmp: Path, srv: ServerProcess) -> None:
    """Held: 10 delivered, N - 10 waiting; released: the backlog goes to 0."""
    wait_until(lambda: backlog(srv) == N - 10, timeout=30, every=0.2)
    (tmp / "open").touch()
    wait_until(lambda: backlog(srv) == 0, timeout=60, every=0.2)


@pytest.fixture
def stream_key() -> Iterator[str]:
    key = unique("backlog")
    yield key
    redis.Redis.from_url(REDIS).delete(key)


def test_redis_stream_reports_the_group_lag(tmp_path: Path, stream_key: str) -> None:
    """The `redis_stream` source reports the entries not yet delivered to its group."""
    client = redis.Redis.from_url(REDIS)
    for n in range(N):
        client.xadd(stream_key, {"data": orjson.dumps({"n": n})})
    with serve(tmp_path, "redis_stream", {"url": REDIS, "stream": stream_key}) as srv:
        drains_to_zero(tmp_path, srv)


def test_nats_reports_the_consumer_pending(tmp_path: Path) -> None:
    """The `nats` source reports the messages not yet delivered to its durable consumer."""
    stream = unique("BACKLOG").replace("-", "_")

    async def produce() -> None:
        nc = await nats.connect(NATS)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.in"])
        futures = [await js.publish_async(f"{stream}.in", orjson.dumps({"n": n})) for n in range(N)]
        await asyncio.gather(*futures)
        await nc.close()

    async def drop() -> None:
        nc = await nats.connect(NATS)
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(produce())
    try:
        params = {"url": NATS, "subject": f"{stream}.in", "stream": stream}
        with serve(tmp_path, "nats", params) as srv:
            drains_to_zero(tmp_path, srv)
    finally:
        asyncio.run(drop())
