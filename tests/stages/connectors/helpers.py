"""Helpers for connector tests: bounded in-process runs and `pipeline run` workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pipeline.engine.run import Run
from pipeline.testing import make_stage
from pipeline.types import Envelope

ROOT = Path(__file__).resolve().parents[3]


async def run_until(
    source: Any,
    params: dict[str, Any],
    done: Callable[[list[Envelope]], bool],
    *,
    sinks: list[Any] = (),  # type: ignore[assignment]
    dead_letter: Any = None,
    timeout: float = 20.0,
) -> list[Envelope]:
    """Run an endless source until ``done(envelopes)``, then stop it gracefully."""
    envelopes: list[Envelope] = []
    changed = asyncio.Event()

    def publish(env: Envelope, line: bytes) -> None:
        envelopes.append(env)
        changed.set()

    run = Run(
        "test",
        make_stage(source, "source", id="source:test", params=params),
        [],
        [make_stage(s, "sink", id=f"sinks[{i}]") for i, s in enumerate(sinks)],
        make_stage(dead_letter, "sink", id="dead_letter") if dead_letter is not None else None,
        publish=publish,
    )
    task = asyncio.create_task(run.execute())
    try:
        async with asyncio.timeout(timeout):
            while not done(envelopes) and not task.done():
                changed.clear()
                waiter = asyncio.ensure_future(changed.wait())
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
    finally:
        run.stop()
        async with asyncio.timeout(timeout):
            await task
    return envelopes


def data_of(envelopes: list[Envelope]) -> list[Any]:
    return [e["data"] for e in envelopes if e["status"] == "processing"]


class Worker:
    """``pipeline run NAME -c CONFIG`` as a subprocess writing envelopes to a file."""

    def __init__(self, config: Path, name: str, out: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.out = out
        self.fh = out.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", name, "-c", str(config)],
            cwd=ROOT,
            env=env,
            stdout=self.fh,
            stderr=subprocess.PIPE,
        )

    def envelopes(self) -> list[Envelope]:
        lines = self.out.read_bytes().splitlines()
        return [orjson.loads(line) for line in lines if line.endswith(b"}")]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.fh.close()

    def stop(self) -> str:
        """SIGTERM; returns stderr; asserts a clean exit."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        self.fh.close()
        assert self.proc.returncode == 0, err.decode()
        return err.decode()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.fh.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def write_config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path
