"""How cost grows: in-process measurements behind the ``concurrency``, ``transforms`` and
``memory`` entries of `bench.variants` / `bench.sweeps`. Each call runs in its own process
and prints one JSON object (the `bench.harness.run_json` protocol)::

    python -m bench.scaling concurrency --mode ordered --c 64 --n 6400
    python -m bench.scaling transforms --mode engine --k 5 --n 50000
    python -m bench.scaling memory --sink bytearray --n 10000000 --every 1000000

- ``concurrency``: N small chunks through one async transform that awaits
  ``asyncio.sleep(DELAY)`` (10 ms), ``concurrency: c``. The ideal is ``c / DELAY`` chunks/s.
  ``plain`` is the asyncio limit: a loop that keeps ``c`` tasks in flight (no engine).
- ``transforms``: the baseline reading through ``k`` cheap per-chunk transforms
  (generated: each sets ``value_f``), then stamped and encoded into a ``bytearray``.
  ``plain`` calls the same functions in one ``async for`` loop; ``engine`` runs them as
  sync maps (the engine fuses them into one function); ``engine-async`` makes each one an
  ``async def`` (awaited in place by the source reader), and ``plain-async`` is the loop
  awaiting those same coroutine functions (the like-for-like limit for ``engine-async``).
- ``memory``: the engine, a counter-like source and the 3 transforms of ``inproc3``;
  every line goes to a ``bytearray`` reset every 256 KB (``bytearray``: nothing kept) or
  into a `pipeline.hub.hub.Hub` with ``retain=10000, client_buffer=1024`` and no clients
  (``hub``: a bounded ring). RSS (``VmRSS``) is sampled every ``--every`` envelopes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from bench.common import ENCODE_OPTS, Clock, envelope, reading
from bench.inproc import SINK_RESET, THREE, LineSink

DELAY = 0.010
"""Seconds each chunk of the concurrency transform awaits."""
HUB_RETAIN = 10_000
HUB_CLIENT_BUFFER = 1024

Result = dict[str, Any]


def rss_bytes() -> int:
    """This process's resident set size, from ``/proc/self/status`` (``VmRSS``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _chunks(n: int) -> Callable[..., AsyncIterator[dict[str, int]]]:
    async def chunks(count: int = n) -> AsyncIterator[dict[str, int]]:
        for i in range(1, count + 1):
            yield {"id": i}

    return chunks


async def _wait(chunk: dict[str, int]) -> dict[str, int]:
    await asyncio.sleep(DELAY)
    return chunk


# ---- concurrency -----------------------------------------------------------------------


async def _plain_concurrent(n: int, c: int) -> int:
    """The asyncio limit: up to ``c`` `_wait` tasks in flight, unordered, O(1) per chunk."""
    slots = asyncio.Semaphore(c)
    done: list[int] = [0]

    def finished(task: asyncio.Task[dict[str, int]]) -> None:
        done[0] += 1
        slots.release()

    async for chunk in _chunks(n)():
        await slots.acquire()
        asyncio.ensure_future(_wait(chunk)).add_done_callback(finished)
    for _ in range(c):  # bounded: wait until every slot is free again
        await slots.acquire()
    return done[0]


def _api() -> tuple[Any, Any]:
    """Import the engine API (outside the timed region): ``(Run, make_stage)``."""
    from pipeline.engine.run import Run
    from pipeline.testing import make_stage

    return Run, make_stage


async def _engine_concurrent(n: int, c: int, ordered: bool) -> int:
    Run, make_stage = _api()
    sink = LineSink()
    run = Run(
        "bench",
        make_stage(_chunks(n), "source"),
        [make_stage(_wait, "transform", id="wait", concurrency=c, ordered=ordered)],
        [],
        publish=sink.publish,
        source_params={"count": n},
    )
    await run.execute()
    return sink.count


def concurrency(mode: str, n: int, c: int) -> Result:
    """Measure ``mode`` (ordered, unordered, plain) once."""

    if not mode.startswith("plain"):
        _api()

    async def timed() -> tuple[int, float]:
        t0 = time.perf_counter()
        if mode == "plain":
            count = await _plain_concurrent(n, c)
        else:
            count = await _engine_concurrent(n, c, ordered=mode == "ordered")
        return count, time.perf_counter() - t0

    return _finish(asyncio.run(timed()), n, ideal=c / DELAY, extra={"concurrency": c})


