"""Process plumbing: start servers, wait until they listen, run clients, always clean up.

Servers run from the repository root in their own session, pinned to the server CPU;
clients and in-process runs are separate processes pinned to their CPU. Every wait is
bounded; every process started here is stopped in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.common import HOST, free_port, proc_status
from bench.variants import HttpVariant, Params

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartError(Exception):
    """A server did not start; the message says why (shown as *skipped*)."""


def _pinner(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _tail(path: Path, lines: int = 2) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


@dataclass(slots=True)
class Server:
    """A started server process."""

    key: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far (all its threads)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group after 5 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def start_server(
    key: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    port: int,
    cpu: int | None,
    logdir: Path,
    ready_timeout: float,
) -> Server:
    """Start ``argv`` and wait until it listens on ``port``; raise `StartError` if not."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"server-{key}.log"
    with log.open("wb") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_pinner(cpu),
                start_new_session=True,
            )
        except OSError as exc:
            raise StartError(f"cannot run {argv[0]}: {exc}") from None
    server = Server(key, port, proc, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"server exited with code {proc.returncode}: {_tail(log)}")
        if _listening(port):
            return server
        time.sleep(0.05)
    server.stop()
    raise StartError(f"server did not listen within {ready_timeout} s: {_tail(log)}")


@contextlib.contextmanager
def servers_for(
    variants: Sequence[HttpVariant], params: Params, *, cpu: int | None, logdir: Path
) -> Iterator[dict[str, Server | str]]:
    """Start one server per distinct ``server_key``; yield key -> `Server` or skip reason."""
    started: dict[str, Server | str] = {}
    try:
        for v in variants:
            key = v.server_key or v.name
            if key in started:
                continue
            port = free_port()
            try:
                started[key] = start_server(
                    key,
                    v.command(port),
                    v.env(params),
                    port=port,
                    cpu=cpu,
                    logdir=logdir,
                    ready_timeout=v.ready_timeout,
                )
            except StartError as exc:
                started[key] = str(exc)
        yield started
    finally:
        for s in started.values():
            if isinstance(s, Server):
                s.stop()


def run_json(argv: Sequence[str], *, cpu: int | None, timeout: float) -> dict[str, Any]:
    """Run a measuring process; return the JSON object on its last stdout line."""
    proc = subprocess.Popen(
        list(argv),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_pinner(cpu),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"ok": False, "error": f"measurement timed out after {timeout} s"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        res = orjson.loads(lines[-1])
    except (IndexError, orjson.JSONDecodeError):
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        return {"ok": False, "error": f"exit code {proc.returncode}: {' | '.join(tail)}"}
    return res if isinstance(res, dict) else {"ok": False, "error": "not a JSON object"}


def measure_http(
    v: HttpVariant,
    server: Server,
    params: Params,
    *,
    cpu: int | None,
    client_args: Sequence[str] = (),
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Read ``v``'s stream once with `bench.client`; add the server's CPU share."""
    url = f"http://{HOST}:{server.port}{v.path(params)}"
    argv = ["-m", "bench.client", url, "--expect", str(v.expect(params))]
    if params.clients > 1:
        argv += ["-k", str(params.clients)]
    argv += ["--deadline", str(timeout - 30), *client_args]
    cpu0 = server.cpu_seconds()
    res = run_json([sys.executable, *argv], cpu=cpu, timeout=timeout)
    cpu1 = server.cpu_seconds()
    mem = proc_status(server.proc.pid)
    if mem:  # after the read; the peak is over the server's whole life (shared by reps)
        res["server_rss"], res["server_hwm"] = mem.get("VmRSS", 0), mem.get("VmHWM", 0)
    elapsed = res.get("elapsed")
    if isinstance(elapsed, float) and elapsed > 0:
        res["server_cpu_frac"] = (cpu1 - cpu0) / elapsed
        res["client_cpu_frac"] = float(res.get("client_cpu", 0.0)) / elapsed
    if server.proc.poll() is not None and res.get("ok"):
        res = {"ok": False, "error": f"server died: {_tail(server.log)}"}
    return res
