"""Peer frameworks doing the bench's work: Bytewax (and, where installed, nothing else yet).

The work is the whole-process one of `bench.whole` and the in-process one of
`bench.inproc`: N `bench.common.reading` items through three per-item maps (the
framework's `bench.stages.enrich`, `tag` and the keep-all filter), each stamped as a
`bench.common.envelope` (seq, cached-seconds timestamp) and encoded with orjson, one line
each. Bytewax runs as its users run it: a ``Dataflow`` with ``TestingSource`` (batches of
256), ``op.map`` x2 + ``op.filter_map``, and a ``DynamicSink`` whose ``write_batch``
writes the batch's lines in one call::

    python -m bytewax.run 'bench.peers:stdout_flow(1000000)' > out.ndjson

Bytewax is imported only here (it is in the ``bench`` extra); a missing peer skips.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from bench.common import ENCODE_OPTS, Clock, envelope, reading
from bench.stages import enrich, keep_all, tag

BATCH = 256


def readings(n: int) -> Iterator[dict[str, Any]]:
    """The N source items."""
    for i in range(1, n + 1):
        yield reading(i)


def _tag(data: dict[str, Any]) -> dict[str, Any]:
    return tag(data, unit="celsius")


def bytewax_flow(n: int, write: Callable[[bytes], object], flush: Callable[[], object]) -> Any:
    """A Bytewax ``Dataflow``: N readings, 3 maps, envelopes handed to ``write`` per batch."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource

    class _Part(StatelessSinkPartition[Any]):
        def __init__(self) -> None:
            self.clock = Clock()
            self.seq = 0

        def write_batch(self, items: list[Any]) -> None:
            dumps, clock = orjson.dumps, self.clock
            out = []
            for data in items:
                self.seq += 1
                out.append(dumps(envelope(self.seq, data, clock), option=ENCODE_OPTS))
            write(b"".join(out))
            flush()

    class _Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
            return _Part()

    flow = Dataflow("bench")
    s = op.input("readings", flow, TestingSource(readings(n), batch_size=BATCH))
    s = op.map("enrich", s, enrich)
    s = op.map("tag", s, _tag)
    s = op.filter_map("keep_all", s, keep_all)
    op.output("out", s, _Sink())
    return flow


def bytewax_version() -> str | None:
    """The installed Bytewax version, or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version("bytewax")
    except importlib.metadata.PackageNotFoundError:
        return None


def stdout_flow(n: int) -> Any:
    """``python -m bytewax.run 'bench.peers:stdout_flow(N)'``: envelopes to stdout."""
    out = sys.stdout.buffer
    return bytewax_flow(n, out.write, out.flush)
