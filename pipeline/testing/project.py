"""A project's pipelines, loaded once, run in-process by tests: `Pipelines`.

Example (the ``pipelines`` fixture of the pytest plugin is one of these)::

    result = pipelines.run("sensors", chunks=[{"sensor": "s-1", "celsius": 20}])
    result.assert_finished().assert_data([...])
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.config.loader import ResolvedPipeline, load_and_resolve
from pipeline.testing.harness import Fault, RunResult, run_pipeline_case
from pipeline.types import Chunk

__all__ = ["Pipelines"]

_LOADED: dict[tuple[str, float], dict[str, ResolvedPipeline]] = {}
_MAX_LOADED = 16


def _load(path: Path, environ: Mapping[str, str] | None) -> dict[str, ResolvedPipeline]:
    """Load and resolve ``path``, cached while the file is unchanged (and no env is given)."""
    if environ is not None:
        return load_and_resolve(path, environ)[1]
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _LOADED:
        if len(_LOADED) >= _MAX_LOADED:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = load_and_resolve(path)[1]
    return _LOADED[key]


class Pipelines:
    """The pipelines of one config file, each runnable in-process on test chunks.

    Loading happens on first use; a config with problems raises `ConfigError` listing
    every ``FILE:LINE: path: message``.
    """

    def __init__(
        self, config: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
    ) -> None:
        self.config = Path(config)
        self.environ = environ
        self._resolved: dict[str, ResolvedPipeline] | None = None

    @property
    def resolved(self) -> dict[str, ResolvedPipeline]:
        """Every pipeline of the config, resolved (stages imported and checked)."""
        if self._resolved is None:
            self._resolved = _load(self.config, self.environ)
        return self._resolved

    @property
    def names(self) -> list[str]:
        """The pipeline names, in file order."""
        return list(self.resolved)

    def __getitem__(self, name: str) -> ResolvedPipeline:
        """The resolved pipeline ``name``; `KeyError` names the known ones."""
        try:
            return self.resolved[name]
        except KeyError:
            known = ", ".join(f"`{n}`" for n in self.resolved)
            msg = f"no pipeline `{name}` in `{self.config}` (known: {known})"
            raise KeyError(msg) from None

    def __contains__(self, name: object) -> bool:
        return name in self.resolved

    async def arun(
        self,
        name: str,
        chunks: Sequence[Chunk] | None = None,
        *,
        with_: Mapping[str, Mapping[str, Any]] | None = None,
        keep_sinks: bool | Iterable[str] = False,
        faults: Sequence[Fault] = (),
        timeout: float = 30.0,
    ) -> RunResult:
        """Run pipeline ``name`` once (inside a running event loop); see `run`."""
        return await run_pipeline_case(
            self[name],
            None if chunks is None else list(chunks),
            with_=with_,
            keep_sinks=keep_sinks,
            faults=faults,
            timeout=timeout,
        )

    def run(
        self,
        name: str,
        chunks: Sequence[Chunk] | None = None,
        *,
        with_: Mapping[str, Mapping[str, Any]] | None = None,
        keep_sinks: bool | Iterable[str] = False,
        faults: Sequence[Fault] = (),
        timeout: float = 30.0,
    ) -> RunResult:
        """Run pipeline ``name`` once on ``chunks`` and return everything it emitted.

        Args:
            name: the pipeline.
            chunks: the input, replacing the source (a broker source needs no broker);
                each chunk is acknowledged like a message (see ``RunResult.acked``).
                ``None`` runs the pipeline's own source.
            with_: per stage (id or place such as ``transforms[1]``), parameters over
                the config's ``with:``.
            keep_sinks: ``True`` (or a list of sink ids or places) keeps real sinks;
                the others are in-memory (``RunResult.sinks``).
            faults: `Fault`\\ s: stages made to fail on purpose on their Nth chunk.
            timeout: seconds before the run is cancelled (``RunResult.timed_out``).

        Raises:
            RuntimeError: called inside a running event loop (use ``await arun(...)``).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            msg = "`Pipelines.run` cannot run inside an event loop; use `await pipelines.arun(...)`"
            raise RuntimeError(msg)
        coro = self.arun(
            name, chunks, with_=with_, keep_sinks=keep_sinks, faults=faults, timeout=timeout
        )
        return asyncio.run(coro)
