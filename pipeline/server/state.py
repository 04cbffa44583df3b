"""The server's registry (`ServerState`): what it serves and the streams open right now.

It checks each stream request (auth, ``since``, ``max_clients``, request parameters),
reserves its slot and frees it when the stream's connection is gone; at
``max_clients`` it evicts the stream idle longest (``server.evict_idle_after``,
docs/http.md). Routes live in `pipeline.server.app`, stream bodies in
`pipeline.server.streams`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection

from pipeline.config.loader import TRANSPORT_KEYS, ResolvedPipeline, request_params
from pipeline.config.models import PipelineConfig, ServerConfig
from pipeline.engine.supervisor import Supervisor
from pipeline.errors import StageParamsError
from pipeline.hub.hub import BadSince, Hub, parse_since
from pipeline.server.auth import Auth, Refusal
from pipeline.server.metrics import (
    TRANSPORTS,
    LoopCollector,
    PipelineCollector,
    ReloadCollector,
    metrics_text,
    registry_for,
    snapshot,
)
from pipeline.server.reload_status import ReloadStatus
from pipeline.server.streams import StreamOptions

__all__ = ["SEND_TIMEOUT", "NothingNew", "ServerState", "make_hub", "retention"]

SEND_TIMEOUT = 30.0
"""Seconds one write to a client may take before the connection is cut."""


def retention(pipeline: PipelineConfig) -> tuple[int, int]:
    """A pipeline's ``(retain, retain_bytes)``: its hub is kept across a reload if they match."""
    return pipeline.retain, pipeline.retain_bytes


def make_hub(name: str, pipeline: PipelineConfig, settings: ServerConfig) -> Hub:
    """The hub of pipeline ``name``: its retention and the server's client buffers."""
    return Hub(
        name,
        retain=pipeline.retain,
        retain_bytes=pipeline.retain_bytes,
        client_buffer=settings.client_buffer,
        client_buffer_bytes=settings.client_buffer_bytes,
    )


class NothingNew(Exception):
    """An SSE reconnect from the last envelope of a run that has ended (becomes 204)."""


