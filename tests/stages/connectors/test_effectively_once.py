"""Effectively-once end to end: a broker source, a `postgres` sink with `key`, a SIGKILL.

The victim holds messages it never acknowledged while the `postgres` sink already
committed their rows (the gate sink keeps them from being accepted). After a SIGKILL the
broker hands them to a survivor, which writes them again: the upsert stores each once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis

from tests.http_helpers import wait_until
from tests.stages.connectors.conftest import PG_DSN
from tests.stages.connectors.helpers import Worker, write_config
from tests.stages.connectors.test_amqp import delete, depth, publish

asyncpg = pytest.importorskip("asyncpg")

pytestmark = [pytest.mark.services, pytest.mark.slow]

TOTAL = 120
REDIS = "redis://127.0.0.1:6379"
CONFIG = """
pipelines:
  load:
    source: {source}
    sinks:
      - use: postgres
        with:
          dsn: {dsn}
          table: {table}
          columns: {{id: data.id, body: data}}
          key: [id]
          batch: 50
          flush_interval: 0.05
{gate}
"""
GATE = """\
      - use: tests.stages.connectors.gates:hold
        with: {{seen: {seen}, accept: 10}}
"""


async def _sql(query: str) -> list[tuple[int, int]]:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return [tuple(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()


def _count(query: str) -> int:
    return asyncio.run(_sql(query))[0][0]


@pytest.fixture
def pg_table(unique: str) -> Iterator[str]:
    """A fresh ``(id int primary key, body jsonb)`` table, dropped afterwards."""
    asyncio.run(_sql(f"CREATE TABLE {unique} (id int PRIMARY KEY, body jsonb NOT NULL)"))
    yield unique
    asyncio.run(_sql(f"DROP TABLE IF EXISTS {unique}"))


def _kill_and_recover(
    tmp_path: Path, source: str, table: str, drained: Callable[[], bool]
) -> tuple[int, list[dict[str, object]]]:
    """SIGKILL a victim holding un-acked, committed rows; let a survivor finish the work.

    Returns the rows committed when the victim died and the survivor's envelopes.
    """
    seen = tmp_path / "victim.seen"
    fill = {"source": source, "dsn": PG_DSN, "table": table}
    victim_cfg = write_config(
        tmp_path / "victim.yaml", CONFIG.format(**fill, gate=GATE.format(seen=seen))
    )
    with Worker(victim_cfg, "load", tmp_path / "victim.out") as victim:
        # 10 accepted by the gate, the 11th held; postgres has committed more than that
        wait_until(lambda: seen.exists() and len(seen.read_bytes().splitlines()) == 11, 60)
        wait_until(lambda: _count(f"SELECT count(*) FROM {table}") > 11, 30)
        victim.kill()
    committed = _count(f"SELECT count(*) FROM {table}")
    survivor_cfg = write_config(tmp_path / "survivor.yaml", CONFIG.format(**fill, gate=""))
    with Worker(survivor_cfg, "load", tmp_path / "survivor.out") as survivor:
        wait_until(drained, 60)  # every message delivered and acknowledged
        wait_until(lambda: _count(f"SELECT count(DISTINCT id) FROM {table}") == TOTAL, 60)
        survivor.stop()
        return committed, survivor.envelopes()


def _assert_once(table: str, committed: int, envs: list[dict[str, object]], cap: int) -> None:
    """Every id stored exactly once, though the survivor wrote some of them again."""
    rows = asyncio.run(_sql(f"SELECT count(*), count(DISTINCT id) FROM {table}"))
    assert rows == [(TOTAL, TOTAL)]
    ids = [r[0] for r in asyncio.run(_sql(f"SELECT id, 0 FROM {table} ORDER BY id"))]
    assert ids == list(range(TOTAL))
    written = [e for e in envs if e["status"] == "processing"]
    redelivered = len(written) - (TOTAL - committed)
    assert 1 <= redelivered <= cap  # written twice, stored once
    assert [e for e in envs if e["status"] in ("chunk_error", "error")] == []


def test_amqp_to_postgres_with_key_writes_each_row_once_across_a_sigkill(
    unique: str, pg_table: str, tmp_path: Path
) -> None:
    """RabbitMQ redelivers what the victim held (bounded by prefetch); no row twice."""
    queue = unique
    try:
        asyncio.run(publish(queue, [orjson.dumps({"id": i}) for i in range(TOTAL)]))
        source = f"{{use: amqp, with: {{queue: {queue}, prefetch: 20}}}}"
        committed, envs = _kill_and_recover(
            tmp_path, source, pg_table, lambda: asyncio.run(depth(queue)) == 0
        )
        _assert_once(pg_table, committed, envs, cap=20 + 1)
    finally:
        asyncio.run(delete(queue))


def test_redis_stream_to_postgres_with_key_writes_each_row_once_across_a_sigkill(
    unique: str, pg_table: str, tmp_path: Path
) -> None:
    """A survivor claims (XAUTOCLAIM) what the killed victim held; no row twice, none lost."""
    stream, group = f"eo-{unique}", "load"
    client = redis.Redis.from_url(REDIS)
    try:
        last = b""
        for i in range(TOTAL):
            last = client.xadd(stream, {"data": orjson.dumps({"id": i})})
        params = {"url": REDIS, "stream": stream, "group": group, "claim_idle": 1.0, "batch": 50}
        source = f"{{use: redis_stream, with: {orjson.dumps(params).decode()}}}"

        def drained() -> bool:
            info = client.xinfo_groups(stream)[0]
            return bool(info["pending"] == 0 and info["last-delivered-id"] == last)

        committed, envs = _kill_and_recover(tmp_path, source, pg_table, drained)
        _assert_once(pg_table, committed, envs, cap=TOTAL)
        # the victim's un-acked entries were delivered a second time (to the survivor)
        assert client.xinfo_groups(stream)[0]["pending"] == 0
        claimed = [e for e in envs if e["status"] == "processing"]
        assert len(claimed) > TOTAL - committed
    finally:
        client.delete(stream)
        client.close()
