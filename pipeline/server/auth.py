"""Who may read: the bearer token, the session cookie, and the ``Origin`` checks.

- **Bearer**: ``Authorization: Bearer <server.token>`` on every ``/pipelines*`` request.
- **Cookie** (for browsers, whose ``EventSource`` and ``WebSocket`` cannot set headers):
  ``POST /session`` with ``{"token": "..."}`` sets ``pipeline_token``, an ``HttpOnly``,
  ``SameSite=Strict`` cookie holding a digest of the token (never the token itself);
  ``DELETE /session`` clears it. Every ``/pipelines*`` endpoint accepts the cookie as
  well as the header. The token is never put in a URL.
- **Origin**: a request that changes state (``POST``/``DELETE /session``), a WebSocket
  upgrade, and any request authorised by the cookie must come from the server's own
  origin or one of ``server.cors_origins`` (no ``Origin`` header: not a browser, allowed).
  A page of another site therefore can neither log in, nor read a stream with the
  user's cookie, nor open a WebSocket (403).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

__all__ = ["COOKIE", "MAX_SESSION_BODY", "Auth", "Refusal"]

COOKIE = "pipeline_token"
"""The session cookie's name."""

MAX_SESSION_BODY = 4096
"""Bytes a ``POST /session`` body may have."""

_COOKIE_KEY = b"ndjson-pipeline session cookie v1"


class Refusal(Exception):
    """A request refused before anything was sent: status, error type and message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class Auth:
    """Checks one server's token, session cookie and ``Origin`` headers.

    Args:
        token: ``server.token``; empty means every request is authorised.
        cors_origins: ``server.cors_origins``: other origins allowed besides the server's
            own (``*`` allows any).

    Example:
        >>> auth = Auth("s3cret", [])
        >>> auth.cookie_value == Auth("s3cret", []).cookie_value != Auth("x", []).cookie_value
        True
    """

    def __init__(self, token: str, cors_origins: Sequence[str]) -> None:
        self._token = token.encode()
        self._origins = frozenset(cors_origins)
        digest = hmac.new(self._token, _COOKIE_KEY, hashlib.sha256)
        self.cookie_value = digest.hexdigest()

    def authorized(self, conn: HTTPConnection) -> bool:
        """Whether ``conn`` carries the bearer token, or the cookie from an allowed origin."""
        if not self._token:
            return True
        given = [v for k, v in conn.scope["headers"] if k == b"authorization"]
        if len(given) > 1:  # which one a proxy and we would pick may differ: neither
            return False
        raw = given[0] if given else b""
        scheme, _, credentials = raw.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token):
            return True
        cookie = conn.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.cookie_value.encode()) and (
            self.origin_allowed(conn)
        )

    def origin_allowed(self, conn: HTTPConnection) -> bool:
        """Whether ``conn``'s ``Origin`` (if any) is the server's own or a CORS origin."""
        origin = conn.headers.get("origin")
        if origin is None or "*" in self._origins or origin in self._origins:
            return True
        secure = conn.url.scheme in ("https", "wss")
        own = f"{'https' if secure else 'http'}://{conn.headers.get('host', '')}"
        return origin.lower() == own.lower()

    def check_origin(self, conn: HTTPConnection) -> None:
        """Raise `Refusal` (403) unless ``conn``'s ``Origin`` is allowed."""
        if not self.origin_allowed(conn):
            origin = conn.headers.get("origin", "")[:100]
            msg = f"origin `{origin}` is not allowed (see server.cors_origins)"
            raise Refusal(403, "forbidden_origin", msg)

    async def login(self, request: Request) -> Response:
        """``POST /session``: check ``{"token": ...}`` and set the cookie (204).

        Raises:
            Refusal: 403 from another origin, 400 for a malformed body, 401 for a
                wrong token.
        """
        self.check_origin(request)
        token = await _token_of(request)
        if self._token and not hmac.compare_digest(token.encode(), self._token):
            raise Refusal(401, "unauthorized", "wrong token")
        response = Response(status_code=204)
        if self._token:
            response.set_cookie(
                COOKIE,
                self.cookie_value,
                path="/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    def logout(self, request: Request) -> Response:
        """``DELETE /session``: clear the cookie (204).

        Raises:
            Refusal: 403 from another origin.
        """
        self.check_origin(request)
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response


async def _token_of(request: Request) -> str:
    """The ``token`` of a small JSON body, or `Refusal` (400) naming what is wrong."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SESSION_BODY:
            msg = f"the body is larger than {MAX_SESSION_BODY} bytes"
            raise Refusal(400, "bad_request", msg)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("token"), str):
        raise Refusal(400, "bad_request", 'the body must be JSON `{"token": "..."}`')
    token: str = value["token"]
    return token