class ServerState:
    """What the app serves, and the streams open right now (for limits and shutdown)."""

    def __init__(
        self,
        supervisor: Supervisor,
        pipelines: Mapping[str, ResolvedPipeline],
        hubs: Mapping[str, Hub],
        settings: ServerConfig,
        *,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.supervisor = supervisor
        self.pipelines = dict(pipelines)
        self.hubs = dict(hubs)
        self.send_timeout = send_timeout
        self.open = 0
        self.idle: dict[StreamOptions, str] = {}
        """Open streams of ``trigger: start`` pipelines (those that may be evicted) and
        their pipelines, oldest first (a tie in idle time evicts the older stream)."""
        self.evicted: dict[str, int] = dict.fromkeys(pipelines, 0)
        """Idle streams evicted per pipeline to make room for a new client, so far."""
        self.request_hubs: set[Hub] = set()
        self.request_clients: dict[str, int] = dict.fromkeys(pipelines, 0)
        self.request_dropped: dict[str, int] = dict.fromkeys(pipelines, 0)
        self.transports = {n: dict.fromkeys(TRANSPORTS, 0) for n in pipelines}
        self.reloads = ReloadStatus()
        self._registry: Any = None
        self.configure(settings)

    def configure(self, settings: ServerConfig) -> None:
        """Use these ``server:`` settings from now on (at start, and on a reload).

        Tokens apply to the next request (a session cookie of an old token no longer
        does); ``heartbeat`` and ``max_clients`` to the next stream; ``shutdown_timeout``
        to the next drain. The others are read once, at start.
        """
        self.settings = settings
        self.auth = Auth(settings.token, settings.cors_origins)
        self.metrics_auth = Auth(settings.metrics_token, settings.cors_origins)
        self.supervisor.shutdown_timeout = settings.shutdown_timeout

    def update(self, pipelines: Mapping[str, ResolvedPipeline], hubs: Mapping[str, Hub]) -> None:
        """Serve a reloaded set of pipelines; ``hubs`` replaces the hubs it names.

        A client already streaming keeps its hub (its run ends with ``complete``).
        """
        self.pipelines = dict(pipelines)
        self.hubs = {
            n: hubs.get(n) or self.hubs[n]
            for n, rp in self.pipelines.items()
            if rp.config.trigger == "start" and (n in hubs or n in self.hubs)
        }
        for name in self.pipelines:
            self.request_clients.setdefault(name, 0)
            self.request_dropped.setdefault(name, 0)
            self.evicted.setdefault(name, 0)
            self.transports.setdefault(name, dict.fromkeys(TRANSPORTS, 0))

    def close_hubs(self) -> None:
        """End every open stream once it has drained (shutdown, after the runs ended)."""
        for hub in (*self.hubs.values(), *self.request_hubs):
            hub.close()

    def authorized(self, conn: HTTPConnection) -> bool:
        """Whether the request carries the bearer token or the session cookie."""
        return self.auth.authorized(conn)

    def metrics_authorized(self, conn: HTTPConnection) -> bool:
        """Whether ``GET /metrics`` may be served (``server.metrics_token``, if set)."""
        return self.metrics_auth.authorized(conn)

    def dropped(self, name: str) -> int:
        """Clients of pipeline ``name`` dropped for falling behind, so far."""
        hub = self.hubs.get(name)
        return self.request_dropped[name] + (hub.dropped_clients if hub is not None else 0)

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus text of every pipeline's counters, read now."""
        if self._registry is None:
            sup = self.supervisor
            collector = PipelineCollector(
                lambda: {n: sup.meter(n) for n in self.pipelines},
                lambda n: str(sup.state(n)["state"]),
                self.transports.__getitem__,
                self.dropped,
                self.evicted.__getitem__,
            )
            watchdog = sup.watchdog
            loop = LoopCollector(lambda: (watchdog.lag_s, watchdog.max_lag_s))
            self._registry = registry_for(collector, ReloadCollector(self.reloads), loop)
        return metrics_text(self._registry)

    def state(self, name: str) -> dict[str, Any]:
        """The JSON state of one pipeline, with its clients and its ``metrics``."""
        out = self.supervisor.state(name)
        hub = self.hubs.get(name)
        if hub is not None:
            out |= {
                "clients": hub.clients,
                "dropped_clients": hub.dropped_clients,
                "last_seq": hub.last_seq,
                "held_bytes": hub.held_bytes,
            }
        else:
            out |= {
                "clients": self.request_clients[name],
                "dropped_clients": self.request_dropped[name],
                "last_seq": None,
                "held_bytes": sum(h.held_bytes for h in self.request_hubs if h.name == name),
            }
        out["metrics"] = snapshot(out, self.supervisor.meter(name), self.transports[name])
        return out

    def open_stream(self, conn: HTTPConnection, *, sse: bool = False) -> tuple[Hub, StreamOptions]:
        """Check one stream request and reserve its slot; raise `Refusal` if refused."""
        if conn.scope["type"] == "websocket":
            self.auth.check_origin(conn)
        if not self.authorized(conn):
            raise Refusal(401, "unauthorized", "missing or wrong bearer token")
        name = conn.path_params["name"]
        rp = self._pipeline(name)
        since = conn.query_params.get("since")
        reconnect = sse and "last-event-id" in conn.headers
        if reconnect:
            since = conn.headers["last-event-id"]
        try:
            want = parse_since(since)
        except BadSince as exc:
            raise Refusal(400, "bad_since", str(exc)) from None
        if reconnect and want is not None and self._nothing_newer(rp, *want):
            raise NothingNew
        if self.open >= self.settings.max_clients and not self._evict_idle():
            msg = f"too many clients: {self.settings.max_clients} streams are open"
            raise Refusal(503, "too_many_clients", msg)
        if rp.config.trigger == "request":
            hub, opts = self._request_stream(rp, conn)
        else:
            _no_params(conn.query_params)
            hub, opts = self.hubs[name], self._options(since, conn, None)
            self.idle[opts] = name
        self.open += 1
        self._count_client(name, conn, sse, opts)
        return hub, opts

    def _evict_idle(self) -> bool:
        """Free the slot of the stream idle longest (nothing but heartbeats for at least
        ``evict_idle_after`` s); return whether one was freed.

        Only streams of ``trigger: start`` pipelines are evicted (a ``trigger: request``
        run lives as long as its client). The evicted stream stops counting at once; its
        client gets ``lagged(reason=evicted)`` with a ``resume`` token and may reconnect.
        """
        after = self.settings.evict_idle_after
        if after is None:
            return False
        now = asyncio.get_running_loop().time()
        ready = [o for o in self.idle if o.evict is not None and now - o.active_at >= after]
        if not ready:
            return False
        victim = min(ready, key=lambda o: o.active_at)  # the first of equals: the oldest
        assert victim.evict is not None
        self.evicted[self.idle.pop(victim)] += 1
        victim.evict()  # logs `client_evicted`
        self.open -= 1
        return True

    def _nothing_newer(self, rp: ResolvedPipeline, run: str | None, seq: int) -> bool:
        """Whether a reconnect from ``RUN:SEQ`` names a run that ended with nothing newer.

        A ``trigger: request`` run lives as long as its one client: a reconnect names a
        run that is over, and is not run again (SPEC §6).
        """
        if run is None:
            return False
        if rp.config.trigger == "request":
            return all(hub.run != run for hub in self.request_hubs)
        return self.hubs[rp.name].finished(run, seq)

    def _count_client(
        self, name: str, conn: HTTPConnection, sse: bool, opts: StreamOptions
    ) -> None:
        """Count the stream under its transport until it closes."""
        transport = "ws" if conn.scope["type"] == "websocket" else "sse" if sse else "ndjson"
        counts = self.transports[name]
        counts[transport] += 1
        inner = opts.on_close

        def closed() -> None:
            counts[transport] -= 1
            if inner is not None:
                inner()

        opts.on_close = closed

    def _pipeline(self, name: str) -> ResolvedPipeline:
        rp = self.pipelines.get(name)
        if rp is None:
            raise Refusal(404, "not_found", f"unknown pipeline `{name}`")
        return rp

    def _options(self, since: str | None, conn: HTTPConnection, rp: Any) -> StreamOptions:
        opts = StreamOptions(
            since=since,
            heartbeat=self.settings.heartbeat,
            send_timeout=self.send_timeout,
            gzip=conn.scope["type"] == "http"
            and _accepts_gzip(conn.headers.get("accept-encoding")),
        )

        def closed() -> None:
            if opts in self.idle:  # an evicted stream stopped counting when evicted
                self.open -= 1
                del self.idle[opts]

        opts.on_close = closed
        return opts

    def _request_stream(
        self, rp: ResolvedPipeline, conn: HTTPConnection
    ) -> tuple[Hub, StreamOptions]:
        """A fresh hub and run for one client of a ``trigger: request`` pipeline."""
        if self.supervisor.shutting_down:
            raise Refusal(503, "shutting_down", "the server is shutting down")
        try:
            params = request_params(rp, conn.query_params)
        except StageParamsError as exc:
            raise Refusal(400, "bad_request_params", str(exc)) from None
        name = rp.name
        hub = make_hub(name, rp.config, self.settings)
        opts = self._options(None, conn, rp)

        async def run(hub: Hub) -> object:
            return await self.supervisor.run_request(name, hub, params)

        def closed() -> None:
            self.open -= 1
            self.request_hubs.discard(hub)
            self.request_clients[name] -= 1
            self.request_dropped[name] += hub.dropped_clients

        opts.run, opts.on_close = run, closed
        self.request_hubs.add(hub)
        self.request_clients[name] += 1
        return hub, opts


def _no_params(query: Mapping[str, str]) -> None:
    for key in query:
        if key not in TRANSPORT_KEYS:
            msg = f"undeclared request parameter `{key}`"
            raise Refusal(400, "bad_request_params", msg)


def _accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip (``q=0`` refuses it)."""
    for part in (header or "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().lower().removeprefix("q=")
        try:
            return not q or float(q) > 0
        except ValueError:
            return False
    return False
