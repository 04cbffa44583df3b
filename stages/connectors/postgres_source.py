"""The `postgres` source: a keyset query, woken by LISTEN, resuming from a checkpoint row.

Where the cursor is kept: in the same database, in the table ``pipeline_checkpoints``
(``name text primary key, value jsonb, updated_at timestamptz``), created if missing,
one row per ``checkpoint`` name. The value saved is the cursor of the last row whose
chunk every sink accepted, with every row before it accepted too; it is saved after each
query and when the source stops, so after a SIGKILL at most the rows accepted since the
last save are delivered again (never fewer: at-least-once).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import hashlib
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PositiveFloat, PositiveInt, ValidationInfo

from pipeline import Message
from stages.connectors._common import drain
from stages.connectors.postgres import _connect, _ident

__all__ = ["CHECKPOINTS", "read"]

CHECKPOINTS = "pipeline_checkpoints"


def _table_or_query(query: str | None, info: ValidationInfo) -> str | None:
    """Exactly one of ``table`` and ``query`` is given (checked by ``pipeline validate``)."""
    if (info.data.get("table") is None) == (query is None):
        msg = "give exactly one of `table` and `query`"
        raise ValueError(msg)
    return query


Query = Annotated[str | None, AfterValidator(_table_or_query), Field(validate_default=True)]
"""A keyset query with ``$1``; given instead of ``table``."""

_TYPES: dict[str, Any] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
}


def dump_cursor(value: Any) -> Any:
    """A cursor value as JSON that `load_cursor` turns back into the same type."""
    if isinstance(value, dt.datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, dt.date):
        return {"type": "date", "value": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, uuid.UUID):
        return {"type": "uuid", "value": str(value)}
    return {"type": "json", "value": value}


def load_cursor(saved: Any) -> Any:
    """The cursor value `dump_cursor` saved."""
    if not isinstance(saved, dict):
        return None
    convert = _TYPES.get(saved.get("type", ""))
    return convert(saved["value"]) if convert is not None else saved.get("value")


class _Progress:
    """Rows delivered in order; the checkpoint moves over the accepted prefix."""

    def __init__(self, saved: Any) -> None:
        self.rows: deque[list[Any]] = deque()  # [cursor, accepted]
        self.checkpoint = saved
        self.saved = saved
        self.idle = asyncio.Event()
        self.idle.set()

    def track(self, cursor: Any) -> Any:
        entry = [cursor, False]
        self.rows.append(entry)
        self.idle.clear()

        def ack() -> None:
            entry[1] = True
            while self.rows and self.rows[0][1]:
                self.checkpoint = self.rows.popleft()[0]
            if not self.rows:
                self.idle.set()

        return ack


async def read(
    *,
    dsn: str,
    cursor: str,
    table: str | None = None,
    query: Query = None,
    listen: str | None = None,
    interval: PositiveFloat = 1.0,
    batch: PositiveInt = 500,
    start: int | str | None = None,
    checkpoint: str | None = None,
) -> AsyncIterator[Message]:
    """Read new rows of a table in ``cursor`` order; resume after the last one accepted.

    A keyset query: ``SELECT * FROM table WHERE cursor > $1 ORDER BY cursor LIMIT
    batch`` (or your ``query``, with ``$1`` bound to the last cursor value, ``NULL`` on
    the very first run unless ``start`` is given). Each row becomes one chunk (a dict of
    its columns). After a query that returned less than a full batch, the source waits
    ``interval`` seconds, or less when ``listen`` names a channel and a ``NOTIFY`` on it
    arrives (for example from a trigger on the table). The ``cursor`` column must
    increase for new rows (a serial id, an insertion timestamp).

    Resuming, also across restarts: the last cursor value whose row every sink accepted
    (and every row before it) is saved in the table ``pipeline_checkpoints`` of the same
    database, under ``checkpoint`` (default: ``TABLE.CURSOR``, or a hash of the query),
    after each query and when the source stops. A restart delivers the rows after it;
    rows accepted since the last save are delivered again (at-least-once). Give two
    pipelines reading one table different ``checkpoint`` names.

    Args:
        dsn: ``postgresql://user:password@host:5432/db`` (the password is never printed).
        cursor: The column that orders the rows (and is saved to resume).
        table: The table to read (``schema.table`` allowed); or give ``query``.
        query: A query with ``$1`` = the last cursor value, ordered by ``cursor``.
        listen: A channel to ``LISTEN`` on: a ``NOTIFY`` wakes the source at once.
        interval: Seconds between two queries when there is nothing new.
        batch: Rows per query (``table`` only; a ``query`` has its own ``LIMIT``).
        start: The cursor value to begin after, when no checkpoint is saved yet.
        checkpoint: The name the cursor is saved under.

    Example:
        source:
          use: postgres
          with:
            dsn: postgresql://app@127.0.0.1/app
            table: orders
            cursor: id
            listen: orders_new
    """
    if query is None:
        col, name = _ident(cursor), _ident(str(table))
        first = f"SELECT * FROM {name} ORDER BY {col} LIMIT {batch}"
        after = f"SELECT * FROM {name} WHERE {col} > $1 ORDER BY {col} LIMIT {batch}"
        key = checkpoint or f"{table}.{cursor}"
    else:
        first = after = query
        key = checkpoint or "query." + hashlib.sha1(query.encode()).hexdigest()[:12]
    conn, progress = await _open(dsn, key, start)
    try:
        wake = asyncio.Event()
        if listen is not None:
            await conn.add_listener(listen, lambda *_: wake.set())
        last = progress.checkpoint
        while True:
            if last is None and query is None:
                rows = await conn.fetch(first)
            else:
                rows = await conn.fetch(after, last)
            for row in rows:
                last = row[cursor]
                yield Message(dict(row), ack=progress.track(last))
            await _save(conn, key, progress)
            if query is None and len(rows) >= batch:
                continue
            wake.clear()
            try:
                async with asyncio.timeout(interval):
                    await wake.wait()
            except TimeoutError:
                pass
    finally:
        await asyncio.shield(_finish(conn, key, progress))


async def _open(dsn: str, key: str, start: Any) -> tuple[Any, _Progress]:
    conn = await _connect(dsn)
    try:
        saved = await _load(conn, key)
    except BaseException:
        await conn.close()
        raise
    return conn, _Progress(saved if saved is not None else start)


async def _finish(conn: Any, key: str, progress: _Progress) -> None:
    """Wait (bounded) for the acks of delivered rows, save the checkpoint, close."""
    try:
        await drain(progress.idle, lambda: len(progress.rows))
        await _save(conn, key, progress)
    finally:
        await conn.close()


async def _load(conn: Any, key: str) -> Any:
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} "
        "(name text PRIMARY KEY, value jsonb, updated_at timestamptz NOT NULL DEFAULT now())"
    )
    saved = await conn.fetchval(f"SELECT value FROM {CHECKPOINTS} WHERE name = $1", key)
    return load_cursor(saved) if saved is not None else None


async def _save(conn: Any, key: str, progress: _Progress) -> None:
    if progress.checkpoint == progress.saved or progress.checkpoint is None:
        return
    value = progress.checkpoint
    await conn.execute(
        f"INSERT INTO {CHECKPOINTS} (name, value) VALUES ($1, $2) ON CONFLICT (name) "
        "DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        key,
        dump_cursor(value),
    )
    progress.saved = value
