"""Paths in stage parameters: relative to the working directory, checked by ``validate``.

A relative path in ``with:`` is used as given, so it is relative to the working
directory of the ``pipeline`` process, for every stage alike (built-in or yours, source
or sink): the folder of the config file is importable, but it is not where files are
read or written. ``pipeline validate`` names the absolute path it resolved for each
source parameter typed `pathlib.Path` that names no existing file (a followed file may
still appear later, so this is a warning, not a problem).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any, get_type_hints

from pipeline.config.loader import ResolvedPipeline
from pipeline.config.models import Config
from pipeline.errors import Problem

__all__ = ["missing_files"]


def missing_files(config: Config, resolved: Mapping[str, ResolvedPipeline]) -> list[Problem]:
    """Every source parameter typed `Path` whose file does not exist, as a `Problem`.

    The message names the absolute path, unless the value came from the environment.
    """
    out = []
    cwd = os.getcwd()
    for name, rp in resolved.items():
        for param in _path_params(rp.source.fn):
            value = rp.source.params.get(param)
            if not isinstance(value, PurePath) or os.path.exists(value):
                continue
            loc = ("pipelines", name, "source", "with", param)
            shown = "" if config.from_env(loc) else f" `{os.path.abspath(value)}`"
            msg = f"no such file{shown} (relative paths are resolved against `{cwd}`)"
            out.append(config.problem(loc, msg))
    return out


def _path_params(fn: Callable[..., Any]) -> list[str]:
    try:
        hints = get_type_hints(fn)
    except Exception:  # unresolvable annotations: nothing to check
        return []
    return [
        name
        for name, hint in hints.items()
        if name != "return"
        and (_is_path(hint) or any(_is_path(a) for a in getattr(hint, "__args__", ())))
    ]


def _is_path(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, PurePath)
