"""Broker benchmarks: the framework's connectors against hand-rolled client loops.

``python -m bench.brokers CASE --n N`` measures one case and prints one JSON object:

- ``redis-loop``: redis-py asyncio + hiredis by hand: ``XREADGROUP COUNT 500``, parse,
  transform, dump, then ``XADD`` of the batch and its ``XACK`` pipelined in one round trip.
- ``redis-engine``: the same work as a pipeline: `redis_stream` source -> 1 transform ->
  `redis_stream` sink (``receives: data``), every entry acknowledged after the sink wrote.
- ``redis-workers-1``, ``redis-workers-2``: that pipeline as 1 or 2 ``pipeline run``
  worker processes sharing one group; the rate is N over the span of the output stream's
  entry ids (Redis's own clock), so process start-up is not counted.
- ``nats-loop``: nats-py by hand: ``fetch(500)``, parse, transform, dump,
  ``publish_async`` of the batch to a JetStream subject, wait for its acks, ack the batch.
- ``nats-engine``: `nats` source -> 1 transform -> `nats` sink (``jetstream: true``).
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
from pathlib import Path
from typing import Any

import orjson

REDIS = "redis://127.0.0.1:6379"
NATS = "nats://127.0.0.1:4222"
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


async def redis_loop(n: int) -> dict[str, Any]:
    """The hand-rolled loop."""
    import redis.asyncio as aioredis

    r: Any = aioredis.Redis.from_url(REDIS)
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
    """``workers`` worker processes; the rate over the output stream's own timestamps."""
    import redis.asyncio as aioredis

    r: Any = aioredis.Redis.from_url(REDIS)
    src, out = f"bench:{uuid.uuid4().hex}", f"bench:{uuid.uuid4().hex}"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "pipelines.yaml"
        cfg.write_text(textwrap.dedent(WORKER.format(url=REDIS, src=src, out=out)))
        try:
            await _redis_fill(r, src, n)
            cmd = [sys.executable, "-m", "pipeline", "run", "-c", str(cfg)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            for _ in range(workers):
                procs.append(
                    subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
                        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                )
            deadline = time.monotonic() + 300
            while await r.xlen(out) < n and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            first = (await r.xrange(out, count=1))[0][0]
            last = (await r.xrevrange(out, count=1))[0][0]
            span = (int(last.split(b"-")[0]) - int(first.split(b"-")[0])) / 1000
            ok = await r.xlen(out) == n
            return {"ok": ok, "rate": n / max(span, 0.001), "elapsed": span}
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
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
    samples.sort()
    return {
        "ok": len(samples) == n,
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "max_ms": samples[-1],
        "rate": 0.0,
    }


# -- NATS --------------------------------------------------------------------------------


async def _nats_fill(js: Any, stream: str, n: int) -> None:
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    payloads = _payloads(n)
    for start in range(0, n, 2000):
        futures = [
            await js.publish_async(f"{stream}.in", p) for p in payloads[start : start + 2000]
        ]
        await asyncio.gather(*futures)


async def _nats_out_count(js: Any, stream: str) -> int:
    info = await js.stream_info(stream, subjects_filter=f"{stream}.out")
    return int((info.state.subjects or {}).get(f"{stream}.out", 0))


async def nats_loop(n: int) -> dict[str, Any]:
    """The hand-rolled loop."""
    import nats
    from nats.js import api

    nc = await nats.connect(NATS)
    js = nc.jetstream(publish_async_max_pending=10_000)
    stream = f"BENCH_{uuid.uuid4().hex}"
    try:
        await _nats_fill(js, stream, n)
        config = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30)
        psub = await js.pull_subscribe(f"{stream}.in", durable="d", config=config)
        t0 = time.perf_counter()
        c0 = time.process_time()
        done = 0
        while done < n:
            try:
                msgs = await psub.fetch(BATCH, timeout=1)
            except nats.errors.TimeoutError:
                continue
            futures = [
                await js.publish_async(f"{stream}.out", orjson.dumps(work(orjson.loads(m.data))))
                for m in msgs
            ]
            await asyncio.gather(*futures)
            for m in msgs:
                await m.ack()
            done += len(msgs)
        await nc.flush()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        ok = await _nats_out_count(js, stream) == n
        return {"ok": ok, "rate": n / elapsed, "elapsed": elapsed, "cpu_s": cpu}
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()


async def nats_engine(n: int) -> dict[str, Any]:
    """The framework, in-process."""
    import nats

    from pipeline.engine.run import Run
    from pipeline.testing import make_stage
    from stages.connectors.nats import read as nats_source, write as nats_sink

    nc = await nats.connect(NATS)
    js = nc.jetstream(publish_async_max_pending=10_000)
    stream = f"BENCH_{uuid.uuid4().hex}"
    try:
        await _nats_fill(js, stream, n)
        params = {"url": NATS, "subject": f"{stream}.in", "stream": stream, "batch": BATCH}
        params["max_in_flight"] = 4 * BATCH
        sink_params = {"url": NATS, "subject": f"{stream}.out", "jetstream": True}
        sink_params["receives"] = "data"
        run = Run(
            "bench",
            make_stage(nats_source, "source", params=params),
            [make_stage(work)],
            [make_stage(nats_sink, "sink", params=sink_params)],
        )
        t0 = time.perf_counter()
        c0 = time.process_time()
        task = asyncio.create_task(run.execute())
        await _until_released(run, n)

        async def acked() -> bool:
            info = await js.consumer_info(stream, "pipeline")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        while not await acked():  # noqa: ASYNC110 - the acks in flight: a few polls
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        run.stop()
        await asyncio.wait_for(task, 30)
        ok = await _nats_out_count(js, stream) == n
        return {"ok": ok, "rate": n / elapsed, "elapsed": elapsed, "cpu_s": cpu}
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()


CASES = {
    "redis-loop": redis_loop,
    "redis-engine": redis_engine,
    "redis-workers-1": lambda n: redis_workers(n, 1),
    "redis-workers-2": lambda n: redis_workers(n, 2),
    "nats-loop": nats_loop,
    "nats-engine": nats_engine,
    "ack-latency": ack_latency,
}


def main(argv: list[str] | None = None) -> int:
    """Measure one case; print its JSON result."""
    ap = argparse.ArgumentParser(prog="python -m bench.brokers")
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args(argv)
    try:
        result = asyncio.run(CASES[args.case](args.n))
    except Exception as exc:  # a missing service: reported, not a traceback
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
