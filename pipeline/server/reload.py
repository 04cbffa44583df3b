"""Reload a serving process: SIGHUP or ``--reload`` -> validate -> restart what changed.

::

    SIGHUP / a watched file changed
      └► Reloader.reload()          one at a time (a lock); bursts of changes coalesce
           ├► snapshot.take()       user modules dropped, config loaded, stages imported
           │    └ ConfigError ──►   rejected: nothing changes; each problem logged as
           │                        FILE:LINE: path: message
           ├► snapshot.diff()       added / removed / changed (definition or code)
           ├► server settings       tokens, heartbeat, max_clients, shutdown_timeout apply;
           │                        the others are listed as restart_needed
           ├► hubs and routes       new hubs for new pipelines (old clients stay put)
           └► supervisor.reload()   each changed pipeline drains like a shutdown, ends with
                                    complete(reason=reload), its new run starts at once;
                                    unchanged pipelines keep their run

Any other exception is a *failed* reload: logged in one line (what failed, where), counted,
and the pipelines keep running; the server never dies of a reload. Every outcome is
recorded in `pipeline.server.reload_status.ReloadStatus`: ``GET /pipelines`` shows it as
``reload``, ``GET /metrics`` as ``pipeline_reloads_total{outcome}`` and its gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import sysconfig
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import snapshot
from pipeline.config.models import ServerConfig
from pipeline.config.snapshot import Snapshot
from pipeline.errors import ConfigError, Problem
from pipeline.hub.hub import Hub
from pipeline.log import get_logger, mask
from pipeline.server.app import ServerState, make_hub, retention
from pipeline.server.reload_status import ReloadStatus

__all__ = ["RELOADABLE", "WATCH_DEBOUNCE_MS", "WATCH_POLL", "Reloader", "settings_change"]

WATCH_DEBOUNCE_MS = 300
"""Milliseconds of quiet after a change before ``--reload`` reloads (an editor's burst)."""

WATCH_POLL = 0.5
"""Seconds between looks for a watched folder that is gone (``--reload``)."""

RELOADABLE = frozenset(
    {"token", "metrics_token", "heartbeat", "max_clients", "evict_idle_after", "shutdown_timeout"}
)
"""The ``server:`` settings a reload applies; a change to any other needs a restart."""


def settings_change(
    running: ServerConfig, wanted: ServerConfig
) -> tuple[ServerConfig, list[str], list[str]]:
    """The settings to run with, the names it applies, the names that need a restart.

    Example:
        >>> now, new = ServerConfig(), ServerConfig(token="t0k3n", port=9000)
        >>> settings, applied, restart = settings_change(now, new)
        >>> (settings.token, settings.port, applied, restart)
        ('t0k3n', 8000, ['server.token'], ['server.port'])
    """
    changed = [k for k in ServerConfig.model_fields if getattr(running, k) != getattr(wanted, k)]
    apply = {k: getattr(wanted, k) for k in changed if k in RELOADABLE}
    restart = [f"server.{k}" for k in changed if k not in RELOADABLE]
    return running.model_copy(update=apply), [f"server.{k}" for k in apply], restart


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
        """The server's `ReloadStatus`."""
        return self.streams.reloads

    async def reload(self, trigger: str) -> bool:
        """Validate the config again and apply it; return whether it applied.

        Never raises (but for cancellation): whatever goes wrong is a reload that did
        not apply, logged and counted.
        """
        async with self._lock:
            if self.streams.supervisor.shutting_down:
                return False
            self.status.last_attempt = time.time()
            try:
                new = self.take(self.current)
                self._check_names(new)
            except ConfigError as exc:
                return self._rejected(trigger, exc.problems)
            except Exception as exc:
                return self._failed(trigger, "validate", exc)
            try:
                await self._apply(trigger, new)
            except Exception as exc:
                return self._failed(trigger, "apply", exc)
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

    def _rejected(self, trigger: str, problems: list[Problem]) -> bool:
        self.status.record("rejected", problems=[str(p) for p in problems])
        for problem in problems:
            self.log.error("reload_problem", problem=str(problem))
        self.log.error("reload_rejected", trigger=trigger, problems=len(problems))
        return False

    def _failed(self, trigger: str, step: str, exc: Exception) -> bool:
        """An unexpected exception: one log line saying what failed and where."""
        error = mask(f"{type(exc).__name__}: {exc}")  # /pipelines shows it too
        self.status.record("failed", error=error)
        self.log.error("reload_failed", trigger=trigger, step=step, error=error, where=_where(exc))
        return False

    def _picked(self, snap: Snapshot) -> dict[str, str]:
        names = self.names or list(snap.pipelines)
        return {n: snap.prints[n] for n in names}

    async def _apply(self, trigger: str, new: Snapshot) -> None:
        change = snapshot.diff(self._picked(self.current), self._picked(new))
        streams = self.streams
        settings, applied, restart = settings_change(streams.settings, new.config.server)
        picked: dict[str, Any] = {n: new.pipelines[n] for n in self._picked(new)}
        feeds: dict[str, Hub] = {}
        for name in change.restart:
            rp = picked.get(name)
            if rp is None or rp.config.trigger != "start":
                continue
            hub = streams.hubs.get(name)
            if hub is None or (hub.retain, hub.retain_bytes) != retention(rp.config):
                hub = make_hub(name, rp.config, settings)
            feeds[name] = hub
        old_hubs = {n: h for n, h in streams.hubs.items() if n in change.restart}
        streams.configure(settings)
        streams.update(picked, feeds)
        await streams.supervisor.reload(picked, change.restart, feeds=feeds, start=feeds)
        for name, hub in old_hubs.items():
            if feeds.get(name) is not hub:
                hub.close()
        self.current = new
        self.status.record("applied", changed=change.as_dict(), restart_needed=restart)
        self.log.info(
            "reloaded",
            trigger=trigger,
            **change.as_dict(),
            unchanged=len(change.unchanged),
            **({"server_applied": applied} if applied else {}),
            **({"restart_needed": restart} if restart else {}),
        )

    def watched(self) -> tuple[list[Path], set[str]]:
        """The folders ``--reload`` watches and the files in them that count."""
        files = set(self.current.files)
        return sorted({Path(f).parent for f in files}), files

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every change of a watched file, until ``stop`` is set.

        A watched folder that is deleted or replaced (``rm -rf`` and a fresh clone, a
        deploy that swaps the folder) is watched again once it exists, with a reload.
        """
        import watchfiles

        moved = False
        while not stop.is_set():
            dirs, files = self.watched()
            if not await _present(dirs, stop, self.log):
                return
            if moved:  # what is there now is new to us
                moved = False
                await self.reload("watch")
                continue  # the reload may have changed what to watch
            marks = _marks(dirs)
            self.log.info("reload_watching", folders=[str(d) for d in dirs])
            try:
                async for _ in watchfiles.awatch(
                    *dirs,
                    watch_filter=_relevant(files),
                    debounce=WATCH_DEBOUNCE_MS,
                    step=50,
                    stop_event=stop,
                    recursive=False,
                ):
                    await self.reload("watch")
                    moved = _marks(dirs) != marks
                    if moved or set(self.current.files) != files:
                        break  # watch the folders again / the new set of files
            except Exception as exc:  # a folder gone between the look and the watch
                self.log.warning("reload_watch_failed", error=f"{type(exc).__name__}: {exc}")
                moved = True


async def _present(dirs: list[Path], stop: asyncio.Event, log: Any) -> bool:
    """Wait until every folder of ``dirs`` exists; False if ``stop`` came first."""
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        log.warning("reload_watch_waiting", missing=missing)
    while missing and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_POLL)
        missing = [str(d) for d in dirs if not d.is_dir()]
    return not stop.is_set()


def _marks(dirs: list[Path]) -> list[tuple[int, int]] | None:
    """Which folders ``dirs`` are (device, inode), or None if one is gone."""
    try:
        return [(st.st_dev, st.st_ino) for st in (d.stat() for d in dirs)]
    except OSError:
        return None


def _where(exc: BaseException) -> str:
    """``FILE:LINE in FUNCTION`` of the innermost frame outside the standard library."""
    stdlib = sysconfig.get_paths()["stdlib"]
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if not f.filename.startswith(("<frozen ", stdlib))] or frames
    return f"{ours[-1].filename}:{ours[-1].lineno} in {ours[-1].name}" if ours else ""


def _relevant(files: set[str]) -> Callable[[Any, str], bool]:
    """A watchfiles filter: a watched file, or any Python or YAML file beside one."""

    def relevant(change: Any, path: str) -> bool:
        return path in files or path.endswith((".py", ".yaml", ".yml"))

    return relevant
