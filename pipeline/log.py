"""structlog configuration: logs go to stderr, never stdout (stdout carries data).

Console format on a terminal, JSON lines (orjson) otherwise, or as chosen with
``--log-format``. Configured once, at the edge, by the CLI; library code only asks for
loggers with `get_logger` and passes bound loggers along.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Literal, TextIO, cast

import orjson


def _import_structlog() -> Any:
    """Import structlog without rich: its optional rich support costs ~30 ms at start-up.

    We never use it (plain tracebacks on the console, dict tracebacks without locals in
    JSON), so `rich` is hidden while structlog imports; commands that want rich
    (``pipeline tail``, ``top``) still import it themselves.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog

        return structlog
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails at once
    try:
        import structlog
    finally:
        del sys.modules["rich"]
    return structlog


if TYPE_CHECKING:
    import structlog
else:
    structlog = _import_structlog()

__all__ = ["MASK", "LogFormat", "configure", "get_logger", "mask", "register_secrets"]

LogFormat = Literal["auto", "console", "json"]

MASK = "***"
MIN_SECRET = 3
"""Shorter environment values are not masked (masking every ``1`` would hide everything)."""
_SECRETS: list[str] = []


def register_secrets(values: Iterable[str]) -> None:
    """Never print these values: from now on `mask` (every log line, every ``error`` and
    ``chunk_error`` message, the server's answers) replaces them by ``***``."""
    known = {v for v in values if len(v) >= MIN_SECRET} | set(_SECRETS)
    _SECRETS[:] = sorted(known, key=len, reverse=True)


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``.

    Example:
        >>> register_secrets(["hunter2"])
        >>> mask("login with hunter2")
        'login with ***'
    """
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


def _mask_event(logger: Any, name: str, event: Any) -> Any:
    """structlog processor: mask secrets in every string of the event (or rendered line)."""
    return _masked(event) if _SECRETS else event


# Tracebacks as data, without local variables: locals may hold secrets and whole chunks.
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)

_TEXT_TRACEBACKS = structlog.processors.ExceptionRenderer()  # the plain text, as ``exception``


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
    # Tracebacks become data (JSON) or text (console) *before* masking, so a secret in an
    # exception's message is masked in the traceback too.
    tail: list[Any] = [_DICT_TRACEBACKS if fmt == "json" else _TEXT_TRACEBACKS]
    tail.append(_mask_event)  # secrets masked in every line, uvicorn's included
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
    # Chatty libraries: their info lines repeat ours (`reload` already says what changed,
    # where watchfiles logs "1 change detected" for every save).
    for name in ("httpx", "httpcore", "watchfiles"):
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
            _mask_event,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


_default()
