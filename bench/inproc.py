"""In-process baselines (no HTTP): the plain loop, and the framework's engine (stub).

Per item: source item -> transform (``value_f``) -> envelope (seq, timestamp) -> orjson,
appended to a ``bytearray`` sink that is reset every 256 KB. The plain ``async for`` loop
is the limit the engine is compared against. Each variant runs in its own process::

    python -m bench.inproc plain --n 200000
    python -m bench.inproc engine --n 200000   # skipped while the engine API is missing
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from bench.common import ENCODE_OPTS, Clock, envelope, reading, transform

SINK_RESET = 256 * 1024


class Skip(Exception):
    """The variant cannot run here (yet); the message says why."""


async def source(n: int) -> AsyncIterator[dict[str, Any]]:
    """The baseline source: N readings."""
    for i in range(1, n + 1):
        yield reading(i)


async def plain(n: int) -> int:
    """The in-process limit: one ``async for`` loop doing all the per-item work."""
    clock = Clock()
    dumps = orjson.dumps
    buf = bytearray()
    seq = 0
    async for item in source(n):
        seq += 1
        buf += dumps(envelope(seq, transform(item), clock), option=ENCODE_OPTS)
        if len(buf) > SINK_RESET:
            buf = bytearray()
    return seq


def _tag(data: dict[str, Any]) -> dict[str, Any]:
    data["unit"] = "celsius"
    return data


def _keep(data: dict[str, Any]) -> dict[str, Any] | None:
    return data if data["id"] >= 0 else None


THREE = (transform, _tag, _keep)
"""The 3-transform pipeline of the issue: add value_f, set the unit, a filter."""


async def plain3(n: int) -> int:
    """The limit for three transforms: one loop calling all three, then encoding."""
    clock = Clock()
    dumps = orjson.dumps
    buf = bytearray()
    seq = 0
    t1, t2, t3 = THREE
    async for item in source(n):
        data = t3(t2(t1(item)))
        if data is None:
            continue
        seq += 1
        buf += dumps(envelope(seq, data, clock), option=ENCODE_OPTS)
        if len(buf) > SINK_RESET:
            buf = bytearray()
    return seq


class LineSink:
    """A ``publish`` hook: append each encoded line to a ``bytearray``, count data."""

    __slots__ = ("buf", "count")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.count = 0

    def publish(self, env: dict[str, Any], line: bytes) -> None:
        self.buf += line
        if env.get("status") == "processing":
            self.count += 1
        if len(self.buf) > SINK_RESET:
            self.buf = bytearray()

    def publish_lines(self, run: str, seq: int, lines: list[bytes]) -> None:
        """The hub's hook for a batch of ``processing`` lines (``Run(publish_lines=...)``,
        what the server gives its hub); other envelopes come through `publish`."""
        self.buf += b"".join(lines)
        self.count += len(lines)
        if len(self.buf) > SINK_RESET:
            self.buf = bytearray()


def engine_runner(transforms: tuple[Any, ...] = (transform,)) -> Callable[[int], Awaitable[int]]:
    """Return ``run(n) -> envelopes`` driving the framework's engine, or raise `Skip`.

    PLUG POINT: the same work as `plain` (the same source, one transform adding
    ``value_f``), run by ``pipeline.engine.run.Run`` with the hooks the server gives its hub
    (``publish``, and ``publish_lines`` for batches of ``processing`` lines) appending the
    encoded lines to a ``bytearray``. It counts ``processing`` envelopes. Any import or
    API mismatch skips the variant with the reason instead of failing the suite.
    """
    try:
        from pipeline.engine.run import Run
        from pipeline.testing import make_stage
    except ImportError as exc:
        raise Skip(f"the engine API is not importable yet ({exc})") from None

    async def run(n: int) -> int:
        sink = LineSink()

        async def readings(count: int) -> AsyncIterator[dict[str, Any]]:
            for i in range(1, count + 1):
                yield reading(i)

        engine_run = Run(
            "bench",
            make_stage(readings, "source"),
            [make_stage(t, "transform", id=f"t{i}") for i, t in enumerate(transforms)],
            [],
            publish=sink.publish,
            publish_lines=sink.publish_lines,
            source_params={"count": n},
        )
        await engine_run.execute()
        return sink.count

    return run


def bytewax_runner() -> Callable[[int], Awaitable[int]]:
    """Bytewax's ``run_main`` over the same work (`bench.peers`), or raise `Skip`."""
    from bench.peers import bytewax_flow, bytewax_version

    if bytewax_version() is None:
        raise Skip("bytewax is not installed (the `bench` extra)")
    from bytewax.testing import run_main

    async def run(n: int) -> int:
        buf = bytearray()
        count = 0

        def write(block: bytes) -> None:
            nonlocal buf, count
            buf += block
            count += block.count(b"\n")
            if len(buf) > SINK_RESET:
                buf = bytearray()

        run_main(bytewax_flow(n, write, lambda: None))  # type: ignore[no-untyped-call]
        return count

    return run


def pathway_runner() -> Callable[[int], Awaitable[int]]:
    """Pathway's ``pw.run`` over the same work (`bench.peers`), or raise `Skip`."""
    from bench.peers import pathway_run, version

    if version("pathway") is None:
        raise Skip("pathway is not installed (the `pathway` extra)")

    async def run(n: int) -> int:
        buf = bytearray()
        count = 0

        def write(block: bytes) -> None:
            nonlocal buf, count
            buf += block
            count += block.count(b"\n")
            if len(buf) > SINK_RESET:
                buf = bytearray()

        pathway_run(n, write, lambda: None)
        return count

    return run


RUNNERS: dict[str, Callable[[], Callable[[int], Awaitable[int]]]] = {
    "plain": lambda: plain,
    "engine": engine_runner,
    "plain3": lambda: plain3,
    "engine3": lambda: engine_runner(THREE),
    "bytewax3": bytewax_runner,
    "pathway3": pathway_runner,
}


def measure(name: str, n: int, loop: str) -> dict[str, Any]:
    """Run variant ``name`` once over ``n`` items; return the result as a dict."""
    try:
        fn = RUNNERS[name]()
    except Skip as exc:
        return {"ok": False, "skipped": str(exc)}
    if loop == "uvloop":
        import uvloop

        uvloop.install()

    async def timed() -> tuple[int, float]:
        t0 = time.perf_counter()
        count = await fn(n)
        return count, time.perf_counter() - t0

    cpu0 = time.process_time()
    try:
        count, elapsed = asyncio.run(timed())
    except Exception as exc:  # a framework variant that breaks is reported, not fatal
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    error = None if count == n else f"expected {n} envelopes, got {count}"
    return {
        "ok": error is None,
        "error": error,
        "lines": count,
        "elapsed": elapsed,
        "rate": count / elapsed if elapsed > 0 else 0.0,
        "client_cpu": time.process_time() - cpu0,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: print one JSON object."""
    ap = argparse.ArgumentParser(prog="python -m bench.inproc")
    ap.add_argument("variant", choices=sorted(RUNNERS))
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    args = ap.parse_args(argv)
    sys.stdout.write(orjson.dumps(measure(args.variant, args.n, args.loop)).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
