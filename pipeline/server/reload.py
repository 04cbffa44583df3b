"""Reload a serving process: SIGHUP or ``--reload`` -> validate -> restart what changed.

::

    SIGHUP / a watched file changed
      └► Reloader.reload()          one at a time (a lock); bursts of changes coalesce
           ├► snapshot.take()       user modules dropped, config loaded, stages imported
           │    └ ConfigError ──►   nothing changes; each problem logged as
           │                        FILE:LINE: path: message; reload.failed += 1
           ├► snapshot.diff()       added / removed / changed (definition or code)
           ├► hubs and routes       new hubs for new pipelines (old clients stay put)
           └► supervisor.reload()   each changed pipeline drains like a shutdown, ends with
                                    complete(reason=reload), its new run starts at once;
                                    unchanged pipelines keep their run

The outcome is kept on the supervisor (`pipeline.engine.supervisor.ReloadStatus`):
``GET /pipelines`` shows it as ``reload`` and the metrics count it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import snapshot
from pipeline.config.snapshot import Snapshot
from pipeline.engine.supervisor import ReloadStatus
from pipeline.errors import ConfigError, Problem
from pipeline.hub.hub import Hub
from pipeline.log import get_logger
from pipeline.server.app import ServerState

__all__ = ["WATCH_DEBOUNCE_MS", "Reloader"]

WATCH_DEBOUNCE_MS = 300
"""Milliseconds of quiet after a change before ``--reload`` reloads (an editor's burst)."""


class Reloader:
    """Reloads the config behind a running server (see the module docstring)."""

    def __init__(
        self,
        streams: ServerState,
        current: Snapshot,
        take: Callable[[Snapshot], Snapshot],
        *,
        names: list[str] | None = None,
    ) -> None:
        self.streams = streams
        self.current = current
        self.take = take
        self.names = list(names or [])
        self.log = get_logger()
        self._lock = asyncio.Lock()

    @property
    def status(self) -> ReloadStatus:
        """The supervisor's `ReloadStatus`."""
        return self.streams.supervisor.reloads

    async def reload(self, trigger: str) -> bool:
        """Validate the config again and apply it; return whether it applied."""
        async with self._lock:
            if self.streams.supervisor.shutting_down:
                return False
            status = self.status
            status.last_attempt = time.time()
            try:
                new = self.take(self.current)
                self._check_names(new)
            except ConfigError as exc:
                return self._refused(trigger, exc.problems)
            await self._apply(trigger, new)
            return True

    def _check_names(self, new: Snapshot) -> None:
        gone = [n for n in self.names if n not in new.pipelines]
        if gone:
            cfg = new.config
            raise ConfigError(
                [
                    Problem(cfg.file, 0, f"pipelines.{n}", "named on the command line; gone")
                    for n in gone
                ]
            )

    def _refused(self, trigger: str, problems: list[Problem]) -> bool:
        status = self.status
        status.failed += 1
        status.problems = [str(p) for p in problems]
        for problem in problems:
            self.log.error("reload_problem", problem=str(problem))
        self.log.error("reload_failed", trigger=trigger, problems=len(problems))
        return False

    def _picked(self, snap: Snapshot) -> dict[str, str]:
        names = self.names or list(snap.pipelines)
        return {n: snap.prints[n] for n in names}

    async def _apply(self, trigger: str, new: Snapshot) -> None:
        change = snapshot.diff(self._picked(self.current), self._picked(new))
        streams, settings = self.streams, self.streams.settings
        picked: dict[str, Any] = {n: new.pipelines[n] for n in self._picked(new)}
        feeds: dict[str, Hub] = {}
        for name in change.restart:
            rp = picked.get(name)
            if rp is None or rp.config.trigger != "start":
                continue
            hub = streams.hubs.get(name)
            if hub is None or hub.retain != rp.config.retain:
                hub = Hub(name, retain=rp.config.retain, client_buffer=settings.client_buffer)
            feeds[name] = hub
        old_hubs = {n: h for n, h in streams.hubs.items() if n in change.restart}
        self.current = new
        status = self.status
        status.ok += 1
        status.last_success = status.last_attempt
        status.problems = []
        status.changed = change.as_dict()
        streams.update(picked, feeds)
        await streams.supervisor.reload(picked, change.restart, feeds=feeds, start=feeds)
        for name, hub in old_hubs.items():
            if feeds.get(name) is not hub:
                hub.close()
        server_changed = new.config.server != settings
        self.log.info(
            "reloaded",
            trigger=trigger,
            **change.as_dict(),
            unchanged=len(change.unchanged),
            **({"server_settings": "changed; restart to apply"} if server_changed else {}),
        )

    def watched(self) -> tuple[list[Path], set[str]]:
        """The folders ``--reload`` watches and the files in them that count."""
        files = set(self.current.files)
        return sorted({Path(f).parent for f in files}), files

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every change of a watched file, until ``stop`` is set."""
        import watchfiles

        while not stop.is_set():
            dirs, files = self.watched()
            async for _ in watchfiles.awatch(
                *dirs,
                watch_filter=_relevant(files),
                debounce=WATCH_DEBOUNCE_MS,
                step=50,
                stop_event=stop,
                recursive=False,
            ):
                await self.reload("watch")
                if set(self.current.files) != files:
                    break  # watch the new set of files


def _relevant(files: set[str]) -> Callable[[Any, str], bool]:
    """A watchfiles filter: a watched file, or any Python or YAML file beside one."""

    def relevant(change: Any, path: str) -> bool:
        return path in files or path.endswith((".py", ".yaml", ".yml"))

    return relevant
