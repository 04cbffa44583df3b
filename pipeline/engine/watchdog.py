"""Notice a stage that holds the event loop, and say which one.

A sync stage without ``blocking: true`` runs on the event loop: if it sleeps or crunches
for seconds, every pipeline and HTTP client waits. `Watchdog` measures the loop's lag
(a task that should wake every `INTERVAL` seconds) and, from a thread, looks at what
the loop's thread is running when it is late by more than ``threshold``: the innermost
frame that belongs to a stage names it. Nothing runs on the hot path.

Logged (stderr): ``loop_blocked`` with ``stage``, ``seconds`` and the hint to set
``blocking: true``, once while the stall lasts (``ongoing: true``) and once when it
ended. Read by metrics: `Watchdog.lag_s` (the last lag measured, seconds) and
`Watchdog.max_lag_s` (the largest since start).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterable
from types import CodeType, FrameType
from typing import Any

from pipeline.log import get_logger
from pipeline.stage import ResolvedStage

__all__ = ["INTERVAL", "THRESHOLD", "Watchdog"]

INTERVAL = 0.1
"""Seconds between two beats of the loop."""
THRESHOLD = 0.5
"""Seconds of lag that count as a stall."""
HINT = "set `blocking: true` on this stage (or make it async) so it runs off the event loop"


class Watchdog:
    """Measure the event loop's lag; name the stage that held it for ``threshold`` s."""

    def __init__(self, stages: Iterable[ResolvedStage], threshold: float = THRESHOLD) -> None:
        self.threshold = threshold
        self.lag_s = 0.0
        self.max_lag_s = 0.0
        self._codes: dict[CodeType, str] = {}
        self.add(stages)
        self._beat = time.monotonic()
        self._stall_stage: str | None = None
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._log = get_logger()

    def add(self, stages: Iterable[ResolvedStage]) -> None:
        """Know these stages (by their code objects) for naming a stall."""
        for stage in stages:
            code = getattr(stage.fn, "__code__", None)
            if isinstance(code, CodeType):
                self._codes[code] = stage.id

    def start(self) -> None:
        """Start the beat (on the running loop) and the watching thread."""
        if self._task is not None:
            return
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._beats(), name="watchdog")
        threading.Thread(target=self._watch, name="pipeline-watchdog", daemon=True).start()

    def stop(self) -> None:
        """Stop both."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    async def _beats(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(INTERVAL)
            now = time.monotonic()
            self._beat = now
            lag = max(now - start - INTERVAL, 0.0)
            self.lag_s = lag
            self.max_lag_s = max(self.max_lag_s, lag)
            if lag >= self.threshold:
                stage, self._stall_stage = self._stall_stage, None
                self._log.warning(
                    "loop_blocked", stage=stage, seconds=round(lag, 3), hint=HINT, ongoing=False
                )

    def _watch(self) -> None:
        reported = 0.0
        while not self._stop.wait(INTERVAL / 2):
            if self._task is None or self._task.done():  # the loop is gone
                return
            beat = self._beat
            late = time.monotonic() - beat - INTERVAL
            if late < self.threshold or reported == beat:
                continue
            reported = beat
            self._stall_stage = self._culprit()
            self._log.warning(
                "loop_blocked",
                stage=self._stall_stage,
                seconds=round(late, 3),
                hint=HINT,
                ongoing=True,
            )

    def _culprit(self) -> str | None:
        """The stage whose code the loop's thread is running now (innermost first)."""
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        innermost: Any = None
        while frame is not None:
            stage = self._codes.get(frame.f_code)
            if stage is not None:
                return stage
            innermost = innermost or frame.f_code
            frame = frame.f_back
        if innermost is None:
            return None
        return f"{innermost.co_filename}:{getattr(innermost, 'co_qualname', innermost.co_name)}"
