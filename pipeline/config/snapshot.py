"""A loaded, resolved config and the fingerprint of each pipeline: what a reload compares.

`take` loads and resolves the config files; given the previous `Snapshot` it first drops
the user modules (see `pipeline.config.code`) so the stages are imported afresh. `diff`
says which pipelines a reload must restart: added, removed, or with a new fingerprint
(definition or code).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import code
from pipeline.config.loader import ResolvedPipeline, load_and_resolve
from pipeline.config.models import Config

__all__ = ["Diff", "Snapshot", "diff", "of", "take"]


@dataclass(frozen=True)
class Snapshot:
    """One load of the config: its pipelines, their fingerprints and the files behind them.

    Attributes:
        config: the validated config.
        pipelines: name -> resolved pipeline.
        prints: name -> fingerprint of its definition and user code.
        roots: the folders holding user code (purged before the next load).
        files: the config files and the user modules' files (what ``--reload`` watches).
    """

    config: Config
    pipelines: dict[str, ResolvedPipeline]
    prints: dict[str, str]
    roots: tuple[Path, ...]
    files: tuple[str, ...]


@dataclass(frozen=True)
class Diff:
    """What a reload changes, by pipeline name (each list in config order)."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]

    @property
    def restart(self) -> list[str]:
        """Every pipeline whose run a reload ends: added, removed or changed."""
        return [*self.removed, *self.changed, *self.added]

    def as_dict(self) -> dict[str, list[str]]:
        """The non-empty kinds, for logs and ``/pipelines``."""
        kinds = {"added": self.added, "removed": self.removed, "changed": self.changed}
        return {k: v for k, v in kinds.items() if v}


def _base_dirs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    return [Path(p).resolve().parent for p in paths]


def take(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    sets: Sequence[str] = (),
    previous: Snapshot | None = None,
    environ: Mapping[str, str] | None = None,
) -> Snapshot:
    """Load and resolve the config file(s) at ``path`` with ``sets``; with ``previous``,
    import user code afresh.

    Raises:
        ConfigError: every problem found (a module that fails to import is one).
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if previous is not None:
        code.purge_user_modules([*previous.roots, *_base_dirs(paths)])
    config, resolved = load_and_resolve(paths, environ, sets)
    return of(config, resolved, paths)


def of(
    config: Config,
    resolved: dict[str, ResolvedPipeline],
    paths: Sequence[str | os.PathLike[str]],
) -> Snapshot:
    """The snapshot of a config already loaded and resolved from ``paths``."""
    named = {m for rp in resolved.values() for s in _stages(rp) for m in code.stage_modules(s)}
    roots = tuple(code.code_roots(_base_dirs(paths), sorted(named)))
    users = code.user_modules(roots)
    prints = {
        name: code.fingerprint(rp.config.model_dump(mode="json", by_alias=True), _stages(rp), users)
        for name, rp in resolved.items()
    }
    files = tuple(dict.fromkeys([*(str(Path(p).resolve()) for p in paths), *users.values()]))
    return Snapshot(config, resolved, prints, roots, files)


def _stages(rp: ResolvedPipeline) -> list[Callable[..., Any]]:
    found = [rp.source, *rp.transforms, *rp.sinks]
    if rp.dead_letter is not None:
        found.append(rp.dead_letter)
    return [s.fn for s in found]


def diff(old: Mapping[str, str], new: Mapping[str, str]) -> Diff:
    """Compare two ``name -> fingerprint`` maps (a snapshot's ``prints``)."""
    return Diff(
        added=[n for n in new if n not in old],
        removed=[n for n in old if n not in new],
        changed=[n for n in new if n in old and old[n] != new[n]],
        unchanged=[n for n in new if n in old and old[n] == new[n]],
    )
