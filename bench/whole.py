"""Whole-process runs, as users run them: one process from start to exit, output to a file.

Each variant is started as its own process with stdout redirected to a file (or
``/dev/null``) and timed from spawn to exit (start-up included); the output file's data
lines are counted. The work: N readings, three per-item maps, one envelope per item
encoded with orjson, one line each (see `bench.peers`)::

    python -m bench.whole framework --n 1000000 --out file
    python -m bench.whole plain --n 1000000 --out null
    python -m bench.whole bytewax --n 1000000

- ``framework``: ``python -m pipeline run bench -c bench/configs/whole.yaml`` (N + 2 lines:
  ``starting`` and ``complete`` around the data).
- ``plain``: `bench.whole` ``loop``: one asyncio ``async for`` loop doing the same work,
  writing 256 KB blocks (the limit).
- ``bytewax``: ``python -m bytewax.run 'bench.peers:stdout_flow(N)'``.
- ``pathway``: ``python -m bench.peers pathway N`` (a Pathway graph, `bench.peers`).

Before a timed run the repository's packages are byte-compiled (`compile_bytecode`), as an
installed package is: start-up is then what a user's process pays.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import orjson

from bench.common import ENCODE_OPTS, Clock, envelope, reading
from bench.stages import enrich, keep_all, tag

PY = sys.executable
BLOCK = 256 * 1024
PEERS = {"bytewax": "the `bench` extra", "pathway": "the `pathway` extra"}
"""Peer frameworks and where to get them."""


async def _loop(n: int) -> None:
    """The limit: readings -> 3 maps -> envelope -> orjson, written in 256 KB blocks."""

    async def source() -> Any:
        for i in range(1, n + 1):
            yield reading(i)

    out = sys.stdout.buffer
    clock = Clock()
    dumps = orjson.dumps
    buf = bytearray()
    seq = 0
    async for item in source():
        data = keep_all(tag(enrich(item), unit="celsius"))
        if data is None:
            continue
        seq += 1
        buf += dumps(envelope(seq, data, clock), option=ENCODE_OPTS)
        if len(buf) >= BLOCK:
            out.write(buf)
            out.flush()
            buf.clear()
    out.write(buf)
    out.flush()


def command(variant: str, n: int) -> tuple[list[str], dict[str, str], int]:
    """argv, extra environment and expected line count of ``variant``."""
    if variant == "framework":
        argv = [PY, "-m", "pipeline", "run", "bench", "-c", "bench/configs/whole.yaml"]
        return argv, {"BENCH_N": str(n)}, n + 2
    if variant == "plain":
        return [PY, "-m", "bench.whole", "loop", "--n", str(n)], {}, n
    if variant == "bytewax":
        return [PY, "-m", "bytewax.run", f"bench.peers:stdout_flow({n})"], {}, n
    if variant == "pathway":
        return [PY, "-m", "bench.peers", "pathway", str(n)], {}, n
    msg = f"unknown variant `{variant}`"
    raise ValueError(msg)


PACKAGES = ("pipeline", "stages", "bench")
"""This repository's packages, byte-compiled before a timed run (see `compile_bytecode`)."""


def compile_bytecode() -> None:
    """Write the bytecode cache of `PACKAGES`, as ``pip install`` does for an installed
    package (Bytewax's is written at install): a user's process reads it and does not
    compile. Without it, each timed run would compile ~35 modules (~0.3 G instructions),
    e.g. under ``PYTHONDONTWRITEBYTECODE=1``; an up-to-date cache is only checked."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for package in PACKAGES:
        compileall.compile_dir(os.path.join(root, package), quiet=1)


def measure(variant: str, n: int, out: str) -> dict[str, Any]:
    """Run ``variant`` once as a process; return rate, elapsed and the line check."""
    compile_bytecode()
    if variant in PEERS:
        from bench.peers import version

        if version(variant) is None:
            return {"ok": False, "skipped": f"{variant} is not installed ({PEERS[variant]})"}
    argv, env, expect = command(variant, n)
    with tempfile.NamedTemporaryFile(prefix="bench-whole-", suffix=".ndjson") as fh:
        target = fh.name if out == "file" else os.devnull
        with open(target, "wb") as sink:
            t0 = time.perf_counter()
            proc = subprocess.run(
                argv,
                stdout=sink,
                stderr=subprocess.PIPE,
                env={**os.environ, **env},
                timeout=600,
                check=False,
            )
            elapsed = time.perf_counter() - t0
        lines = None
        if out == "file":
            with open(target, "rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    error = None
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        error = f"exit code {proc.returncode}: {' | '.join(tail)}"
    elif lines is not None and lines != expect:
        error = f"expected {expect} lines, got {lines}"
    return {
        "ok": error is None,
        "error": error,
        "lines": lines,
        "elapsed": elapsed,
        "rate": n / elapsed if elapsed > 0 else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: print one JSON object (``loop``: run the plain loop itself, to stdout)."""
    ap = argparse.ArgumentParser(prog="python -m bench.whole")
    ap.add_argument("variant", choices=["framework", "plain", "bytewax", "pathway", "loop"])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--out", choices=["file", "null"], default="file")
    args = ap.parse_args(argv)
    if args.variant == "loop":
        asyncio.run(_loop(args.n))
        return 0
    sys.stdout.write(orjson.dumps(measure(args.variant, args.n, args.out)).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
