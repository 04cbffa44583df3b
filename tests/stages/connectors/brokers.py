"""Helpers for connector tests: in-process runs, worker subprocesses, throwaway brokers.

The shared services (Redis on 6379, NATS on 4222) are used with unique keys per test.
A test that kills connections or restarts a broker starts its own server on a free port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis

from pipeline.engine.run import Run
from pipeline.testing import make_stage
from tests.http_helpers import ndjson_file

ROOT = Path(__file__).resolve().parents[3]


def unique(prefix: str) -> str:
    """A name no other test (or engineer) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(predicate: Callable[[], Any], timeout: float = 20.0, every: float = 0.02) -> Any:
    """Await the first truthy value of ``predicate()`` (sync or async); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


class Running:
    """One run of a pipeline in this process, in a task; ``stop`` drains it like SIGTERM."""

    def __init__(
        self,
        source: Callable[..., Any],
        params: dict[str, Any],
        sinks: Sequence[Callable[..., Any]] = (),
        *,
        transforms: Sequence[Callable[..., Any]] = (),
        sink_params: Sequence[dict[str, Any]] = (),
        dead_letter: Callable[..., Any] | None = None,
    ) -> None:
        self.envelopes: list[dict[str, Any]] = []
        stages = [
            make_stage(s, "sink", id=f"sinks[{i}]", params=(list(sink_params) + [{}] * 9)[i])
            for i, s in enumerate(sinks)
        ]
        self.run = Run(
            "test",
            make_stage(source, "source", id="source", params=params),
            [make_stage(t, id=f"transforms[{i}]") for i, t in enumerate(transforms)],
            stages,
            make_stage(dead_letter, "sink", id="dead_letter") if dead_letter else None,
            publish=lambda env, line: self.envelopes.append(env),
        )
        self.task: asyncio.Task[Any] | None = None

    def data(self) -> list[Any]:
        return [e["data"] for e in self.envelopes if e["status"] == "processing"]

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.envelopes if e["status"] == "chunk_error"]

    async def __aenter__(self) -> Running:
        self.task = asyncio.get_running_loop().create_task(self.run.execute())
        return self

    async def stop(self, timeout: float = 30.0) -> str:
        self.run.stop()
        assert self.task is not None
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        if not done:
            raise AssertionError("the run did not stop")
        reason: str = self.task.result()
        return reason

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and not self.task.done():
            await self.stop()


class Worker:
    """``pipeline run`` as a subprocess; stderr goes to a file (read with ``log``)."""

    def __init__(self, config: Path, *names: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.names = names
        self.env = {**os.environ, **(env or {})}
        self.stderr_path = config.parent / f"worker-{uuid.uuid4().hex[:8]}.log"
        self.stdout_path = self.stderr_path.with_suffix(".ndjson")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        cmd = [sys.executable, "-m", "pipeline", "run", *self.names, "-c", str(self.config)]
        cmd += ["--log-format", "json"]
        with self.stderr_path.open("wb") as err, self.stdout_path.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=err)
        return self

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.splitlines():
            if f'"{name}"' in line:
                found.append(orjson.loads(line))
        return found

    def envelopes(self) -> list[dict[str, Any]]:
        return ndjson_file(self.stdout_path)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class RedisServer:
    """A throwaway ``redis-server`` on a free port (kept on disk, so a restart keeps data)."""

    def __init__(self, tmp: Path, password: str | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tmp / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed"
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)]
        cmd += ["--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # up, and done loading its data (no LOADING)
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    client.ping()
                return self
            except redis.exceptions.ConnectionError:  # refused, or BusyLoadingError
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None


class NatsServer:
    """A throwaway ``nats-server -js`` on a free port, its store in a folder of the test."""

    def __init__(
        self, tmp: Path, user: str | None = None, password: str | None = None, port: int = 0
    ) -> None:
        self.port = port or free_port()
        self.dir = tmp / f"nats-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user, self.password = user, password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"nats://{auth}127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        exe = shutil.which("nats-server")
        assert exe, "nats-server is not installed"
        cmd = [exe, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir)]
        if self.user:
            cmd += ["--user", self.user, "--pass", str(self.password)]
        log = (self.dir / "nats.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None
