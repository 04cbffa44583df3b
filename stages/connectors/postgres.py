"""PostgreSQL connector (asyncpg): a batched, idempotent sink and a resuming keyset source.

Install with ``pip install 'ndjson-pipeline[postgres]'``. The password of a ``dsn`` is
never printed: logs and errors show the DSN with ``***`` in its place. The source lives
in `stages.connectors.postgres_source` (its checkpoint table and cursor codec).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, Field, PositiveFloat, PositiveInt, ValidationInfo

from pipeline import Delivery, sink
from stages.connectors._common import batched, mask_url, missing_extra

try:
    import asyncpg
except ImportError:  # pragma: no cover - exercised by the missing-extra test in a subprocess
    raise ImportError(missing_extra("postgres", "postgres")) from None

__all__ = ["write"]


def _among_columns(key: list[str], info: ValidationInfo) -> list[str]:
    """``key`` names only columns of ``columns`` (checked by ``pipeline validate``)."""
    columns = info.data.get("columns")
    missing = [k for k in key if columns is not None and k not in columns]
    if missing or not key:
        names = ", ".join(f"`{k}`" for k in missing)
        msg = f"{names} not among `columns`" if missing else "must name at least one column"
        raise ValueError(msg)
    return key


Columns = Annotated[dict[str, str], Field(min_length=1)]
"""Column -> dotted path into the envelope; one column at least."""
KeyColumns = Annotated[list[str], AfterValidator(_among_columns)]
"""Columns of a unique constraint, each one among ``columns``."""

_ROW_ERRORS = ("22", "23")
"""SQLSTATE classes of one row's fault (data exception, integrity constraint violation)."""


