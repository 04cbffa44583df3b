"""Broker benchmarks: the framework's connectors against hand-rolled client loops.

``python -m bench.brokers CASE --n N`` measures one case and prints one JSON object:

- ``redis-loop``: redis-py asyncio + hiredis by hand: ``XREADGROUP COUNT 500``, parse,
  transform, dump, then ``XADD`` of the batch and its ``XACK`` pipelined in one round trip.
- ``redis-loop-script``: the same loop, the batch's ``XADD`` as one script call (what
  the `redis_stream` sink sends), pipelined with its ``XACK``.
- ``redis-engine``: the same work as a pipeline: `redis_stream` source -> 1 transform ->
  `redis_stream` sink (``receives: data``), every entry acknowledged after the sink wrote.
- ``redis-workers-1``, ``redis-workers-2``: that pipeline as 1 or 2 ``pipeline run``
  worker processes sharing one group, the input written once all of them read; the rate
  is N over the span of the output stream's entry ids (Redis's own clock), so process
  start-up is not counted.
- ``nats-loop``, ``nats-engine``, ``nats-workers-1``, ``nats-workers-2``,
  ``ack-latency-nats``: the same for NATS JetStream (`bench.brokers_nats`).
- ``ack-latency``: an idle Redis stream: one entry every 20 ms; the time from ``XADD``
  to the entry being acknowledged (read, transformed, written by a `file` sink, acked),
  polled on the group's ``entries-read`` and pending count.

Every case checks that all N entries arrived (``ok``). Needs the services on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson

REDIS = "redis://127.0.0.1:6379"
ROOT = Path(__file__).resolve().parent.parent
BATCH = 500
PAYLOAD = {"id": 0, "sensor": "s-17", "celsius": 21.5, "tags": ["a", "b"], "note": "x" * 40}


def work(chunk: dict[str, Any]) -> dict[str, Any]:
    """The one transform every case runs: add a field."""
    return {**chunk, "fahrenheit": chunk["celsius"] * 9 / 5 + 32}


def _payloads(n: int) -> list[bytes]:
    return [orjson.dumps({**PAYLOAD, "id": i}) for i in range(n)]


async def _until_released(run: Any, n: int) -> None:
    """Wait until ``run`` emitted ``n`` chunks and released every ack (in-process counters,
    so the wait costs the run no broker round trips); the caller then confirms with the
    broker that the last acks landed."""
    while run.seq < n + 1 or run.acks.pending:  # noqa: ASYNC110 - seq 1 is `starting`
        await asyncio.sleep(0.002)


# -- Redis -------------------------------------------------------------------------------


async def _redis_fill(r: Any, stream: str, n: int) -> None:
    await r.xgroup_create(stream, "g", "0", mkstream=True)
    payloads = _payloads(n)
    for start in range(0, n, 5000):
        pipe = r.pipeline(transaction=False)
        for p in payloads[start : start + 5000]:
            pipe.xadd(stream, {"data": p})
        await pipe.execute()


async def redis_loop(n: int, *, script: bool = False) -> dict[str, Any]:
    """The hand-rolled loop; with ``script``, the XADDs of a batch are one script call,
    as the `redis_stream` sink makes them, pipelined with the XACK."""
    import redis.asyncio as aioredis

    from stages.connectors.redis import _APPEND

    r: Any = aioredis.Redis.from_url(REDIS)
    sha = await r.script_load(_APPEND)  # loaded once, so EVALSHA can go in a pipeline
    src, out = f"bench:{uuid.uuid4().hex}", f"bench:{uuid.uuid4().hex}"
    try:
        await _redis_fill(r, src, n)
        t0 = time.perf_counter()
        c0 = time.process_time()
        done = 0
        while done < n:
            reply = await r.xreadgroup("g", "c", {src: ">"}, count=BATCH, block=100)
            if not reply:
                continue
            entries = reply[0][1]
            pipe = r.pipeline(transaction=False)
            if script:
                results = [orjson.dumps(work(orjson.loads(f[b"data"]))) for _, f in entries]
                pipe.evalsha(sha, 1, out, b"data", b"", *results)
            else:
                for _, fields in entries:
                    pipe.xadd(out, {"data": orjson.dumps(work(orjson.loads(fields[b"data"])))})
            pipe.xack(src, "g", *[e[0] for e in entries])
            await pipe.execute()
            done += len(entries)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        ok = await r.xlen(out) == n and (await r.xpending(src, "g"))["pending"] == 0
        return {"ok": ok, "rate": n / elapsed, "elapsed": elapsed, "cpu_s": cpu}
    finally:
        await r.delete(src, out)
        await r.aclose()


async def redis_engine(n: int) -> dict[str, Any]:
    """The framework, in-process."""
    import redis.asyncio as aioredis

    from pipeline.engine.run import Run
    from pipeline.testing import make_stage
    from stages.connectors.redis import read as redis_stream_source, write as redis_stream_sink

    r: Any = aioredis.Redis.from_url(REDIS)
    src, out = f"bench:{uuid.uuid4().hex}", f"bench:{uuid.uuid4().hex}"
    try:
        await _redis_fill(r, src, n)
        params = {"url": REDIS, "stream": src, "group": "g", "batch": BATCH}
        params["max_in_flight"] = 4 * BATCH
        run = Run(
            "bench",
            make_stage(redis_stream_source, "source", params=params),
            [make_stage(work)],
            [
                make_stage(
                    redis_stream_sink,
                    "sink",
                    params={"url": REDIS, "stream": out, "receives": "data"},
                )
            ],
        )
        t0 = time.perf_counter()
        c0 = time.process_time()
        task = asyncio.create_task(run.execute())
        await _until_released(run, n)
        while (await r.xpending(src, "g"))["pending"]:  # noqa: ASYNC110 - XACKs in flight
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        run.stop()
        await asyncio.wait_for(task, 30)
        ok = await r.xlen(out) == n
        return {"ok": ok, "rate": n / elapsed, "elapsed": elapsed, "cpu_s": cpu}
    finally:
        await r.delete(src, out)
        await r.aclose()


WORKER = """
pipelines:
  worker:
    source:
      use: redis_stream
      with: {{url: "{url}", stream: "{src}", group: g, batch: 500, max_in_flight: 2000}}
    transforms:
      - use: bench.brokers:work
    sinks:
      - use: redis_stream
        with: {{url: "{url}", stream: "{out}", receives: data}}
