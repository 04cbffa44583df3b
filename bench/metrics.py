"""What scraping the metrics costs: the same run with a scrape every second, and without.

Two pairs, measured round-robin in one run (repetition r runs both variants of a pair,
the order alternating), so the ratio is a same-run ratio:

- **in-process**: the 3-transform engine run of `bench.inproc` (``engine3``), with and
  without a task in the same event loop rendering the Prometheus text of the run's
  counters once a second (exactly what ``GET /metrics`` does in the server's loop);
- **HTTP**: ``pipeline run --serve -c bench/configs/http.yaml`` read by `bench.client`,
  with and without a thread doing ``GET /metrics`` once a second meanwhile.

Target: the scraped variant at most 3 % slower (ratio >= 0.97)::

    python -m bench.metrics                  # N = 500 000 in-process, 300 000 over HTTP
    python -m bench.metrics --reps 3 --n 200000 --http-n 200000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import orjson

from bench.common import HOST, cpu_plan, free_port, reading
from bench.harness import ROOT, run_json, start_server
from bench.inproc import THREE, LineSink

SCRAPE_EVERY = 1.0


async def engine3(n: int, scrape: bool) -> tuple[int, float, int, float]:
    """One engine run of ``n`` readings: (envelopes, seconds, scrapes, seconds scraping)."""
    from pipeline.engine.run import Run
    from pipeline.meter import PipelineMeter
    from pipeline.server.metrics import PipelineCollector, metrics_text, registry_for
    from pipeline.testing import make_stage

    async def readings(count: int) -> AsyncIterator[dict[str, Any]]:
        for i in range(1, count + 1):
            yield reading(i)

    sink = LineSink()
    meter = PipelineMeter("bench")
    run = Run(
        "bench",
        make_stage(readings, "source"),
        [make_stage(t, "transform", id=f"t{i}") for i, t in enumerate(THREE)],
        [],
        publish=sink.publish,
        source_params={"count": n},
        meter=meter,
    )
    collector = PipelineCollector(
        lambda: {"bench": meter}, lambda _: run.state, lambda _: {}, lambda _: 0, lambda _: 0
    )
    registry = registry_for(collector)
    scrapes: list[Any] = [0, 0.0]  # count, seconds spent rendering

    async def scraper() -> None:
        while True:
            await asyncio.sleep(SCRAPE_EVERY)
            started = time.perf_counter()
            metrics_text(registry)
            scrapes[0] += 1
            scrapes[1] += time.perf_counter() - started

    task = asyncio.get_running_loop().create_task(scraper()) if scrape else None
    t0 = time.perf_counter()
    try:
        await run.execute()
    finally:
        elapsed = time.perf_counter() - t0
        if task is not None:
            task.cancel()
    return sink.count, elapsed, scrapes[0], scrapes[1]


def inproc_main(n: int, scrape: bool) -> None:
    """Child process: one in-process measurement, one JSON line on stdout."""
    count, elapsed, scrapes, spent = asyncio.run(engine3(n, scrape))
    ok = count == n
    out = {"ok": ok, "rate": count / elapsed, "elapsed": elapsed, "scrapes": scrapes}
    out["scrape_ms"] = 1000 * spent / scrapes if scrapes else 0.0
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


class Scraper(threading.Thread):
    """``GET /metrics`` once a second until stopped; counts the scrapes that answered 200."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://{HOST}:{port}/metrics"
        self.stop = threading.Event()
        self.done = 0

    def run(self) -> None:
        while not self.stop.wait(SCRAPE_EVERY):
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                resp.read()
                self.done += resp.status == 200


def _pairs(reps: int, measure: Any) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"plain": [], "scraped": []}
    for r in range(reps):
        order = ("plain", "scraped") if r % 2 == 0 else ("scraped", "plain")
        for variant in order:
            res = measure(variant == "scraped")
            if not res.get("ok"):
                raise SystemExit(f"{variant}: {res}")
            out[variant].append(res)
            sys.stderr.write(
                f"  {variant:8} rep {r + 1}: {res['rate']:,.0f}/s, {res.get('scrapes', 0)} "
                f"scrapes ({res.get('scrape_ms', 0):.2f} ms each)\n"
            )
    return out


def _report(title: str, got: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    plain = statistics.median(r["rate"] for r in got["plain"])
    scraped = statistics.median(r["rate"] for r in got["scraped"])
    ratio = scraped / plain
    each = [r["scrape_ms"] for r in got["scraped"] if r.get("scrape_ms")]
    if each:
        print(f"{title}: one scrape renders in {statistics.median(each):.2f} ms (median)")
    verdict = "ok" if ratio >= 0.97 else "MISSED"
    print(
        f"{title}: plain {plain:,.0f}/s, scraped {scraped:,.0f}/s, "
        f"ratio {ratio:.3f} (target >= 0.97: {verdict})"
    )
    return {"plain": plain, "scraped": scraped, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    """Measure both pairs; print one line each and a JSON summary."""
    ap = argparse.ArgumentParser(prog="python -m bench.metrics")
    ap.add_argument("--n", type=int, default=500_000, help="readings per in-process run")
    ap.add_argument("--http-n", type=int, default=300_000, help="readings per HTTP run")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", choices=["plain", "scraped"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        inproc_main(args.n, args.child == "scraped")
        return 0
    server_cpu, client_cpu = cpu_plan()
    py = sys.executable

    def inproc(scrape: bool) -> dict[str, Any]:
        argv = [py, "-m", "bench.metrics", "--n", str(args.n)]
        argv += ["--child", "scraped" if scrape else "plain"]
        return run_json(argv, cpu=server_cpu, timeout=600)

    sys.stderr.write("in-process (engine, 3 transforms):\n")
    results = {"inproc": _report("in-process", _pairs(args.reps, inproc))}

    port = free_port()
    config = str(ROOT / "bench" / "configs" / "http.yaml")
    argv = [py, "-m", "pipeline", "run", "--serve", "-c", config, "--port", str(port)]
    logdir = ROOT / "bench" / "results"
    env = {"BENCH_N": str(args.http_n), "BENCH_INTERVAL": "0"}
    server = start_server(
        "metrics", argv, env, port=port, cpu=server_cpu, logdir=logdir, ready_timeout=30
    )
    try:

        def http(scrape: bool) -> dict[str, Any]:
            scraper = Scraper(port) if scrape else None
            if scraper is not None:
                scraper.start()
            url = f"http://{HOST}:{port}/pipelines/bench/stream?since=0"
            client = [py, "-m", "bench.client", url, "--expect", str(args.http_n + 2)]
            try:
                res = run_json(client, cpu=client_cpu, timeout=600)
            finally:
                if scraper is not None:
                    scraper.stop.set()
                    scraper.join(15)
            res["scrapes"] = scraper.done if scraper is not None else 0
            return res

        sys.stderr.write("HTTP (pipeline run --serve, 3 transforms, one client):\n")
        results["http"] = _report("HTTP", _pairs(args.reps, http))
    finally:
        server.stop()
    print(orjson.dumps({"n": args.n, "http_n": args.http_n, "reps": args.reps, **results}).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