def _ident(name: str) -> str:
    """Quote a (possibly schema-qualified) identifier: ``a.b`` -> ``"a"."b"``."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def _getter(path: str) -> tuple[str, ...]:
    return tuple(path.split(".")) if path else ()


def _dig(envelope: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in the envelope; None (SQL NULL) when a key is missing."""
    value: Any = envelope
    for key in path:
        if isinstance(value, Mapping):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def _is_row_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the fault of the rows written, not of the connection or SQL."""
    if isinstance(exc, asyncpg.DataError):  # client side: a value asyncpg cannot encode
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and state[:2] in _ROW_ERRORS


async def _connect(dsn: str) -> Any:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        msg = f"cannot connect to PostgreSQL at `{mask_url(dsn)}`: {type(exc).__name__}: {exc}"
        raise ConnectionError(msg) from None
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind, schema="pg_catalog", encoder=_dumps, decoder=orjson.loads, format="text"
        )
    return conn


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class _Writer:
    """Builds and runs the statement of one batch: ``INSERT ... VALUES (...), (...)``."""

    def __init__(self, table: str, columns: Mapping[str, str], key: Sequence[str]) -> None:
        self.names = list(columns)
        self.paths = [_getter(p) for p in columns.values()]
        self.key = list(key)
        self.key_at = [self.names.index(k) for k in self.key]
        head = f"INSERT INTO {_ident(table)} ({', '.join(map(_ident, self.names))}) VALUES "
        self.head = head
        self.tail = ""
        if self.key:
            rest = [c for c in self.names if c not in self.key]
            target = ", ".join(map(_ident, self.key))
            if rest:
                sets = ", ".join(f"{_ident(c)} = EXCLUDED.{_ident(c)}" for c in rest)
                self.tail = f" ON CONFLICT ({target}) DO UPDATE SET {sets}"
            else:
                self.tail = f" ON CONFLICT ({target}) DO NOTHING"

    def row(self, envelope: Mapping[str, Any]) -> list[Any]:
        return [_dig(envelope, p) for p in self.paths]

    def statement(self, rows: int) -> str:
        width = len(self.names)
        groups = (
            "(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")"
            for r in range(rows)
        )
        return self.head + ", ".join(groups) + self.tail

    def unique(self, items: list[tuple[Delivery, list[Any]]]) -> list[list[Any]]:
        """The rows to write: with a ``key``, the last row of each key (one statement
        cannot upsert one key twice)."""
        if not self.key:
            return [row for _, row in items]
        by_key: dict[Any, list[Any]] = {}
        for _, row in items:
            ident = orjson.dumps([row[i] for i in self.key_at], default=str)
            by_key[ident] = row
        return list(by_key.values())

    async def write(self, conn: Any, rows: list[list[Any]]) -> None:
        args = [v for row in rows for v in row]
        async with conn.transaction():
            await conn.execute(self.statement(len(rows)), *args)


@sink(stream=True, confirm=True)
async def write(
    deliveries: AsyncIterator[Delivery],
    *,
    dsn: str,
    table: str,
    columns: Columns,
    key: KeyColumns | None = None,
    batch: PositiveInt = 500,
    flush_interval: PositiveFloat = 0.2,
) -> None:
    """Write one row per ``processing`` envelope into a PostgreSQL table, in batches.

    Each batch is one multi-row ``INSERT`` in one transaction; its envelopes count as
    accepted (a broker source's messages are acknowledged) only once it committed. With
    ``key``, the statement is an upsert (``ON CONFLICT (key) DO UPDATE``, or ``DO
    NOTHING`` when every column is in the key), so a redelivered chunk writes nothing
    twice: with a broker source this is effectively-once end to end. A row that violates
    a constraint or has a value the column cannot take does not fail its batch: the batch
    is written again row by row, and that row alone becomes a ``chunk_error`` (with this
    sink's id as ``stage``). A lost connection or a wrong table fails the sink (the run
    ends with ``error``; nothing unwritten is acknowledged). JSON values go to
    ``json``/``jsonb`` columns as they are; a missing path is written as ``NULL``.

    Args:
        deliveries: The envelopes (given by the engine).
        dsn: ``postgresql://user:password@host:5432/db`` (the password is never printed).
        table: The table, optionally ``schema.table``.
        columns: Column -> dotted path into the envelope: ``{id: data.id, body: data,
            seq: seq}``.
        key: The columns of a unique constraint, for the upsert; each one among
            ``columns`` (``pipeline validate`` checks it).
        batch: Rows per statement, at most (``columns`` x ``batch`` <= 32,767).
        flush_interval: Seconds a row waits, at most, for its batch to fill.

    Example:
        sinks:
          - use: postgres
            with:
              dsn: postgresql://app:${PGPASSWORD}@127.0.0.1/app
              table: readings
              columns: {id: data.id, body: data}
              key: [id]
    """
    batch = min(batch, 32_767 // len(columns))  # PostgreSQL's limit of bind parameters
    writer = _Writer(table, columns, key or [])
    conn = await _connect(dsn)
    try:
        async for group in batched(deliveries, batch, flush_interval):
            await _flush(conn, writer, group)
    finally:
        await asyncio.shield(_close(conn))


async def _close(conn: Any) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5)
    except (OSError, TimeoutError, asyncpg.InterfaceError):
        conn.terminate()


async def _flush(conn: Any, writer: _Writer, group: list[Delivery]) -> None:
    items: list[tuple[Delivery, list[Any]]] = []
    for d in group:
        if d.item["status"] == "processing":
            items.append((d, writer.row(d.item)))
        else:
            d.accept()
    if not items:
        return
    try:
        await writer.write(conn, writer.unique(items))
    except Exception as exc:
        if not _is_row_error(exc):
            raise
        await _one_by_one(conn, writer, items)
        return
    for d, _ in items:
        d.accept()


async def _one_by_one(conn: Any, writer: _Writer, items: list[tuple[Delivery, list[Any]]]) -> None:
    """Write each row on its own: the rows at fault are rejected, the others accepted."""
    for d, row in items:
        try:
            await writer.write(conn, [row])
        except Exception as exc:
            if not _is_row_error(exc):
                raise
            d.reject(exc)
        else:
            d.accept()
