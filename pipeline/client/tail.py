"""``pipeline tail``: follow a pipeline's NDJSON stream over HTTP, resuming after drops.

- **Target**: a URL (``.../pipelines/NAME`` means its ``/stream``; no scheme means
  ``http://``) or a NAME served at the config's ``server.host:port`` (``127.0.0.1:8000``
  without a config file; ``0.0.0.0``/``::`` mean loopback). For a NAME the token defaults to
  ``server.token``; a URL never reads the config. The token is sent as ``Authorization:
  Bearer`` and never printed or logged.
- **Output**: ``raw`` writes every line exactly as received, heartbeats and ``lagged``
  included, as bytes, flushed once per network read. Pretty (rich) hides heartbeats, shows
  ``lagged`` as a warning, colours and cuts lines to the width only on a terminal.
- **Resume**: a drop or a failed attempt is retried after 0.2 s doubling to 5 s (jittered),
  with ``since=RUN:SEQ`` of the last whole envelope (a cut line comes again). 5xx, 408, 425
  and 429 are retried too. ``max_retries`` bounds consecutive failures (an attempt that
  received lines resets the count); by default 10 attempts until a server answered once,
  then no limit. A ``lagged(reason=evicted)`` notice (an idle stream closed by a full
  server) sets the resume token to its ``resume`` and the reconnect is quiet.
- **End**: 0 after ``complete`` of a run without ``error``; 1 after ``error`` or
  ``complete(reason=error)``; 130 on Ctrl-C, quietly; 0 when stdout closes (``| head``).
  With ``follow_runs`` (``tail -F``) a ``complete`` whose reason is ``shutdown`` or
  ``reload`` does not end it: it reconnects (waiting for a restarted server, without a
  retry limit) and resumes from the old run's token, which gets the new run from its
  first retained envelope. Waiting for that next run is expected, so a stream that ends
  with nothing new after such a ``complete`` is retried quietly (a ``debug`` line); only
  errors (a refused connection, a 5xx) are logged as ``tail_retrying`` warnings.
  Another 4xx (with the server's message), a non-NDJSON answer, a bad target or spent
  retries raise `TailError`, which the CLI turns into exit 2.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, TextIO
from urllib.parse import quote

import httpx
import orjson

from pipeline import log as logmod
from pipeline.client.render import Pretty, Raw, compact, format_envelope
from pipeline.errors import PipelineError

__all__ = [
    "TailError",
    "auth_headers",
    "configured_server",
    "format_envelope",
    "resolve_target",
    "tail",
]

BACKOFF_START = 0.2
BACKOFF_MAX = 5.0
INITIAL_ATTEMPTS = 10
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
RETRY_STATUSES = frozenset({408, 425, 429})
NOTICES = frozenset({"heartbeat", "lagged"})
FOLLOWED = frozenset({"shutdown", "reload"})
"""``complete`` reasons that ``tail -F`` follows past (a new run is coming)."""
ENDED_EARLY = "stream ended before `complete`"
STREAM_TYPES = ("application/x-ndjson", "application/jsonl", "application/json", "text/plain")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


class TailError(PipelineError):
    """``pipeline tail`` cannot go on: a refused request, a bad target, or no server."""


@dataclass(frozen=True)
class Target:
    """Where to connect: the stream URL, the bearer token and the read timeout."""

    url: str
    token: str | None
    read_timeout: float = READ_TIMEOUT


def resolve_target(target: str, *, token: str | None, config_path: Path | Sequence[Path]) -> Target:
    """Turn a URL or a pipeline NAME into a `Target`.

    Args:
        target: ``http(s)://H:P/pipelines/NAME[/stream]``, ``H:P/pipelines/NAME`` or ``NAME``.
        token: the bearer token; for a NAME, ``None`` means the config's ``server.token``.
        config_path: the config used for a NAME (missing file: ``127.0.0.1:8000``, no token);
            several files are merged as ``pipeline run -c A -c B`` merges them.

    Raises:
        TailError: the target is neither a URL nor a name, or the config has ``port: 0``.
        ConfigError: the config file exists but is invalid.

    Example:
        >>> resolve_target("h:1/pipelines/x", token=None, config_path=Path("-")).url
        'http://h:1/pipelines/x/stream'
    """
    if "://" not in target and not _NAME_RE.match(target) and re.match(r"^[\w.\[\]:-]+/", target):
        target = f"http://{target}"
    if "://" in target:
        return Target(_stream_url(target), token)
    if not _NAME_RE.match(target):
        msg = f"`{target}` is neither a URL nor a pipeline name"
        raise TailError(msg)
    base, heartbeat, config_token = configured_server(config_path)
    url = f"{base}/pipelines/{quote(target, safe='')}/stream"
    read_timeout = max(READ_TIMEOUT, 3 * heartbeat)
    return Target(url, token if token is not None else (config_token or None), read_timeout)


def configured_server(config_path: Path | Sequence[Path]) -> tuple[str, float, str]:
    """The config's server as ``(base URL, heartbeat, token)``; the defaults without a file.

    Raises:
        TailError: the config has ``port: 0`` (any free port: the URL cannot be known).
        ConfigError: the config file exists but is invalid.
    """
    host, port, heartbeat, config_token = "127.0.0.1", 8000, 15.0, ""
    paths = [config_path] if isinstance(config_path, Path) else list(config_path)
    existing = [p for p in paths if p.exists()]
    if existing:
        from pipeline.config import models as config

        server = config.load(existing).server
        host, port, heartbeat = server.host, server.port, server.heartbeat
        config_token = server.token
    if port == 0:
        shown = " + ".join(str(p) for p in existing)
        msg = f"`{shown}`: server.port is 0 (any free port); pass the URL instead"
        raise TailError(msg)
    host = _WILDCARDS.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}", heartbeat, config_token


def auth_headers(token: str | None) -> dict[str, str]:
    """The request headers carrying ``token`` (none without one)."""
    return {"authorization": f"Bearer {token}"} if token else {}


def _stream_url(url: str) -> str:
    parsed = httpx.URL(url)
    path = parsed.path.rstrip("/")
    if path.endswith(("/events", "/ws")):
        msg = f"`{url}` is not an NDJSON stream: use `.../pipelines/NAME/stream`"
        raise TailError(msg)
    parent, _, _ = path.rpartition("/")
    if parent.endswith("/pipelines") or parent == "pipelines":
        path += "/stream"
    return str(parsed.copy_with(path=path or "/"))


class _Follower:
    """Connection loop and resume state of one ``tail``."""

    def __init__(
        self, target: Target, since: str | None, printer: Raw | Pretty, *, runs: bool = False
    ) -> None:
        self.target = target
        self.runs = runs
        self.since = since
        self.printer = printer
        self.decode_all = isinstance(printer, Pretty)
        self.run: str | None = None
        self.failed = False
        self.code: int | None = None
        self.between_runs = False  # the last envelope was a complete that -F follows past
        self.evicted = False  # the stream was closed as idle to make room (lagged notice)
        self.answered = 0  # streams answered with a 2xx so far
        self.log = logmod.get_logger(command="tail")

    def see(self, env: dict[str, Any]) -> None:
        """Track the resume token and the run's outcome from one envelope."""
        status = env.get("status")
        if status in NOTICES:
            resume = env.get("resume")
            if env.get("reason") == "evicted" and isinstance(resume, str):
                self.since, self.evicted = resume, True  # the server made room: come back
            return
        self.between_runs = False
        run, seq = env.get("run"), env.get("seq")
        if isinstance(run, str) and isinstance(seq, int):
            if run != self.run:
                self.run, self.failed = run, False
            self.since = f"{run}:{seq}"
        if status == "error":
            self.failed = True
        elif status == "complete":
            if self.runs and env.get("reason") in FOLLOWED:
                self.between_runs = True
                return
            stats = env.get("stats")
            errors = stats.get("errors", 0) if isinstance(stats, dict) else 0
            bad = self.failed or env.get("reason") == "error" or bool(errors)
            self.code = 1 if bad else 0

    def feed(self, buf: bytearray, chunk: bytes) -> int:
        """Show the whole lines of ``buf + chunk`` (up to ``complete``); return their count.

        Raw output decodes only the lines that can change the outcome (those mentioning
        ``error`` or ``complete``) and the last envelope, for the resume token.
        """
        buf += chunk
        end = buf.rfind(b"\n")
        if end < 0:
            return 0
        block = bytes(buf[: end + 1])
        del buf[: end + 1]
        lines = block.split(b"\n")[:-1]
        envs = [_decode(line) for line in lines] if self.decode_all else None
        for i in range(len(lines)) if envs is not None else _telling(block, lines):
            env = envs[i] if envs is not None else _decode(lines[i])
            if env is not None:
                self.see(env)
            if self.code is not None:
                del lines[i + 1 :]
                block = b"\n".join(lines) + b"\n"
                break
        else:
            if envs is None:
                self.see_last(lines)
        self.printer.show(block, lines, envs)
        return len(lines)

    def see_last(self, lines: list[bytes]) -> None:
        """`see` the last envelope of ``lines`` (not a notice), for the resume token."""
        for line in reversed(lines):
            env = _decode(line)
            if env is not None and env.get("status") not in NOTICES:
                self.see(env)
                return

    def attempt(self, client: httpx.Client) -> tuple[str, int]:
        """Open the stream once; return why it ended and how many envelopes came."""
        url = httpx.URL(self.target.url)
        if self.since is not None:
            url = url.copy_set_param("since", self.since)
        received, self.evicted = 0, False
        try:
            with client.stream("GET", url) as response:
                if response.status_code >= 400:
                    return _refused(response), 0
                _check_type(response)
                self.answered += 1
                self.log.debug("tail_connected", url=str(url))
                buf = bytearray()
                for chunk in response.iter_bytes():
                    received += self.feed(buf, chunk)
                    if self.code is not None:
                        return "complete", received
            return ENDED_EARLY, received
        except httpx.RequestError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, received

    def follow(self, max_retries: int | None) -> int:
        """Connect, resume and back off until ``complete``; return the exit code."""
        failures = 0
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=self.target.read_timeout)
        headers = {"Accept": "application/x-ndjson", **auth_headers(self.target.token)}
        if logging.getLogger("httpx").level == logging.NOTSET:  # one INFO line per request
            logging.getLogger("httpx").setLevel(logging.WARNING)
        with httpx.Client(timeout=timeout, headers=headers, follow_redirects=True) as client:
            while True:
                reason, received = self.attempt(client)
                if self.code is not None:
                    return self.code
                failures = 1 if received else failures + 1
                default = None if self.answered or self.runs else INITIAL_ATTEMPTS - 1
                limit = default if max_retries is None else max_retries
                if limit is not None and failures > limit:
                    msg = f"giving up on `{self.target.url}` after {failures} attempts: {reason}"
                    raise TailError(msg)
                delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** (failures - 1))
                delay *= random.uniform(0.5, 1.0)
                # the next run is coming, or the server asked an idle stream to come back
                quiet = (self.between_runs or self.evicted) and reason == ENDED_EARLY
                retrying = self.log.debug if quiet else self.log.warning
                retrying("tail_retrying", reason=reason, since=self.since, delay_s=delay)
                time.sleep(delay)


