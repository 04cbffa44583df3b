"""Pretty and raw output of ``pipeline tail``: one styled line per envelope (rich)."""

from __future__ import annotations

import codecs
import io
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any, BinaryIO, TextIO

import orjson
from rich.console import Console
from rich.text import Text

__all__ = ["STYLES", "Pretty", "Raw", "compact", "format_envelope"]

STYLES = {"starting": "blue", "processing": "green", "chunk_error": "yellow", "error": "bold red"}
STYLES["complete"] = "bold"


def format_envelope(env: Mapping[str, Any], width: int | None = None) -> Text | None:
    """One envelope as a styled line: seq, time, status, pipeline, then what matters.

    Args:
        env: a decoded envelope or transport notice.
        width: cut the line to this many cells with an ellipsis (``None``: never cut).

    Returns:
        The line, or ``None`` for a heartbeat (pretty output hides them).

    Example:
        >>> format_envelope({"status": "lagged", "missed": 3}).plain
        '! lagged: 3 envelopes were no longer retained and are missed'
    """
    status = str(env.get("status", "?"))
    if status == "heartbeat":
        return None
    if status == "lagged":
        line = Text(_lagged(env))
        line.stylize("bold yellow")
    else:
        line = Text()
        line.append(f"{env.get('seq', '')!s:>6} {_clock(env.get('timestamp'))} ", style="dim")
        line.append(f"{status:<11}", style=STYLES.get(status, ""))
        line.append(f" {env.get('pipeline', '')}  ")
        detail_style = STYLES.get(status, "") if status in ("chunk_error", "error") else ""
        line.append(_detail(status, env), style=detail_style)
    if width is not None:
        line.truncate(width, overflow="ellipsis")
    return line


def _lagged(env: Mapping[str, Any]) -> str:
    missed = env.get("missed", "?")
    if env.get("reason") == "evicted":
        resume = env.get("resume")
        return f"! evicted: the server was full and this stream idle; resuming from {resume}"
    if env.get("reason") == "run_changed":
        return (
            f"! run changed: run {env.get('previous_run')} is gone, following run "
            f"{env.get('run')} from its first retained envelope ({missed} no longer retained)"
        )
    return f"! lagged: {missed} envelopes were no longer retained and are missed"


def _clock(timestamp: Any) -> str:
    try:
        when = datetime.fromisoformat(str(timestamp))
    except ValueError:
        return "??:??:??.???"
    return f"{when:%H:%M:%S}.{when.microsecond // 1000:03d}"


def compact(value: Any) -> str:
    """Compact JSON of any value, for display (``repr`` for what JSON cannot hold)."""
    return orjson.dumps(value, default=repr).decode()


def _detail(status: str, env: Mapping[str, Any]) -> str:
    if status == "processing":
        return compact(env.get("data"))
    if status == "starting":
        return f"run {env.get('run', '?')}"
    if status in ("chunk_error", "error"):
        error = env.get("error")
        error = error if isinstance(error, Mapping) else {}
        return f"{env.get('stage', '?')}  {error.get('type', 'Error')}: {error.get('message', '')}"
    if status == "complete":
        stats = env.get("stats")
        stats = stats if isinstance(stats, Mapping) else {}
        counts = " ".join(f"{k}={compact(v)}" for k, v in stats.items())
        return f"{env.get('reason', '?')}  {counts}".rstrip()
    common = {"status", "pipeline", "run", "seq", "timestamp"}
    return compact({k: v for k, v in env.items() if k not in common})


class Raw:
    """Writes received lines unchanged, one write and one flush per network read."""

    def __init__(self, out: TextIO | BinaryIO | None) -> None:
        stream: Any = sys.stdout if out is None else out
        self.out: Any = getattr(stream, "buffer", stream) if out is None else stream
        self.text = isinstance(self.out, io.TextIOBase)

    def show(self, block: bytes, lines: list[bytes], envs: list[Any] | None) -> None:
        self.out.write(block.decode("utf-8", "replace") if self.text else block)
        self.out.flush()


class Pretty:
    """Prints envelopes with rich: colour and width only on a terminal."""

    def __init__(self, out: TextIO | BinaryIO | None) -> None:
        stream: Any = sys.stdout if out is None else out
        if isinstance(stream, io.RawIOBase | io.BufferedIOBase):
            stream = codecs.getwriter("utf-8")(stream)
        self.terminal = bool(getattr(stream, "isatty", lambda: False)())
        self.console = Console(
            file=stream,
            color_system="auto" if self.terminal else None,
            soft_wrap=not self.terminal,
            highlight=False,
        )

    def show(self, block: bytes, lines: list[bytes], envs: list[Any] | None) -> None:
        width = self.console.width if self.terminal else None
        bad = Text("! unparseable line", style="yellow")
        found = [
            bad if env is None else format_envelope(env, width)
            for line, env in zip(lines, envs or [], strict=False)
            if line.strip()
        ]
        shown = [text for text in found if text is not None]
        if shown:
            self.console.print(Text("\n").join(shown), no_wrap=self.terminal, crop=self.terminal)
