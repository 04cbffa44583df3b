"""The implicit sink of ``pipeline run``: every envelope, as NDJSON, to stdout."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import BinaryIO

from pipeline.stage import ResolvedStage, meta_of, sink

__all__ = ["stdout_stage"]


@sink(stream=True, receives="lines", batch=True)
async def _stdout(batches: AsyncIterator[list[bytes]], *, out: BinaryIO | None = None) -> None:
    """Write each batch of ready lines to ``out`` (default: stdout) in one call, then flush."""
    async for lines in batches:
        to = sys.stdout.buffer if out is None else out
        to.write(b"".join(lines))
        to.flush()


def stdout_stage(out: BinaryIO | None = None) -> ResolvedStage:
    """The implicit sink of ``pipeline run``: every envelope to ``out`` (default: stdout).

    What is ready is written in one call and flushed at once (a batch sink): a lone
    envelope is written at once, a burst in one write instead of one per line.
    """
    return ResolvedStage(
        id="stdout",
        kind="sink",
        fn=_stdout,
        meta=meta_of(_stdout),
        params={} if out is None else {"out": out},
    )
