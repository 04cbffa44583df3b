"""Every exception the framework raises, as one tree.

```
PipelineError
├── ConfigError            problems: list of Problem(file, line, path, message)
│   └── EnvVarError        undefined ${VAR} without default (never prints the value)
├── StageLoadError         `use:` cannot be imported / is not callable / has the wrong shape
├── StageParamsError       `with:` does not match the stage's signature
└── TailError              `pipeline tail` cannot follow its target (in pipeline.client.tail)
```

Failures of one chunk are not exceptions: they are values (`pipeline.engine.items.Failure`).
A run that fails as a whole, or a sink that fails for good, is not an exception either
once the run has started: it is an ``error`` envelope and the run's ``reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class PipelineError(Exception):
    """Base of every exception raised by the framework."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem of a config file, printed as ``FILE:LINE: path: message``."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(PipelineError):
    """A config file has one or more problems; ``str()`` lists one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        self.partial: Any = None  # what did validate, when the file could be read
        self.poisoned: frozenset[str] = frozenset()  # paths whose values are unusable
        super().__init__("\n".join(str(p) for p in problems))


class EnvVarError(ConfigError):
    """A ``${VAR}`` without a default names a variable that is not set."""


class StageLoadError(PipelineError):
    """A stage could not be loaded: not callable, or not of the shape its role needs.

    In a config these are reported as `ConfigError` problems with their line; this is
    raised where a stage is built in code (`pipeline.testing.make_stage`).
    """


class StageParamsError(PipelineError):
    """A ``with:`` mapping does not match the stage's signature.

    ``errors`` holds ``(location, message)`` pairs, the location relative to ``with``.
    """

    def __init__(self, message: str, errors: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.errors = errors
        super().__init__(message)
