"""``pipeline top``: a live table of a server's pipelines and their stages (SPEC §9).

It polls ``GET /pipelines`` once a second (the server's own JSON: each pipeline's
``metrics`` object of counters) and shows rates as the difference of two polls: per
pipeline its state, chunks in and out per second, chunk errors per second, clients, sink
queue, acks pending and broker backlog; per stage its rate, errors per second and p99
call time (sampled calls, since the server started). ``q`` or Ctrl-C quits; ``--once``
polls twice, one interval apart, prints one table and exits.

- **Target**: a server URL (``http://H:P``; a path is ignored, no scheme means
  ``http://``), or nothing: the config's ``server.host:port`` (``127.0.0.1:8000`` without
  a config file), with its ``server.token`` unless ``--token``/``$PIPELINE_TOKEN`` is given.
- **Errors**: with ``--once``, a server that cannot be reached or refuses the token is a
  `TopError` (exit 2). Live, an unreachable server is shown in the table's title and
  polled again; a refused token ends it (exit 2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.client.tail import TailError, auth_headers, configured_server
from pipeline.errors import PipelineError

__all__ = ["Sample", "TopError", "render", "server_url", "top"]

INTERVAL = 1.0
WIDTH = 160
"""Columns of the table when the output is not a terminal (``--once`` in a script)."""
TIMEOUT = 5.0
STATE_STYLES = {"running": "green", "completed": "blue", "failed": "bold red", "pending": "dim"}


class TopError(PipelineError):
    """``pipeline top`` cannot go on: no server, a refused token, or a bad URL."""


def server_url(
    target: str | None, *, token: str | None, config_path: Path | Sequence[Path]
) -> tuple[str, str]:
    """``(base URL, token)`` for ``target`` (a URL) or, with no target, the config's server.

    Example:
        >>> server_url("h:1/pipelines", token="t", config_path=Path("-"))
        ('http://h:1', 't')
    """
    if target is None:
        try:
            base, _, config_token = configured_server(config_path)
        except TailError as exc:
            raise TopError(str(exc)) from None
        return base, token if token is not None else config_token
    if "://" not in target:
        target = f"http://{target}"
    url = httpx.URL(target)
    if url.scheme not in ("http", "https") or not url.host:
        msg = f"`{target}` is not a server URL (http://HOST:PORT)"
        raise TopError(msg)
    return str(url.copy_with(path="/", query=None)).rstrip("/"), token or ""


@dataclass
class Sample:
    """One poll of ``/pipelines``: when, and each pipeline's state with its ``metrics``."""

    at: float
    pipelines: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None

    def by_name(self) -> dict[str, dict[str, Any]]:
        """The pipelines by name."""
        return {p["name"]: p for p in self.pipelines}


def poll(client: httpx.Client, base: str) -> Sample:
    """GET ``/pipelines`` once; a failure becomes `Sample.problem` (401 raises)."""
    now = time.monotonic()
    try:
        resp = client.get(f"{base}/pipelines")
    except httpx.HTTPError as exc:
        return Sample(now, problem=f"cannot reach {base}: {type(exc).__name__}")
    if resp.status_code == 401:
        msg = f"{base}: missing or wrong token (--token or $PIPELINE_TOKEN)"
        raise TopError(msg)
    if resp.status_code != 200:
        return Sample(now, problem=f"{base}/pipelines answered {resp.status_code}")
    try:
        return Sample(now, list(resp.json()["pipelines"]))
    except (ValueError, KeyError, TypeError):
        return Sample(now, problem=f"{base}/pipelines is not a pipeline server")


def _rate(new: float, old: float | None, seconds: float) -> float | None:
    if old is None or seconds <= 0:
        return None
    return max(new - old, 0) / seconds


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f}µs"
    if value < 1:
        return f"{value * 1000:.1f}ms"
    return f"{value:.2f}s"


