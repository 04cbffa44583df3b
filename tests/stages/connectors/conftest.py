"""Fixtures for connector tests: the real services on loopback, unique names per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def unique() -> str:
    """A name no other test (or engineer's run) uses: for tables, queues, topics."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pg() -> AsyncIterator[object]:
    """A connection to the test database (asyncpg)."""
    asyncpg = pytest.importorskip("asyncpg")
    conn = await asyncpg.connect(PG_DSN)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def table(pg: object, unique: str) -> AsyncIterator[str]:
    """A fresh table ``(id int primary key, body jsonb not null, n int check (n >= 0))``."""
    await pg.execute(  # type: ignore[attr-defined]
        f"CREATE TABLE {unique} (id int PRIMARY KEY, body jsonb NOT NULL, n int CHECK (n >= 0))"
    )
    try:
        yield unique
    finally:
        await pg.execute(f"DROP TABLE IF EXISTS {unique}")  # type: ignore[attr-defined]