"""


async def redis_workers(n: int, workers: int) -> dict[str, Any]:
    """``workers`` worker processes; the rate over the output stream's own timestamps.

    The input is written once every worker reads (its consumer is in the group), so the
    start-up of one worker does not take CPU from another inside the measured span.
    """
    import redis.asyncio as aioredis

    from stages.connectors.redis import _APPEND

    r: Any = aioredis.Redis.from_url(REDIS)
    src, out = f"bench:{uuid.uuid4().hex}", f"bench:{uuid.uuid4().hex}"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "pipelines.yaml"
        cfg.write_text(textwrap.dedent(WORKER.format(url=REDIS, src=src, out=out)))
        try:
            await r.xgroup_create(src, "g", "0", mkstream=True)
            procs += spawn_workers(cfg, workers)
            ready = time.monotonic() + 120  # every worker started and reading: then the input
            while len(await r.xinfo_consumers(src, "g")) < workers:
                if time.monotonic() > ready:
                    return {"ok": False, "error": "the workers did not start within 120 s"}
                await asyncio.sleep(0.05)
            sha = await r.script_load(_APPEND)  # the input in a few calls (no CPU taken
            payloads = _payloads(n)  # from the workers by a client's pipelined XADD)
            for start in range(0, n, 5000):
                await r.evalsha(sha, 1, src, b"data", b"", *payloads[start : start + 5000])
            deadline = time.monotonic() + 300
            while await r.xlen(out) < n and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            first = (await r.xrange(out, count=1))[0][0]
            last = (await r.xrevrange(out, count=1))[0][0]
            span = (int(last.split(b"-")[0]) - int(first.split(b"-")[0])) / 1000
            ok = await r.xlen(out) == n
            return {"ok": ok, "rate": n / max(span, 0.001), "elapsed": span}
        finally:
            stop_workers(procs)
            await r.delete(src, out)
            await r.aclose()


async def ack_latency(n: int) -> dict[str, Any]:
    """Idle stream: XADD, then poll until the entry is read and acknowledged."""
    import redis.asyncio as aioredis

    from pipeline.engine.run import Run
    from pipeline.testing import make_stage
    from stages.connectors.redis import read as redis_stream_source
    from stages.sinks import file

    r: Any = aioredis.Redis.from_url(REDIS)
    src = f"bench:{uuid.uuid4().hex}"
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        await r.xgroup_create(src, "g", "$", mkstream=True)
        params = {"url": REDIS, "stream": src, "group": "g"}
        run = Run(
            "bench",
            make_stage(redis_stream_source, "source", params=params),
            [make_stage(work)],
            [make_stage(file, "sink", params={"path": f"{tmp}/out.ndjson", "fsync": False})],
        )
        task = asyncio.create_task(run.execute())
        try:
            await asyncio.sleep(0.5)
            for k in range(1, n + 1):
                await asyncio.sleep(0.02)  # idle between entries
                t0 = time.perf_counter()
                await r.xadd(src, {"data": orjson.dumps({**PAYLOAD, "id": k})})
                while True:
                    group = (await r.xinfo_groups(src))[0]
                    if group["entries-read"] == k and group["pending"] == 0:
                        break
                samples.append((time.perf_counter() - t0) * 1000)
        finally:
            run.stop()
            await asyncio.wait_for(task, 30)
            await r.delete(src)
            await r.aclose()
    return latency_summary(samples, n)


def latency_summary(samples: list[float], n: int) -> dict[str, Any]:
    """p50, p99 and max of ``samples`` (ms); ok when all ``n`` were measured."""
    samples = sorted(samples)
    return {
        "ok": len(samples) == n,
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "max_ms": samples[-1],
        "rate": 0.0,
    }


def spawn_workers(cfg: Path, workers: int) -> list[subprocess.Popen[bytes]]:
    """``workers`` ``pipeline run -c CFG`` processes (output and logs discarded), free to
    run on every CPU: `python -m bench` pins the measuring process to one, and children
    inherit that (two workers then shared one core, and 2 ran slower than 1)."""
    cmd = [sys.executable, "-m", "pipeline", "run", "-c", str(cfg)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_every_cpu,
        )
        for _ in range(workers)
    ]


def _every_cpu() -> None:
    """In a child before exec: allow every CPU of the machine (undo an inherited pin)."""
    with contextlib.suppress(OSError):  # a cpuset narrower than the machine: keep it
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each worker, then wait for all (bounded)."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def cases() -> dict[str, Callable[[int], Coroutine[Any, Any, dict[str, Any]]]]:
    """Every case by name (the NATS ones live in `bench.brokers_nats`)."""
    from bench import brokers_nats as nats_cases

    return {
        "redis-loop": redis_loop,
        "redis-loop-script": lambda n: redis_loop(n, script=True),
        "redis-engine": redis_engine,
        "redis-workers-1": lambda n: redis_workers(n, 1),
        "redis-workers-2": lambda n: redis_workers(n, 2),
        "ack-latency": ack_latency,
        "nats-loop": nats_cases.nats_loop,
        "nats-engine": nats_cases.nats_engine,
        "nats-workers-1": lambda n: nats_cases.nats_workers(n, 1),
        "nats-workers-2": lambda n: nats_cases.nats_workers(n, 2),
        "ack-latency-nats": nats_cases.ack_latency,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure one case; print its JSON result."""
    ap = argparse.ArgumentParser(prog="python -m bench.brokers")
    known = cases()
    ap.add_argument("case", choices=sorted(known))
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args(argv)
    try:
        result = asyncio.run(known[args.case](args.n))
    except Exception as exc:  # a missing service: reported, not a traceback
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