def _count(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


COLUMNS = (
    *("pipeline / stage", "state", "in/s", "out/s", "err/s"),
    *("clients", "sink q", "acks", "backlog", "p99"),
)


def render(new: Sample, old: Sample | None, base: str) -> Table:
    """The table for poll ``new``, with rates against the previous poll ``old``."""
    title = f"pipeline top · {base}"
    if new.problem:
        title += f" · [bold red]{new.problem}[/]"
    table = Table(title=title, title_justify="left", expand=False, box=None, pad_edge=False)
    for i, name in enumerate(COLUMNS):
        justify: Literal["left", "right"] = "left" if i < 2 else "right"
        table.add_column(name, justify=justify, no_wrap=True, min_width=len(name))
    before = old.by_name() if old is not None else {}
    dt = new.at - old.at if old is not None else 0.0
    for p in new.pipelines:
        m, prev = p.get("metrics") or {}, (before.get(p["name"]) or {}).get("metrics") or {}

        def rate(key: str, m: dict[str, Any] = m, prev: dict[str, Any] = prev) -> str:
            return _fmt_rate(_rate(m.get(key, 0), prev.get(key), dt))

        state = str(p.get("state", "?"))
        queue = sum((m.get("sink_queue") or {}).values())
        table.add_row(
            Text(p["name"], style="bold"),
            Text(state, style=STATE_STYLES.get(state, "")),
            rate("in"),
            rate("out"),
            rate("chunk_errors"),
            _count(sum((m.get("clients") or {}).values())),
            _count(queue),
            _count(m.get("acks_pending")),
            _count(m.get("backlog")),
            _fmt_seconds(m.get("latency_p99_s")),
        )
        old_stages = {s["stage"]: s for s in prev.get("stages", [])}
        for st in m.get("stages", []):
            was = old_stages.get(st["stage"], {})
            table.add_row(
                Text(f"  {st['stage']}", style="dim"),
                "",
                _fmt_rate(_rate(st.get("in", 0), was.get("in"), dt)),
                _fmt_rate(_rate(st.get("ok", 0), was.get("ok"), dt)),
                _fmt_rate(_rate(st.get("error", 0), was.get("error"), dt)),
                "",
                "",
                "",
                "",
                _fmt_seconds(st.get("p99_s")),
            )
    if not new.pipelines and not new.problem:
        table.caption = "no pipelines"
    return table


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """``wait(seconds) -> key pressed or ''``; cbreak mode on a terminal, sleep otherwise."""
    if not sys.stdin.isatty():

        def sleep(seconds: float) -> str:
            time.sleep(seconds)
            return ""

        yield sleep
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:

        def wait(seconds: float) -> str:
            ready, _, _ = select.select([fd], [], [], seconds)
            return os.read(fd, 32).decode(errors="replace") if ready else ""

        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def top(
    target: str | None,
    *,
    token: str | None,
    config_path: Path | Sequence[Path],
    once: bool = False,
    interval: float = INTERVAL,
    out: TextIO | None = None,
) -> int:
    """Show the live table until ``q`` or Ctrl-C (0), or print one table with ``once``.

    Raises:
        TopError: a bad URL, a refused token, or (with ``once``) no server.
        ConfigError: no target and the config file is invalid.
    """
    base, secret = server_url(target, token=token, config_path=config_path)
    file = out or sys.stdout
    console = Console(file=file, width=None if file.isatty() else WIDTH)
    if logging.getLogger("httpx").level == logging.NOTSET:  # one INFO line per request
        logging.getLogger("httpx").setLevel(logging.WARNING)
    headers = {"accept": "application/json", **auth_headers(secret)}
    with httpx.Client(timeout=TIMEOUT, headers=headers) as client:
        if once:
            first = poll(client, base)
            if first.problem:
                raise TopError(first.problem)
            time.sleep(interval)
            second = poll(client, base)
            if second.problem:
                raise TopError(second.problem)
            console.print(render(second, first, base))
            return 0
        try:
            return _live(client, base, console, interval)
        except KeyboardInterrupt:
            return 0


def _live(client: httpx.Client, base: str, console: Console, interval: float) -> int:
    old: Sample | None = None
    new = poll(client, base)
    with _keys() as wait, Live(render(new, old, base), console=console, auto_refresh=False) as live:
        while True:
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                if "q" in wait(left).lower():
                    return 0
            old, new = (new if not new.problem else old), poll(client, base)
            live.update(render(new, old, base), refresh=True)