def _telling(block: bytes, lines: list[bytes]) -> list[int]:
    words = (b"error", b"complete", b'"evicted"')
    if not any(word in block for word in words):
        return []
    return [i for i, line in enumerate(lines) if any(word in line for word in words)]


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _check_type(response: httpx.Response) -> None:
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind not in STREAM_TYPES:
        msg = f"`{response.url.copy_remove_param('since')}` answered `{kind}`, not NDJSON"
        raise TailError(msg)


def _refused(response: httpx.Response) -> str:
    """Read a 4xx/5xx answer: raise `TailError` unless it is worth retrying."""
    body = b"".join(islice(response.iter_bytes(), 64))  # an error body is small
    message = _error_message(body) or response.reason_phrase
    code = response.status_code
    if code < 500 and code not in RETRY_STATUSES:
        hint = " (pass --token or set $PIPELINE_TOKEN)" if code == 401 else ""
        msg = f"HTTP {code}: {message}{hint}"
        raise TailError(msg)
    return f"HTTP {code}: {message}"


def _error_message(body: bytes) -> str:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:300]
    if isinstance(value, dict):  # {"error": {"message": ...}}, {"error": ...}, {"detail": ...}
        value = value.get("error") or value.get("message") or value.get("detail") or value
    if isinstance(value, dict) and "message" in value:
        value = value["message"]
    return value if isinstance(value, str) else compact(value)[:300]


