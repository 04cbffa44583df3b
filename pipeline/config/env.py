"""``${VAR}`` interpolation into string values, after parsing, remembering what it touched.

Only string *values* are interpolated, never keys, so the environment can never change
the structure of the file. ``${VAR:-default}`` falls back to ``default`` when ``VAR`` is
unset; ``$${`` is a literal ``${``. Values that came from the environment are recorded
(their locations and the values themselves) so they are never printed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Interpolated", "interpolate"]

Loc = tuple[str | int, ...]

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
MALFORMED = (
    "malformed `${...}`; expected `${NAME}` or `${NAME:-default}` (write `$${` for a literal `${`)"
)


@dataclass
class Interpolated:
    """The data with ``${...}`` replaced, plus what came from the environment.

    Attributes:
        data: the new data (the input is not modified).
        env_paths: locations of string values that took any part from the environment.
        secrets: the values read from the environment, to scrub from any message.
        problems: ``(location, message)`` pairs; messages name variables, never values.
    """

    data: Any
    env_paths: set[Loc] = field(default_factory=set)
    secrets: set[str] = field(default_factory=set)
    problems: list[tuple[Loc, str]] = field(default_factory=list)


def interpolate(data: Any, environ: Mapping[str, str]) -> Interpolated:
    """Replace ``${VAR}`` references in every string value of ``data``.

    Example:
        >>> interpolate({"a": "${X:-1}/${Y}"}, {"Y": "2"}).data
        {'a': '1/2'}
    """
    result = Interpolated(None)
    result.data = _walk(data, (), environ, result)
    return result


def _walk(value: Any, loc: Loc, environ: Mapping[str, str], out: Interpolated) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, (*loc, k), environ, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, (*loc, i), environ, out) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        return _substitute(value, loc, environ, out)
    return value


def _substitute(text: str, loc: Loc, environ: Mapping[str, str], out: Interpolated) -> str:
    errors: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        ref = _REF.fullmatch(match.group(1) or "")
        if match.group(1) is None or ref is None:
            errors.append(MALFORMED)
            return ""
        name, default = ref.group(1), ref.group(2)
        if name in environ:
            out.env_paths.add(loc)
            if environ[name]:
                out.secrets.add(environ[name])
            return environ[name]
        if default is None:
            errors.append(f"environment variable `{name}` is not set and has no default")
            return ""
        return default

    new = _TOKEN.sub(replace, text)
    out.problems.extend((loc, e) for e in dict.fromkeys(errors))
    return new
