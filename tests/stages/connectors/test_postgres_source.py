"""The `postgres` source against the real PostgreSQL on loopback: keyset, LISTEN, resume."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stages.connectors.postgres_source import CHECKPOINTS, dump_cursor, load_cursor, read
from tests.http_helpers import ndjson_file, wait_until
from tests.stages.connectors.conftest import PG_DSN
from tests.stages.connectors.helpers import Worker, data_of, run_until, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
async def events(pg: Any, unique: str) -> AsyncIterator[str]:
    """A table ``(id serial, v int)`` and a checkpoint name of this test only."""
    await pg.execute(f"CREATE TABLE {unique} (id serial PRIMARY KEY, v int NOT NULL)")
    try:
        yield unique
    finally:
        await pg.execute(f"DROP TABLE IF EXISTS {unique}")
        await pg.execute(f"DELETE FROM {CHECKPOINTS} WHERE name LIKE $1", f"{unique}%")


async def insert(pg: Any, table: str, values: range) -> None:
    await pg.executemany(f"INSERT INTO {table} (v) VALUES ($1)", [(v,) for v in values])


def params(table: str, **more: Any) -> dict[str, Any]:
    return {"dsn": PG_DSN, "table": table, "cursor": "id", "interval": 0.05, **more}


async def test_rows_in_cursor_order_then_resume_after_a_restart(pg: Any, events: str) -> None:
    """A second run starts after the last row the first one delivered; new rows follow."""
    await insert(pg, events, range(12))
    first = await run_until(read, params(events, batch=5), lambda e: len(data_of(e)) >= 12)
    assert [d["v"] for d in data_of(first)] == list(range(12))
    assert [d["id"] for d in data_of(first)] == list(range(1, 13))
    await insert(pg, events, range(100, 103))
    second = await run_until(read, params(events), lambda e: len(data_of(e)) >= 3)
    assert [d["v"] for d in data_of(second)] == [100, 101, 102]
    saved = await pg.fetchval(f"SELECT value FROM {CHECKPOINTS} WHERE name = $1", f"{events}.id")
    assert saved == '{"type": "json", "value": 15}'


async def test_rows_not_accepted_are_read_again(pg: Any, events: str) -> None:
    """A sink that fails at v=3: the next run starts at v=3, not after what was fetched."""
    await insert(pg, events, range(8))

    def breaks(env: dict[str, Any]) -> None:
        if env["status"] == "processing" and env["data"]["v"] == 3:
            raise OSError("disk full")

    first = await run_until(read, params(events), lambda e: False, sinks=[breaks])
    assert first[-1]["reason"] == "error"
    again = await run_until(read, params(events), lambda e: len(data_of(e)) >= 5)
    assert [d["v"] for d in data_of(again)] == [3, 4, 5, 6, 7]


async def test_listen_wakes_the_source_before_its_interval(pg: Any, events: str) -> None:
    """With `listen`, a NOTIFY brings a new row long before the (hour-long) interval."""
    channel = f"{events}_new"

    def done(envs: list[dict[str, Any]]) -> bool:
        return len(data_of(envs)) >= 1

    async def poke() -> None:
        await asyncio.sleep(0.3)  # after the source's first (empty) query
        await insert(pg, events, range(7, 8))
        await pg.execute(f"NOTIFY {channel}")

    task = asyncio.create_task(poke())
    got = await run_until(read, params(events, interval=3600, listen=channel), done, timeout=20)
    await task
    assert [d["v"] for d in data_of(got)] == [7]


async def test_query_with_start_and_its_own_checkpoint(pg: Any, events: str) -> None:
    """`query` binds `$1` to the last cursor; `start` begins after a given value."""
    await insert(pg, events, range(6))
    query = f"SELECT id, v * 10 AS v10 FROM {events} WHERE id > $1 ORDER BY id LIMIT 2"
    p = {"dsn": PG_DSN, "query": query, "cursor": "id", "start": 3, "checkpoint": f"{events}.q"}
    got = await run_until(read, {**p, "interval": 0.05}, lambda e: len(data_of(e)) >= 3)
    assert data_of(got) == [{"id": 4, "v10": 30}, {"id": 5, "v10": 40}, {"id": 6, "v10": 50}]


def test_cursor_values_keep_their_type() -> None:
    """Timestamps, dates and numbers saved as a checkpoint come back as the same type."""
    for value in (
        dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        dt.date(2026, 1, 2),
        17,
        "k-9",
    ):
        assert load_cursor(dump_cursor(value)) == value


WORKER = """
pipelines:
  tail:
    source:
      use: postgres
      with: {{dsn: "{dsn}", table: {table}, cursor: id, interval: 0.05, batch: 10}}
    sinks:
      - use: tests.stages.connectors.gates:hold
        with: {{seen: {seen}, accept: {accept}}}
"""


async def test_sigkill_then_restart_resumes_after_the_saved_cursor(
    pg: Any, events: str, tmp_path: Path
) -> None:
    """Killed holding rows: the restart reads from the last accepted row on, losing none."""
    await insert(pg, events, range(40))
    seen = {name: tmp_path / f"{name}.ndjson" for name in ("victim", "restart")}

    def config(name: str, accept: int) -> Path:
        text = WORKER.format(dsn=PG_DSN, table=events, seen=seen[name], accept=accept)
        return write_config(tmp_path / f"{name}.yaml", text)

    def values(name: str) -> list[int]:
        path = seen[name]
        return [x["v"] for x in ndjson_file(path)]

    async def saved() -> Any:
        return await pg.fetchval(f"SELECT value FROM {CHECKPOINTS} WHERE name = $1", f"{events}.id")

    with Worker(config("victim", 5), "tail", tmp_path / "victim.out") as victim:
        await asyncio.to_thread(wait_until, lambda: len(values("victim")) == 6, 60)
        deadline = asyncio.get_running_loop().time() + 30
        while await saved() != '{"type": "json", "value": 5}':  # saved on the next poll
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        victim.kill()
    with Worker(config("restart", 10**9), "tail", tmp_path / "restart.out") as restart:
        await asyncio.to_thread(wait_until, lambda: len(values("restart")) >= 35, 60)
        await asyncio.to_thread(restart.stop)
    assert values("restart") == list(range(5, 40))
    assert values("victim") == list(range(6))