def tail(
    target: str,
    *,
    since: str | None,
    raw: bool,
    token: str | None,
    config_path: Path | Sequence[Path],
    out: TextIO | BinaryIO | None = None,
    max_retries: int | None = None,
    follow_runs: bool = False,
) -> int:
    """Follow a pipeline's stream until its run completes (behaviour: module docstring).

    Args:
        target: a stream URL or a pipeline NAME of the config's server.
        since: ``SEQ`` or ``RUN:SEQ`` for the first request (later ones resume by themselves).
        raw: print the NDJSON lines exactly as received instead of pretty lines.
        token: bearer token (``None``: the config's ``server.token`` for a NAME).
        config_path: the config file, used for a NAME only.
        out: where to write (default: stdout); raw output accepts text or binary files.
        max_retries: consecutive failed attempts allowed before giving up (default: 10 until
            the server answered once, then unlimited; unlimited with ``follow_runs``).
        follow_runs: ``tail -F``: go on past a ``complete`` of reason ``shutdown`` or
            ``reload``, into the next run (of this server or of the one that replaced it).

    Returns:
        0 after a run that completed without error, 1 after a failed run, 130 on Ctrl-C.

    Raises:
        TailError: a 4xx or non-NDJSON answer, a bad target, or retries spent.
        ConfigError: for a NAME, the config file exists but is invalid.

    Example:
        >>> tail("127.0.0.1:9/pipelines/x", since=None, raw=True, token=None,
        ...      config_path=Path("-"), max_retries=0)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        pipeline.client.tail.TailError: giving up on `http://127.0.0.1:9/pipelines/x/stream` ...
    """
    resolved = resolve_target(target, token=token, config_path=config_path)
    printer = Raw(out) if raw else Pretty(out)
    try:
        return _Follower(resolved, since, printer, runs=follow_runs).follow(max_retries)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if out is None:  # stdout closed (`| head`): silence the flush at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return 0