# ---- transforms ------------------------------------------------------------------------


def make_transforms(k: int) -> list[Callable[[dict[str, Any]], dict[str, Any]]]:
    """``k`` distinct cheap transforms; each sets ``value_f`` (the envelope keeps its size)."""

    def one(i: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
        offset = 32.0 + i

        def t(data: dict[str, Any]) -> dict[str, Any]:
            data["value_f"] = data["value"] * 1.8 + offset
            return data

        t.__name__ = f"t{i}"
        return t

    return [one(i) for i in range(k)]


def _as_async(
    fn: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    async def t(data: dict[str, Any]) -> dict[str, Any]:
        return fn(data)

    t.__name__ = f"{fn.__name__}_async"
    return t


async def _readings(count: int) -> AsyncIterator[dict[str, Any]]:
    for i in range(1, count + 1):
        yield reading(i)


async def _plain_k(n: int, k: int) -> int:
    """The limit: one loop calling the same ``k`` functions inline, then encoding."""
    fns = make_transforms(k)
    clock = Clock()
    dumps = orjson.dumps
    buf = bytearray()
    seq = 0
    async for item in _readings(n):
        data: dict[str, Any] | None = item
        for fn in fns:
            data = fn(data)  # type: ignore[arg-type]
            if data is None:
                break
        if data is None:
            continue
        seq += 1
        buf += dumps(envelope(seq, data, clock), option=ENCODE_OPTS)
        if len(buf) > SINK_RESET:
            buf = bytearray()
    return seq


async def _plain_async_k(n: int, k: int) -> int:
    """The limit for ``async def`` transforms: one loop awaiting the same ``k`` coroutine
    functions `_engine_k` gets in ``engine-async`` mode, then encoding."""
    fns = [_as_async(f) for f in make_transforms(k)]
    clock = Clock()
    dumps = orjson.dumps
    buf = bytearray()
    seq = 0
    async for item in _readings(n):
        data: dict[str, Any] | None = item
        for fn in fns:
            data = await fn(data)  # type: ignore[arg-type]
            if data is None:
                break
        if data is None:
            continue
        seq += 1
        buf += dumps(envelope(seq, data, clock), option=ENCODE_OPTS)
        if len(buf) > SINK_RESET:
            buf = bytearray()
    return seq


async def _engine_k(n: int, fns: list[Any], sink: LineSink) -> None:
    Run, make_stage = _api()

    run = Run(
        "bench",
        make_stage(_readings, "source"),
        [make_stage(fn, "transform", id=f"t{i}") for i, fn in enumerate(fns)],
        [],
        publish=sink.publish,
        publish_lines=sink.publish_lines,  # as the server hands its hub the lines
        source_params={"count": n},
    )
    await run.execute()


def transforms(mode: str, n: int, k: int) -> Result:
    """Measure ``mode`` (plain, engine, engine-async) with ``k`` transforms once."""

    if not mode.startswith("plain"):
        _api()

    async def timed() -> tuple[int, float]:
        t0 = time.perf_counter()
        if mode == "plain":
            count = await _plain_k(n, k)
        elif mode == "plain-async":
            count = await _plain_async_k(n, k)
        else:
            fns: list[Any] = make_transforms(k)
            if mode == "engine-async":
                fns = [_as_async(f) for f in fns]
            sink = LineSink()
            await _engine_k(n, fns, sink)
            count = sink.count
        return count, time.perf_counter() - t0

    return _finish(asyncio.run(timed()), n, extra={"transforms": k})


def _finish(
    measured: tuple[int, float], n: int, *, ideal: float | None = None, extra: Result
) -> Result:
    count, elapsed = measured
    error = None if count == n else f"expected {n} envelopes, got {count}"
    rate = count / elapsed if elapsed > 0 else 0.0
    res: Result = {"ok": error is None, "error": error, "lines": count, "elapsed": elapsed}
    res["rate"] = rate
    if ideal is not None:
        res["ideal"] = ideal
        res["of_ideal"] = rate / ideal
    return res | extra


# ---- memory ----------------------------------------------------------------------------


class _Sampler:
    """A ``publish`` hook: pass each line on, sample RSS every ``every`` data envelopes."""

    __slots__ = ("count", "deadline", "every", "inner", "next", "run", "samples")

    def __init__(self, inner: Callable[[Any, bytes], None], every: int, deadline: float) -> None:
        self.inner = inner
        self.every = every
        self.next = every
        self.count = 0
        self.deadline = deadline
        self.samples: list[tuple[int, int, float]] = []
        self.run: Any = None

    def publish(self, env: dict[str, Any], line: bytes) -> None:
        self.inner(env, line)
        if env["status"] != "processing":
            return
        self.count += 1
        if self.count == self.next:
            self.next += self.every
            self.samples.append((self.count, rss_bytes(), time.perf_counter()))
            if time.monotonic() > self.deadline and self.run is not None:
                self.run.stop()  # bounded: keep the samples so far, end the run cleanly


def memory(sink_kind: str, n: int, every: int, budget: float) -> Result:
    """Run the engine over ``n`` envelopes once, sampling RSS; stop early after ``budget`` s."""
    from pipeline.engine.run import Run
    from pipeline.hub.hub import Hub
    from pipeline.testing import make_stage

    inner: Callable[[Any, bytes], None]
    hub: Hub | None = None
    if sink_kind == "hub":
        hub = Hub("bench", retain=HUB_RETAIN, client_buffer=HUB_CLIENT_BUFFER)
        inner = hub.publish
    else:
        inner = LineSink().publish
    sampler = _Sampler(inner, every, time.monotonic() + budget)

    async def go() -> float:
        run = Run(
            "bench",
            make_stage(_readings, "source"),
            [make_stage(t, "transform", id=f"t{i}") for i, t in enumerate(THREE)],
            [],
            publish=sampler.publish,
            source_params={"count": n},
        )
        sampler.run = run
        t0 = time.perf_counter()
        sampler.samples.append((0, rss_bytes(), t0))
        await run.execute()
        return t0

    gc.collect()
    t0 = asyncio.run(go())
    elapsed = time.perf_counter() - t0
    samples = [(c, rss, t - t0) for c, rss, t in sampler.samples]
    first = next((s for s in samples if s[0] == every), None)
    last = samples[-1]
    res: Result = {
        "ok": sampler.count == n,
        "error": None if sampler.count == n else f"stopped after {sampler.count} (budget)",
        "partial": sampler.count < n,
        "sink": sink_kind,
        "lines": sampler.count,
        "elapsed": elapsed,
        "rate": sampler.count / elapsed if elapsed > 0 else 0.0,
        "every": every,
        "samples": samples,
        "rss_start": samples[0][1],
        "rss_first": first[1] if first else None,
        "rss_last": last[1],
        "growth": last[1] - first[1] if first and last[0] > every else None,
    }
    if hub is not None:
        res["hub_buffered"] = hub.buffered
    return res


def main(argv: list[str] | None = None) -> int:
    """CLI: print one JSON object."""
    ap = argparse.ArgumentParser(prog="python -m bench.scaling")
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("concurrency")
    c.add_argument("--mode", choices=["ordered", "unordered", "plain"], default="ordered")
    c.add_argument("--c", type=int, default=64)
    c.add_argument("--n", type=int, default=6400)
    t = sub.add_parser("transforms")
    t.add_argument(
        "--mode", choices=["plain", "plain-async", "engine", "engine-async"], default="engine"
    )
    t.add_argument("--k", type=int, default=3)
    t.add_argument("--n", type=int, default=50_000)
    m = sub.add_parser("memory")
    m.add_argument("--sink", choices=["bytearray", "hub"], default="bytearray")
    m.add_argument("--n", type=int, default=10_000_000)
    m.add_argument("--every", type=int, default=1_000_000)
    m.add_argument("--budget", type=float, default=120.0, help="stop early after this")
    args = ap.parse_args(argv)
    try:
        if args.what == "concurrency":
            res = concurrency(args.mode, args.n, args.c)
        elif args.what == "transforms":
            res = transforms(args.mode, args.n, args.k)
        else:
            res = memory(args.sink, args.n, max(1, args.every), args.budget)
    except ImportError as exc:
        res = {"ok": False, "skipped": f"the engine API is not importable ({exc})"}
    except Exception as exc:  # a framework variant that breaks is reported, not fatal
        res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(orjson.dumps(res).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
