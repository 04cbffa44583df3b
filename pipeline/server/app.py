"""The HTTP surface (SPEC §6): routes, auth, errors, CORS and ``max_clients``.

`create_app` builds a Starlette app over a `ServerState` registry (the supervisor, the
resolved pipelines, one hub per ``trigger: start`` pipeline, the ``server:`` settings).
Stream bodies live in `pipeline.server.streams`. Every error is JSON,
``{"error": {"type": ..., "message": ...}}``, sent before any byte of a body; nothing
after the first byte can become an HTTP error (failures travel as envelopes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from pipeline.config.loader import TRANSPORT_KEYS, ResolvedPipeline, request_params
from pipeline.config.models import PipelineConfig, ServerConfig
from pipeline.engine.supervisor import Supervisor
from pipeline.errors import StageParamsError
from pipeline.hub.hub import BadSince, Hub, parse_since
from pipeline.log import get_logger
from pipeline.server import dashboard
from pipeline.server.auth import Auth, Refusal
from pipeline.server.ingest import IngestRefused, receive
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
from pipeline.server.streams import (
    JSONLStream,
    NDJSONStream,
    SSEStream,
    StreamOptions,
    WebSocketStream,
)

__all__ = ["SEND_TIMEOUT", "ServerState", "create_app", "error", "make_hub", "retention"]

SEND_TIMEOUT = 30.0
"""Seconds one write to a client may take before the connection is cut."""

_STATUS_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    426: "upgrade_required",
    503: "unavailable",
}


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


class _NothingNew(Exception):
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
            raise _NothingNew
        if self.open >= self.settings.max_clients:
            msg = f"too many clients: {self.settings.max_clients} streams are open"
            raise Refusal(503, "too_many_clients", msg)
        if rp.config.trigger == "request":
            hub, opts = self._request_stream(rp, conn)
        else:
            _no_params(conn.query_params)
            hub, opts = self.hubs[name], self._options(since, conn, None)
        self.open += 1
        self._count_client(name, conn, sse, opts)
        return hub, opts

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
        return StreamOptions(
            since=since,
            heartbeat=self.settings.heartbeat,
            send_timeout=self.send_timeout,
            gzip=conn.scope["type"] == "http"
            and _accepts_gzip(conn.headers.get("accept-encoding")),
            on_close=self._closed,
        )

    def _closed(self) -> None:
        self.open -= 1

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


def error(
    status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The JSON error every failure gets: ``{"error": {"type": ..., "message": ...}}``."""
    body = {"error": {"type": kind, "message": message}}
    if status == 401:
        headers = {**(headers or {}), "www-authenticate": "Bearer"}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(streams: ServerState) -> Starlette:
    """Build the Starlette app serving ``streams`` (see the module docstring)."""
    log = get_logger()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def list_pipelines(request: Request) -> Response:
        if not streams.authorized(request):
            return error(401, "unauthorized", "missing or wrong bearer token")
        return JSONResponse(
            {
                "pipelines": [streams.state(n) for n in streams.pipelines],
                "reload": streams.reloads.as_json(),
            }
        )

    async def one_pipeline(request: Request) -> Response:
        if not streams.authorized(request):
            return error(401, "unauthorized", "missing or wrong bearer token")
        name = request.path_params["name"]
        if name not in streams.pipelines:
            return error(404, "not_found", f"unknown pipeline `{name}`")
        return JSONResponse(streams.state(name))

    async def ndjson(request: Request) -> Response:
        try:
            accept = request.headers.get("accept", "")
            jsonl = "application/jsonl" in accept and "application/x-ndjson" not in accept
            return (JSONLStream if jsonl else NDJSONStream)(*streams.open_stream(request))
        except Refusal as exc:
            return error(exc.status, exc.kind, exc.message)

    async def events(request: Request) -> Response:
        try:
            return SSEStream(*streams.open_stream(request, sse=True))
        except _NothingNew:
            return Response(status_code=204, headers={"cache-control": "no-cache"})
        except Refusal as exc:
            return error(exc.status, exc.kind, exc.message)

    async def ingest(request: Request) -> Response:
        if not streams.authorized(request):
            return error(401, "unauthorized", "missing or wrong bearer token")
        name = request.path_params["name"]
        if name not in streams.pipelines:
            return error(404, "not_found", f"unknown pipeline `{name}`")
        inlet = streams.supervisor.inlet(name)
        if inlet is None:
            return error(409, "no_ingest_source", f"pipeline `{name}` has no ingest source")
        try:
            return await receive(request, inlet)
        except IngestRefused as exc:
            return error(exc.status, exc.kind, exc.message, exc.headers)

    async def metrics(request: Request) -> Response:
        if not streams.metrics_authorized(request):
            return error(401, "unauthorized", "missing or wrong bearer token (metrics_token)")
        body, content_type = streams.metrics()
        return Response(body, headers={"content-type": content_type})

    async def ws_over_http(request: Request) -> Response:
        return error(426, "upgrade_required", "this endpoint needs a WebSocket upgrade")

    async def websocket(ws: WebSocket) -> None:
        try:
            stream = WebSocketStream(*streams.open_stream(ws))
        except Refusal as exc:
            await _deny(ws, error(exc.status, exc.kind, exc.message))
            return
        await stream(ws.scope, ws.receive, ws.send)

    async def no_websocket(ws: WebSocket) -> None:
        path = ws.scope.get("path", "")
        await _deny(ws, error(404, "not_found", f"no WebSocket endpoint at `{path}`"))

    async def session(request: Request) -> Response:
        try:
            if request.method == "DELETE":
                return streams.auth.logout(request)
            return await streams.auth.login(request)
        except Refusal as exc:
            return error(exc.status, exc.kind, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = _STATUS_TYPES.get(exc.status_code, "http_error")
        return error(exc.status_code, kind, str(exc.detail), exc.headers)

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("request_failed", path=request.url.path, error=type(exc).__name__)
        return error(500, "internal", "internal server error")

    routes = [
        Route("/", dashboard.index),
        Route("/dashboard/{file}", dashboard.asset),
        Route("/healthz", healthz),
        Route("/session", session, methods=["POST", "DELETE"]),
        Route("/metrics", metrics),
        Route("/pipelines", list_pipelines),
        Route("/pipelines/{name}", one_pipeline),
        Route("/pipelines/{name}/stream", ndjson),
        Route("/pipelines/{name}/events", events),
        Route("/pipelines/{name}/ingest", ingest, methods=["POST"]),
        Route("/pipelines/{name}/ws", ws_over_http),
        WebSocketRoute("/pipelines/{name}/ws", websocket),
        WebSocketRoute("/{path:path}", no_websocket),
    ]
    middleware = [Middleware(_EncodedSlash)]
    if streams.settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=streams.settings.cors_origins,
                allow_methods=["GET", "HEAD", "POST"],
                allow_headers=["Authorization", "Last-Event-ID", "Content-Type"],
                expose_headers=["Content-Type"],
            )
        )
    handlers: dict[Any, Any] = {HTTPException: http_error, Exception: internal}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)


async def _deny(ws: WebSocket, response: Response) -> None:
    """Refuse a WebSocket upgrade with ``response`` (our JSON error), or close with 1008
    when the server cannot send an HTTP answer to an upgrade."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:
        message = orjson.loads(bytes(response.body))["error"]["message"]
        await ws.close(code=1008, reason=message[:120])


class _EncodedSlash:
    """Refuse (404) a path with an encoded slash (``%2F``): it is part of a name, never a
    separator, and no name has one; routing the decoded path would serve
    ``/pipelines/done%2Fstream`` as ``/pipelines/done/stream``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") or b""
        if scope["type"] == "lifespan" or b"%2f" not in raw.lower():
            await self.app(scope, receive, send)
            return
        shown = raw.decode("latin-1")
        answer = error(404, "not_found", f"no such path `{shown[:200]}` (an encoded `/`)")
        if scope["type"] == "websocket":
            await _deny(WebSocket(scope, receive, send), answer)
        else:
            await answer(scope, receive, send)
