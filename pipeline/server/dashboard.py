"""``GET /``: the dashboard page, three small hand-written files served from the package.

No build step and nothing from another host: the page, its script and its stylesheet are
files under ``pipeline/server/static/`` (package data), read once and served with a
``Content-Security-Policy`` that allows this origin only. The page itself needs no token
(it holds no data); it reads ``/pipelines`` and ``/pipelines/{name}/events``, which do.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["CSP", "FILES", "asset", "index"]

FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""Only this origin: a page that tried to load anything from elsewhere would be blocked."""


@cache
def _read(name: str) -> bytes:
    return resources.files("pipeline.server").joinpath("static", name).read_bytes()


def _serve(name: str) -> Response:
    headers = {
        "content-security-policy": CSP,
        "x-content-type-options": "nosniff",
        "cache-control": "no-cache",
        "referrer-policy": "no-referrer",
    }
    return Response(_read(name), media_type=FILES[name], headers=headers)


async def index(request: Request) -> Response:
    """The dashboard page."""
    return _serve("index.html")


async def asset(request: Request) -> Response:
    """``/dashboard/{file}``: the page's script or stylesheet (404 for anything else)."""
    name = request.path_params["file"]
    if name not in FILES or name == "index.html":
        body = {"error": {"type": "not_found", "message": f"no dashboard file `{name}`"}}
        return JSONResponse(body, status_code=404)
    return _serve(name)
