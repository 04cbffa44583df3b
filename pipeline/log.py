"""structlog configuration: logs go to stderr, never stdout (stdout carries data).

Console format on a terminal, JSON lines (orjson) otherwise, or as chosen with
``--log-format``. Configured once, at the edge, by the CLI; library code only asks for
loggers with `get_logger` and passes bound loggers along.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
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


_REMOVE_META = structlog.stdlib.ProcessorFormatter.remove_processors_meta


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or repr).decode()


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Configure structlog, and the standard library's logging, to write to stderr.

    Records of the standard library (uvicorn's start, access and shutdown lines, httpx,
    warnings) go through the same processors and renderer as our own events, so with
    ``json`` every stderr line is one JSON object. uvicorn's access lines become
    ``http_request`` events with ``client``, ``method``, ``path`` and ``status``.
    httpx/httpcore's per-request INFO lines are shown at ``debug`` only.
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(
            colors=True, exception_formatter=structlog.dev.plain_traceback
        )
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    tail: list[Any] = [_DICT_TRACEBACKS] if fmt == "json" else []
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Stderr())),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(cast(TextIO, _Stderr()))  # above a live display too
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _stdlib_fields],
            processors=[_REMOVE_META, *tail, renderer],
            pass_foreign_args=True,
        )
    )
    logging.basicConfig(handlers=[handler], level=level.upper(), force=True)
    logging.captureWarnings(True)
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)


def _stdlib_fields(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Give uvicorn's access lines fields instead of a formatted sentence."""
    args = event.pop("positional_args", None)
    if event.get("logger") == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        client, http_method, path, version, status = args
        event.update(
            event="http_request",
            client=client,
            method=http_method,
            path=path,
            http_version=version,
            status=status,
        )
    return event


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
