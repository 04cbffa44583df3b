"""The HTTP surface (SPEC §6): routes, auth, errors and CORS.

`create_app` builds a Starlette app over a `ServerState` registry (`pipeline.server.state`:
the supervisor, the resolved pipelines, one hub per ``trigger: start`` pipeline, the
``server:`` settings, the open streams and ``max_clients``).
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
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from pipeline.log import get_logger
from pipeline.server import dashboard
from pipeline.server.auth import Refusal
from pipeline.server.framings import SSEStream, WebSocketStream
from pipeline.server.ingest import IngestRefused, receive
from pipeline.server.state import SEND_TIMEOUT, NothingNew, ServerState, make_hub, retention
from pipeline.server.streams import JSONLStream, NDJSONStream

__all__ = ["SEND_TIMEOUT", "ServerState", "create_app", "error", "make_hub", "retention"]

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
        except NothingNew:
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
