"""structlog configuration: logs go to stderr, never stdout (stdout carries data).

Console format on a terminal, JSON lines (orjson) otherwise, or as chosen with
``--log-format``. Configured once, at the edge, by the CLI; library code only asks for
loggers with `get_logger` and passes bound loggers along.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO, cast

import orjson
import structlog

__all__ = ["LogFormat", "configure", "get_logger"]

LogFormat = Literal["auto", "console", "json"]


# Tracebacks as data, without local variables: locals may hold secrets and whole chunks.
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


class _Stderr:
    """Whatever ``sys.stderr`` is at each write, so a live display on the terminal (the
    progress of ``pipeline run``) can print log lines above itself."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or repr).decode()


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Configure structlog (and stdlib logging, for uvicorn) to write to stderr."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(
            colors=True, exception_formatter=structlog.dev.plain_traceback
        )
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors.append(_DICT_TRACEBACKS)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Stderr())),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s", force=True)


def get_logger(**context: Any) -> Any:
    """Return a structlog logger bound to ``context``."""
    return structlog.get_logger("pipeline").bind(**context)


def _default() -> None:
    """Before `configure` runs (library use, tests): JSON lines to stderr, never stdout."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _DICT_TRACEBACKS,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


_default()
