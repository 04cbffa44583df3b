"""The `postgres` sink against the real PostgreSQL on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from pipeline import Message
from pipeline.testing import make_stage, run_pipeline
from stages.connectors.postgres import write
from tests.stages.connectors.conftest import PG_DSN

pytestmark = pytest.mark.anyio

COLUMNS = {"id": "data.id", "body": "data", "n": "data.n"}


def sink_stage(table: str, **params: Any) -> Any:
    with_ = {"dsn": PG_DSN, "table": table, "columns": COLUMNS, **params}
    return make_stage(write, "sink", id="sinks[0]:postgres", params=with_)


async def rows(pg: Any, table: str) -> list[tuple[int, dict[str, Any], int | None]]:
    got = await pg.fetch(f"SELECT id, body, n FROM {table} ORDER BY id")
    return [(r["id"], orjson.loads(r["body"]), r["n"]) for r in got]


async def test_rows_are_committed_before_their_messages_are_acked(pg: Any, table: str) -> None:
    """Each ack runs after its row is visible to another connection (the batch committed)."""
    seen_at_ack: list[int] = []

    async def check(i: int) -> None:
        found = await pg.fetchval(f"SELECT count(*) FROM {table} WHERE id = $1", i)
        seen_at_ack.append(i if found == 1 else -i)

    async def broker() -> AsyncIterator[Message]:
        for i in range(1, 26):
            yield Message({"id": i, "n": i}, ack=lambda i=i: check(i))

    envs = await run_pipeline(broker, [], [sink_stage(table, batch=10, flush_interval=0.05)])
    assert envs[-1]["reason"] == "finished"
    assert sorted(seen_at_ack) == list(range(1, 26))
    assert [r[0] for r in await rows(pg, table)] == list(range(1, 26))
    assert (await rows(pg, table))[0] == (1, {"id": 1, "n": 1}, 1)


async def test_a_key_makes_redelivered_chunks_write_nothing_twice(pg: Any, table: str) -> None:
    """The same chunks twice (in one batch and in a second run) leave one row each."""

    async def twice() -> AsyncIterator[dict[str, int]]:
        for i in [1, 2, 3, 2, 1]:
            yield {"id": i, "n": i * 10}

    for _ in range(2):
        envs = await run_pipeline(twice, [], [sink_stage(table, key=["id"])])
        assert envs[-1]["stats"] == {**envs[-1]["stats"], "processed": 5, "chunk_errors": 0}
    assert [(r[0], r[2]) for r in await rows(pg, table)] == [(1, 10), (2, 20), (3, 30)]


async def test_a_row_violating_a_constraint_is_that_chunks_error_only(pg: Any, table: str) -> None:
    """One bad row: a chunk_error naming the sink; the rest of its batch is written."""
    acked: list[int] = []
    dead: list[dict[str, Any]] = []

    async def broker() -> AsyncIterator[Message]:
        for i in range(1, 7):
            yield Message({"id": i, "n": -1 if i == 4 else i}, ack=lambda i=i: acked.append(i))

    envs = await run_pipeline(
        broker, [], [sink_stage(table, batch=100)], dead_letter=lambda e: dead.append(e)
    )
    errors = [e for e in envs if e["status"] == "chunk_error"]
    assert [(e["stage"], e["error"]["type"], e["chunk"]) for e in errors] == [
        ("sinks[0]:postgres", "CheckViolationError", {"id": 4, "n": -1})
    ]
    assert dead == errors
    assert [r[0] for r in await rows(pg, table)] == [1, 2, 3, 5, 6]
    assert sorted(acked) == [1, 2, 3, 4, 5, 6]
    assert envs[-1]["status"] == "complete" and envs[-1]["stats"]["chunk_errors"] == 1


async def test_a_value_the_column_cannot_take_is_a_chunk_error(pg: Any, table: str) -> None:
    """A string for an int column and a missing NOT NULL body fail alone."""

    async def source() -> AsyncIterator[Any]:
        yield {"id": 1, "n": 1}
        yield {"id": "two", "n": 2}
        yield {"id": 3, "n": 3}

    envs = await run_pipeline(source, [], [sink_stage(table)])
    errors = [e for e in envs if e["status"] == "chunk_error"]
    assert [(e["stage"], e["chunk"]["id"]) for e in errors] == [("sinks[0]:postgres", "two")]
    assert [r[0] for r in await rows(pg, table)] == [1, 3]


async def test_a_missing_table_fails_the_run_and_acks_nothing(unique: str) -> None:
    """A statement error that is no row's fault fails the sink; nothing is acknowledged."""
    acked: list[int] = []

    async def broker() -> AsyncIterator[Message]:
        for i in range(3):
            yield Message({"id": i, "n": i}, ack=lambda i=i: acked.append(i))

    envs = await run_pipeline(broker, [], [sink_stage(unique)])
    assert [(e["status"], e["stage"], e["error"]["type"]) for e in envs if "error" in e] == [
        ("error", "sinks[0]:postgres", "UndefinedTableError")
    ]
    assert acked == []


async def test_the_password_of_the_dsn_is_never_shown(capfd: pytest.CaptureFixture[str]) -> None:
    """A connection failure names the DSN with `***` in place of the password."""
    dsn = "postgresql://app:hunter2secret@127.0.0.1:1/test"

    async def one() -> AsyncIterator[dict[str, int]]:
        yield {"id": 1}

    stage = make_stage(
        write, "sink", id="sinks[0]:postgres", params={"dsn": dsn, "table": "t", "columns": COLUMNS}
    )
    envs = await run_pipeline(one, [], [stage])
    error = next(e for e in envs if e["status"] == "error")
    assert error["error"]["message"].startswith(
        "cannot connect to PostgreSQL at `postgresql://app:***@127.0.0.1:1/test`: "
    )
    out, err = capfd.readouterr()
    assert "hunter2secret" not in out + err + repr(envs)


async def test_an_idle_stream_is_flushed_within_the_interval(pg: Any, table: str) -> None:
    """A batch that never fills is written after `flush_interval`, before more input."""
    gate = asyncio.Event()
    acked: list[int] = []

    def first() -> None:
        acked.append(1)
        gate.set()

    async def broker() -> AsyncIterator[Message]:
        yield Message({"id": 1, "n": 1}, ack=first)
        async with asyncio.timeout(10):
            await gate.wait()
        yield Message({"id": 2, "n": 2}, ack=lambda: acked.append(2))

    envs = await run_pipeline(broker, [], [sink_stage(table, batch=100, flush_interval=0.05)])
    assert envs[-1]["reason"] == "finished"
    assert acked == [1, 2]


def test_a_key_outside_columns_is_a_parameter_problem() -> None:
    """`key` naming a column not in `columns` fails validation, before any run."""
    from pipeline.errors import StageParamsError
    from pipeline.stage import validate_params

    with_ = {"dsn": PG_DSN, "table": "t", "columns": {"id": "data.id"}, "key": ["id", "at"]}
    with pytest.raises(StageParamsError) as caught:
        validate_params(write, with_, skip_first=True)
    assert caught.value.errors == [(("key",), "`at` not among `columns`")]
    assert validate_params(write, {**with_, "key": ["id"]}, skip_first=True)["key"] == ["id"]
