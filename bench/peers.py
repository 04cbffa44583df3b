"""Peer frameworks doing the bench's work: Bytewax and Pathway.

The work is the whole-process one of `bench.whole` and the in-process one of
`bench.inproc`: N `bench.common.reading` items through three per-item maps (the
framework's `bench.stages.enrich`, `tag` and the keep-all filter), each stamped as a
`bench.common.envelope` (seq, cached-seconds timestamp) and encoded with orjson, one line
each. Bytewax runs as its users run it: a ``Dataflow`` with ``TestingSource`` (batches of
256), ``op.map`` x2 + ``op.filter_map``, and a ``DynamicSink`` whose ``write_batch``
writes the batch's lines in one call::

    python -m bytewax.run 'bench.peers:stdout_flow(1000000)' > out.ndjson

Pathway runs as its users run it: a ``ConnectorSubject`` source (one ``next`` per
reading, a ``Json`` column), the three maps as ``pw.udf`` selects (the filter as a
``filter`` on the third's result), and ``pw.io.subscribe`` whose callback stamps and
encodes each row and writes 256 KB blocks::

    python -m bench.peers pathway 1000000 > out.ndjson

Both are imported only here; a missing peer skips. Bytewax is in the ``bench`` extra,
Pathway in the ``pathway`` extra (``pip install -e '.[pathway]'``: about 130 packages,
1 GB, so it is not in ``all``).
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


def version(peer: str) -> str | None:
    """The installed version of ``peer`` (a distribution name), or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version(peer)
    except importlib.metadata.PackageNotFoundError:
        return None


def bytewax_version() -> str | None:
    """The installed Bytewax version, or None."""
    return version("bytewax")


BLOCK = 256 * 1024


def pathway_run(n: int, write: Callable[[bytes], object], flush: Callable[[], object]) -> int:
    """Build and run a Pathway graph: N readings, 3 maps, envelopes handed to ``write``
    in blocks of `BLOCK` bytes; return the number of envelopes."""
    import importlib

    pw: Any = importlib.import_module("pathway")  # optional: typed as Any either way

    class Readings(pw.io.python.ConnectorSubject):  # type: ignore[misc]
        def run(self) -> None:
            for i in range(1, n + 1):
                self.next(data=reading(i))

    schema = pw.schema_from_types(data=pw.Json)

    def enrich_json(data: Any) -> Any:
        return pw.Json(enrich(data.value))

    def tag_json(data: Any) -> Any:
        return pw.Json(tag(data.value, unit="celsius"))

    def keep_json(data: Any) -> Any:
        kept = keep_all(data.value)
        return None if kept is None else pw.Json(kept)

    enrich_ = pw.udf(enrich_json, return_type=pw.Json)
    tag_ = pw.udf(tag_json, return_type=pw.Json)
    keep_ = pw.udf(keep_json, return_type=pw.Json | None)

    t = pw.io.python.read(Readings(), schema=schema, autocommit_duration_ms=100)
    t = t.select(data=enrich_(t.data))
    t = t.select(data=tag_(t.data))
    t = t.select(data=keep_(t.data))
    t = t.filter(t.data.is_not_none())
    clock, dumps = Clock(), orjson.dumps
    state = {"seq": 0}
    buf = bytearray()

    def on_change(key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:
        nonlocal buf
        if not is_addition:
            return
        state["seq"] += 1
        buf += dumps(envelope(state["seq"], row["data"].value, clock), option=ENCODE_OPTS)
        if len(buf) >= BLOCK:
            write(bytes(buf))
            flush()
            buf = bytearray()

    def on_end() -> None:
        write(bytes(buf))
        flush()

    pw.io.subscribe(t, on_change=on_change, on_end=on_end)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    return state["seq"]


def stdout_flow(n: int) -> Any:
    """``python -m bytewax.run 'bench.peers:stdout_flow(N)'``: envelopes to stdout."""
    out = sys.stdout.buffer
    return bytewax_flow(n, out.write, out.flush)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.peers pathway N``: the Pathway graph, envelopes to stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "pathway":
        sys.stderr.write("usage: python -m bench.peers pathway N\n")
        return 2
    out = sys.stdout.buffer
    pathway_run(int(args[1]), out.write, out.flush)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
