"""Effectively-once end to end: a broker source, a `postgres` sink with `key`, a SIGKILL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.http_helpers import wait_until
from tests.stages.connectors.conftest import PG_DSN
from tests.stages.connectors.helpers import Worker, write_config
from tests.stages.connectors.test_amqp import delete, depth, publish

asyncpg = pytest.importorskip("asyncpg")

CONFIG = """
pipelines:
  load:
    source:
      use: amqp
      with: {{queue: {queue}, prefetch: 20}}
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


def test_amqp_to_postgres_with_key_writes_each_row_once_across_a_sigkill(
    unique: str, tmp_path: Path
) -> None:
    """The victim committed rows it never acked; the survivor rewrites them: no duplicates."""
    total = 120
    table, queue = unique, unique
    asyncio.run(_sql(f"CREATE TABLE {table} (id int PRIMARY KEY, body jsonb NOT NULL)"))
    try:
        asyncio.run(publish(queue, [orjson.dumps({"id": i}) for i in range(total)]))
        seen = tmp_path / "victim.seen"
        victim_cfg = write_config(
            tmp_path / "victim.yaml",
            CONFIG.format(queue=queue, dsn=PG_DSN, table=table, gate=GATE.format(seen=seen)),
        )
        with Worker(victim_cfg, "load", tmp_path / "victim.out") as victim:
            # 10 accepted by the gate, the 11th held; postgres has committed more than that
            wait_until(lambda: seen.exists() and len(seen.read_bytes().splitlines()) == 11, 60)
            wait_until(lambda: asyncio.run(_sql(f"SELECT count(*) FROM {table}"))[0][0] > 11, 30)
            victim.kill()
        committed = asyncio.run(_sql(f"SELECT count(*) FROM {table}"))[0][0]
        survivor_cfg = write_config(
            tmp_path / "survivor.yaml", CONFIG.format(queue=queue, dsn=PG_DSN, table=table, gate="")
        )
        with Worker(survivor_cfg, "load", tmp_path / "survivor.out") as survivor:
            wait_until(lambda: asyncio.run(depth(queue)) == 0, 60)  # all delivered
            written = f"SELECT count(DISTINCT id) FROM {table}"
            wait_until(lambda: asyncio.run(_sql(written))[0][0] == total, 60)  # and committed
            survivor.stop()
            envs = survivor.envelopes()
        rows = asyncio.run(_sql(f"SELECT count(*), count(DISTINCT id) FROM {table}"))
        assert rows == [(total, total)]
        redelivered = sum(1 for e in envs if e["status"] == "processing") - (total - committed)
        assert 1 <= redelivered <= 20 + 1  # written twice, stored once; bounded by prefetch
        assert [e for e in envs if e["status"] in ("chunk_error", "error")] == []
    finally:
        asyncio.run(_sql(f"DROP TABLE IF EXISTS {table}"))
        asyncio.run(delete(queue))
