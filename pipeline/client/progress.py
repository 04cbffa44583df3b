"""The progress lines of ``pipeline run`` on a terminal: one live line per pipeline.

Shown on stderr only when stderr is a terminal, refreshed four times a second from the
pipelines' own counters (`pipeline.meter.PipelineMeter`): state, chunks read, envelopes
out, the rate of the last second, chunk errors and the time so far. Logs keep going to
stderr above the lines. Nothing ever goes to stdout, which carries the NDJSON.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from pipeline.meter import PipelineMeter

if TYPE_CHECKING:  # rich is imported only when progress is shown (a terminal)
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

__all__ = ["REFRESH", "Progress", "wanted"]

REFRESH = 0.25
"""Seconds between two refreshes."""
STYLES = {"running": "green", "completed": "blue", "failed": "bold red", "pending": "dim"}


def wanted(stream: TextIO | None = None) -> bool:
    """Whether progress is shown: only when ``stream`` (stderr) is a terminal."""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Live progress lines for ``meters``; use ``async with`` around the runs."""

    def __init__(
        self,
        meters: Mapping[str, PipelineMeter],
        state: Callable[[str], str],
        *,
        stream: TextIO | None = None,
    ) -> None:
        self.meters = dict(meters)
        self.state = state
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr)
        self.started = time.monotonic()
        self._last: dict[str, tuple[float, int]] = {}
        self._rates: dict[str, float] = {}
        self._live: Live | None = None
        self._task: asyncio.Task[None] | None = None

    def line(self, name: str, now: float) -> Text:
        """One pipeline's line: state, chunks in and out, rate, errors, elapsed."""
        from rich.text import Text

        meter = self.meters[name]
        totals = meter.envelope_totals()
        out, errors = totals.get("processing", 0), totals.get("chunk_error", 0)
        read = meter.source.read if meter.source is not None else 0
        at, before = self._last.get(name, (self.started, 0))
        if now - at >= 1.0:
            self._rates[name] = (out - before) / (now - at)
            self._last[name] = (now, out)
        state = self.state(name)
        text = Text.assemble(
            (f"{name}  ", "bold"),
            (f"{state:<9}", STYLES.get(state, "")),
            f" {read:>10,} in  {out:>10,} out  {self._rates.get(name, 0.0):>9,.0f}/s  ",
            (f"{errors:,} chunk errors", "yellow" if errors else "dim"),
            f"  {now - self.started:6.1f}s",
        )
        return text

    def render(self) -> Group:
        """Every pipeline's line, as one renderable."""
        from rich.console import Group

        now = time.monotonic()
        return Group(*(self.line(name, now) for name in self.meters))

    async def _refresh(self) -> None:
        while self._live is not None:
            await asyncio.sleep(REFRESH)
            if self._live is not None:
                self._live.update(self.render(), refresh=True)

    async def __aenter__(self) -> Progress:
        from rich.live import Live

        self._live = Live(
            self.render(),
            console=self.console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=True,
            transient=False,
        )
        self._live.start()
        self._task = asyncio.get_running_loop().create_task(self._refresh())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        live, self._live = self._live, None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if live is not None:
            live.update(self.render(), refresh=True)
            live.stop()
