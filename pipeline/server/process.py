"""Run the server: uvicorn, programmatically, with a shutdown that ends every stream.

uvicorn waits for open responses on SIGTERM, and our streams never end by themselves.
`PipelineServer` therefore turns the first SIGINT/SIGTERM into a drain::

    signal ─► supervisor.shutdown()   sources stop; in-flight chunks get shutdown_timeout;
              │                        every run ends with complete(reason=shutdown);
              │                        sinks flushed and closed
              ├► streams.close_hubs()  every stream ends after what it can still read
              └► should_exit = True    uvicorn stops listening, waits for the streams
                                       (bounded by timeout_graceful_shutdown), exits 0

A second signal exits at once with status 1. Whatever the stages do, the process is gone
``shutdown_timeout`` + 1 s after the first signal (`pipeline.engine.deadline`). SIGHUP
(and, with ``--reload``, a change to a watched file) reloads the config: see
`pipeline.server.reload`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine, Generator, Mapping
from types import FrameType
from typing import Any

import uvicorn

from pipeline.config.models import Config
from pipeline.config.snapshot import Snapshot
from pipeline.engine import deadline
from pipeline.engine.supervisor import Supervisor
from pipeline.log import get_logger, mask
from pipeline.server.app import ServerState, create_app, make_hub
from pipeline.server.protocol import JSONWebSockets, limited
from pipeline.server.reload import Reloader
from pipeline.server.streams import install_cut_filter

__all__ = ["GRACE", "PipelineServer", "bind", "build", "serve"]

GRACE = 0.5
"""Seconds uvicorn waits for streams after the drain before it cancels them (backstop)."""

_SECRET_QUERY = re.compile(
    r"([?&][^=&\s]*(?:token|key|secret|password|auth)[^=&\s]*=)[^&\s]*", re.I
)


class _Scrub(logging.Filter):
    """Mask secrets in uvicorn's log lines: every registered secret (the tokens, also
    those a reload brought) and secret-looking query values."""

    def _clean(self, value: str) -> str:
        return mask(_SECRET_QUERY.sub(r"\1***", value))

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self._clean(record.msg)
        return True


class PipelineServer(uvicorn.Server):
    """uvicorn's `Server`, whose exit signal drains the pipelines and their streams first."""

    def __init__(
        self,
        config: uvicorn.Config,
        streams: ServerState,
        start: list[str],
        reloader: Reloader | None = None,
        *,
        watch: bool = False,
    ) -> None:
        super().__init__(config)
        self.streams = streams
        self.start = start
        self.reloader = reloader
        self.watch = watch
        self._stop_watch = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.log = get_logger()
        self.address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self._signals = 0

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until told to stop; tasks left at the end are not waited for forever."""
        deadline.run(self.serve(sockets=sockets), loop_factory=self.config.get_loop_factory())

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then the pipelines; log ``listening`` with the real port."""
        self._loop = asyncio.get_running_loop()
        deadline.install_executor(self._loop)
        await super().startup(sockets)
        if not self.started:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        self.address = (host, port)
        self.streams.supervisor.start(self.start)
        if self.reloader is not None and self.watch:
            self._spawn(self.reloader.watch(self._stop_watch))
        self.log.info("listening", host=host, port=port, url=f"http://{_netloc(host, port)}")
        if self.streams.pipelines:
            self.log.info("watch_with", **_watch_hints(self.streams, host, port))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def handle_hup(self, sig: int, frame: FrameType | None) -> None:
        """SIGHUP: reload the config (from the loop; a signal handler neither logs nor locks)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._begin_reload, "SIGHUP")

    def _begin_reload(self, trigger: str) -> None:
        if self.reloader is not None and self._drain is None:
            self._spawn(self.reloader.reload(trigger))

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Like uvicorn's, but the signal is not raised again afterwards (we exit 0), and
        our SIGINT/SIGTERM handlers stay: a signal while the process ends exits 1 at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        old = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        if self.reloader is not None:
            old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self.handle_hup)
        try:
            yield
        finally:
            for sig, handler in old.items():
                if sig not in sigs:
                    signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain. Second: exit now, with status 1.

        This runs as a Python signal handler, between two bytecodes of whatever the main
        thread was doing (perhaps holding the log's lock): it neither logs nor locks.
        """
        self._signals += 1
        name = signal.Signals(sig).name
        if self._signals > 1:
            os.write(2, b'{"event":"forced_exit","signal":"%s"}\n' % name.encode())
            os._exit(1)
        deadline.arm(self.streams.supervisor.shutdown_timeout + 1.0)
        self.request_drain(name)

    def request_drain(self, reason: str = "requested") -> None:
        """Start the drain (thread-safe; idempotent)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.should_exit = True
            return
        loop.call_soon_threadsafe(self._begin_drain, reason)

    def _begin_drain(self, reason: str) -> None:
        if self._drain is None:
            self.log.info("drain_started", signal=reason)
            self._drain = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        """Stop every run, end every stream, then let uvicorn finish."""
        self._stop_watch.set()
        try:
            await self.streams.supervisor.shutdown()
        except Exception:
            self.log.exception("shutdown_failed")
        finally:
            self.streams.close_hubs()
            self.should_exit = True


def _watch_hints(streams: ServerState, host: str, port: int) -> dict[str, str]:
    """How to follow the first pipeline: with curl, with ``pipeline tail``, in a browser."""
    name = next(iter(streams.pipelines))
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    base = f"http://{_netloc(shown, port)}"
    auth = ' -H "Authorization: Bearer $PIPELINE_TOKEN"' if streams.settings.token else ""
    same = (streams.settings.host, streams.settings.port) == (host, port)
    return {
        "curl": f"curl -N{auth} {base}/pipelines/{name}/stream?since=0",
        "tail": f"pipeline tail {name if same else f'{base}/pipelines/{name}'}",
        "page": f"{base}/",
    }


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int) -> socket.socket:
    """Open the listening socket ourselves, so a port in use is a clear error.

    Raises:
        OSError: the address cannot be bound (in use, not ours, unknown host).
    """
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def build(
    cfg: Config,
    resolved: Mapping[str, Any],
    *,
    names: list[str] | None = None,
    send_timeout: float | None = None,
    current: Snapshot | None = None,
    take: Callable[[Snapshot], Snapshot] | None = None,
    watch: bool = False,
) -> PipelineServer:
    """Make the supervisor, the hubs, the app and the server (nothing runs yet).

    ``names`` picks the pipelines served (default: all); the ``trigger: start`` ones
    among them start with the server. With ``current`` and ``take`` (load the config
    again), SIGHUP reloads it, and so does every change of a watched file with ``watch``.
    """
    settings = cfg.server
    picked = {n: resolved[n] for n in (names or list(resolved))}
    hubs = {
        n: make_hub(n, rp.config, settings)
        for n, rp in picked.items()
        if rp.config.trigger == "start"
    }
    sup = Supervisor(picked, feeds=hubs, shutdown_timeout=settings.shutdown_timeout, inlets=True)
    extra = {} if send_timeout is None else {"send_timeout": send_timeout}
    streams = ServerState(sup, picked, hubs, settings, **extra)
    config = uvicorn.Config(
        create_app(streams),
        loop="auto",
        http=limited(settings.max_head_bytes, settings.max_headers, settings.head_timeout),
        ws=JSONWebSockets,
        lifespan="off",
        log_config=None,
        access_log=True,
        server_header=False,
        timeout_graceful_shutdown=GRACE,  # type: ignore[arg-type]  # a float works (wait_for)
    )
    reloader = None
    if current is not None and take is not None:
        reloader = Reloader(streams, current, take, names=names)
    return PipelineServer(config, streams, list(hubs), reloader, watch=watch)


def serve(
    cfg: Config,
    resolved: Mapping[str, Any],
    *,
    names: list[str] | None = None,
    host: str | None = None,
    port: int | None = None,
    current: Snapshot | None = None,
    take: Callable[[Snapshot], Snapshot] | None = None,
    watch: bool = False,
) -> int:
    """Serve until SIGINT/SIGTERM; return the exit code (0, or 2 if it cannot listen).

    ``current``, ``take`` and ``watch`` enable reloading (see `build`).
    """
    host = cfg.server.host if host is None else host
    port = cfg.server.port if port is None else port
    try:
        sock = bind(host, port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        in_use = exc.errno == errno.EADDRINUSE
        hint = " (is another server running there? try --port 0)" if in_use else ""
        print(
            mask(f"pipeline run --serve: cannot listen on {_netloc(host, port)}: {reason}{hint}"),
            file=sys.stderr,
        )
        return 2
    server = build(cfg, resolved, names=names, current=current, take=take, watch=watch)
    scrub = _Scrub()
    install_cut_filter()
    for handler in logging.getLogger().handlers:  # every record: uvicorn, httpx, ...
        handler.addFilter(scrub)
    # What start-up made (modules, the app, the resolved config: ~45 k objects) lives as
    # long as the process: out of the collector's sight, a full collection takes
    # microseconds instead of ~7 ms, a pause every stream would see in its latency.
    gc.collect()
    gc.freeze()
    with sock:
        server.run(sockets=[sock])
    return 0
