"""The NATS JetStream cases of `bench.brokers` (run them with ``python -m bench.brokers``).

- ``nats-loop``: nats-py by hand: ``fetch(500)``, parse, transform, dump,
  ``publish_async`` of the batch to a JetStream subject, wait for its acks, ack the batch.
- ``nats-engine``: `nats` source -> 1 transform -> `nats` sink (``jetstream: true``).
- ``nats-workers-1``, ``nats-workers-2``: that pipeline as 1 or 2 ``pipeline run``
  workers sharing one durable consumer; the rate is N over the span of the output
  messages' stream timestamps (the server's clock), so start-up is not counted.
- ``ack-latency-nats``: an idle stream, one message every 20 ms; the time from its
  publish to its ack (read, transformed, written by a `file` sink), polled on the
  consumer's ack floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.brokers import (
    BATCH,
    PAYLOAD,
    _payloads,
    _until_released,
    latency_summary,
    spawn_workers,
    stop_workers,
    work,
)

NATS = "nats://127.0.0.1:4222"


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


WORKER = """
pipelines:
  worker:
    source:
      use: nats
      with: {{url: "{url}", subject: "{stream}.in", stream: "{stream}", batch: 500,
              max_in_flight: 2000}}
    transforms:
      - use: bench.brokers:work
    sinks:
      - use: nats
        with: {{url: "{url}", subject: "{stream}.out", jetstream: true, receives: data}}
"""


async def nats_workers(n: int, workers: int) -> dict[str, Any]:
    """``workers`` worker processes; the rate over the output messages' stream timestamps."""
    import nats

    nc = await nats.connect(NATS)
    js = nc.jetstream(publish_async_max_pending=10_000)
    stream = f"BENCH_{uuid.uuid4().hex}"
    procs: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "pipelines.yaml"
        cfg.write_text(textwrap.dedent(WORKER.format(url=NATS, stream=stream)))
        try:
            await _nats_fill(js, stream, n)
            procs += spawn_workers(cfg, workers)
            deadline = time.monotonic() + 300
            while await _nats_out_count(js, stream) < n and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            out = f"{stream}.out"
            first = await js.get_msg(stream, seq=1, subject=out, next=True)
            last = await js.get_last_msg(stream, out)
            assert first.time is not None and last.time is not None
            span = (last.time - first.time).total_seconds()
            ok = await _nats_out_count(js, stream) == n
            return {"ok": ok, "rate": n / max(span, 0.001), "elapsed": span}
        finally:
            stop_workers(procs)
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
            await nc.close()


async def ack_latency(n: int) -> dict[str, Any]:
    """Idle stream: publish, then poll until the message is read, written and acked."""
    import nats

    from pipeline.engine.run import Run
    from pipeline.testing import make_stage
    from stages.connectors.nats import read as nats_source
    from stages.sinks import file

    nc = await nats.connect(NATS)
    js = nc.jetstream()
    stream = f"BENCH_{uuid.uuid4().hex}"
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        await js.add_stream(name=stream, subjects=[f"{stream}.in"])
        params = {"url": NATS, "subject": f"{stream}.in", "stream": stream}
        run = Run(
            "bench",
            make_stage(nats_source, "source", params=params),
            [make_stage(work)],
            [make_stage(file, "sink", params={"path": f"{tmp}/out.ndjson", "fsync": False})],
        )
        task = asyncio.create_task(run.execute())
        try:
            await asyncio.sleep(1.0)  # connected, consumer created, first fetch waiting
            for k in range(1, n + 1):
                await asyncio.sleep(0.02)  # idle between messages
                t0 = time.perf_counter()
                await js.publish(f"{stream}.in", orjson.dumps({**PAYLOAD, "id": k}))
                while True:
                    info = await js.consumer_info(stream, "pipeline")
                    if info.ack_floor.stream_seq >= k:
                        break
                samples.append((time.perf_counter() - t0) * 1000)
        finally:
            run.stop()
            await asyncio.wait_for(task, 30)
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
            await nc.close()
    return latency_summary(samples, n)
