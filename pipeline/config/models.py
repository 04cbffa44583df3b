"""``pipelines.yaml`` -> a validated `Config`; every problem of the file reported at once.

Reading goes YAML (`pipeline.config.parse`) -> ``${VAR}`` interpolation (`pipeline.config.env`) ->
pydantic models (``extra="forbid"``) -> cross-field checks. Each problem becomes a
``Problem(file, line, path, message)``; messages say what was expected and never repeat
the value found, so a secret from the environment can never leak through an error.
"""

from __future__ import annotations

import copy
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.config import env as _env, layers as _layers, parse as _yaml
from pipeline.config.parse import Loc, format_loc
from pipeline.errors import ConfigError, EnvVarError, Problem
from pipeline.log import register_secrets

__all__ = [
    "Config",
    "PipelineConfig",
    "RetryConfig",
    "ServerConfig",
    "StageConfig",
    "default_config_path",
    "describe",
    "load",
    "shown_sets",
]

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MASK = "***"
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*):[^@/\s]*@")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ServerConfig(_Model):
    """The ``server:`` section, used by ``pipeline run --serve``."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    token: str = ""
    client_buffer: int = Field(default=1024, gt=0)
    client_buffer_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    heartbeat: float = Field(default=15.0, gt=0)
    max_clients: int = Field(default=1000, gt=0)
    shutdown_timeout: float = Field(default=10.0, ge=0)
    cors_origins: list[str] = Field(default_factory=list)
    metrics_token: str = ""
    max_head_bytes: int = Field(default=64 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=1)
    head_timeout: float = Field(default=10.0, gt=0)
    evict_idle_after: float | None = Field(default=30.0, gt=0)


class RetryConfig(_Model):
    """A stage's ``retry:``: ``attempts`` in all, waiting ``backoff * 2**n`` in between."""

    attempts: int = Field(ge=1)
    backoff: float = Field(default=0.0, ge=0)
    max_backoff: float = Field(default=30.0, gt=0)


class StageConfig(_Model):
    """One stage: ``use:`` (a built-in name or ``module:callable``), ``with:`` and options."""

    use: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    id: str | None = None
    concurrency: int = Field(default=1, ge=1)
    ordered: bool = True
    timeout: float | None = Field(default=None, gt=0)
    retry: RetryConfig | None = None
    blocking: bool = False

    @field_validator("with_", mode="before")
    @classmethod
    def _empty_with(cls, value: Any) -> Any:
        return {} if value is None else value


class PipelineConfig(_Model):
    """One pipeline: a source, transforms, sinks and run options."""

    description: str = ""
    source: StageConfig
    transforms: list[StageConfig] = Field(default_factory=list)
    sinks: list[StageConfig] = Field(default_factory=list)
    dead_letter: StageConfig | None = None
    retain: int = Field(default=10000, ge=0)
    retain_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    max_chunk_errors: int | None = Field(default=None, ge=0)
    trigger: Literal["start", "request"] = "start"
    request_params: list[str] = Field(default_factory=list)

    @field_validator("transforms", "sinks", mode="before")
    @classmethod
    def _empty_list(cls, value: Any) -> Any:
        return [] if value is None else value

    def stages(self) -> list[tuple[Loc, StageConfig]]:
        """Every stage with its location relative to the pipeline, in file order."""
        found: list[tuple[Loc, StageConfig]] = [(("source",), self.source)]
        found += [(("transforms", i), s) for i, s in enumerate(self.transforms)]
        found += [(("sinks", i), s) for i, s in enumerate(self.sinks)]
        if self.dead_letter is not None:
            found.append((("dead_letter",), self.dead_letter))
        return found


@dataclass(frozen=True)
class Config:
    """A loaded, validated config (one file, or several merged, plus ``--set``).

    Attributes:
        path: the (first) config file; ``file`` is the same path exactly as it was given.
        base_dir: the folder holding the first file, made importable by the loader.
        pipelines: name -> pipeline, in file order.
        files: every config file, as given, in order.
        sets: the ``--set PATH=VALUE`` overrides, in order.
        origins: where each value came from when not from ``file`` (another file, or
            ``--set``); see `pipeline.config.layers`.
    """

    path: Path
    file: str
    base_dir: Path
    server: ServerConfig
    pipelines: dict[str, PipelineConfig]
    lines: Mapping[Loc, int]
    env_paths: frozenset[Loc]
    secrets: frozenset[str]
    files: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    origins: Mapping[Loc, str] = field(default_factory=dict)

    def file_of(self, path: Loc) -> str:
        """The file the value at ``path`` (or its nearest ancestor) was written in."""
        loc = tuple(path)
        while loc not in self.origins and loc not in self.lines and loc:
            loc = loc[:-1]
        return self.origins.get(loc, self.file)

    def line_of(self, path: str | Loc) -> int:
        """Return the line of ``path`` or of its nearest ancestor found in the file."""
        if isinstance(path, str):
            by_text = {format_loc(loc): line for loc, line in self.lines.items()}
            while path not in by_text and path:
                path = re.sub(r"(\[\d+\]|\.?[^.\[\]]*)$", "", path, count=1)
            return by_text.get(path, 1)
        loc = tuple(path)
        while loc not in self.lines and loc:
            loc = loc[:-1]
        return self.lines.get(loc, 1)

    def from_env(self, loc: Loc) -> bool:
        """Whether the value at ``loc`` (or one containing it) came from the environment."""
        return any(loc[:n] in self.env_paths for n in range(len(loc) + 1))

    def problem(
        self, loc: Loc, message: str, line: int | None = None, file: str | None = None
    ) -> Problem:
        """Build a `Problem` at ``loc`` (in the file it came from), secrets scrubbed."""
        line = self.line_of(loc) if line is None else line
        file = self.file_of(loc) if file is None else file
        return Problem(file, line, format_loc(loc), scrub(message, self.secrets))


def scrub(message: str, secrets: frozenset[str] | set[str]) -> str:
    """Replace every environment value of 3 characters or more in ``message`` by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 3:
            message = message.replace(secret, MASK)
    return message


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return ``$PIPELINE_CONFIG`` if set, else ``./pipelines.yaml``."""
    env = os.environ if environ is None else environ
    return Path(env.get("PIPELINE_CONFIG") or "pipelines.yaml")


def load(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    environ: Mapping[str, str] | None = None,
    sets: Sequence[str] = (),
) -> Config:
    """Read, merge, interpolate and validate the config file(s) at ``path``.

    Args:
        path: the file, or several merged in order (see `pipeline.config.layers`);
            problems name each file exactly as given here.
        environ: the variables for ``${VAR}``; ``os.environ`` by default.
        sets: ``PATH=VALUE`` overrides applied last (``--set``).

    Raises:
        ConfigError: with every problem found, in line order (`EnvVarError` when the only
            problems are undefined variables).
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    files = [os.fspath(p) for p in paths]
    layered = _layers.merge([(f, _yaml.read(f)) for f in files], list(sets))
    problems: list[tuple[Loc, int, str, str | None]] = [
        (loc, line, msg, file) for file, loc, line, msg in layered.problems
    ]
    if layered.data is None:
        raise ConfigError(_as_problems(problems))
    env = _env.interpolate(layered.data, os.environ if environ is None else environ)
    register_secrets(env.secrets)  # masked in every output from now on, run time included
    poisoned = layered.poisoned | {loc for loc, _ in env.problems}
    problems += [(loc, 0, msg, None) for loc, msg in env.problems]
    collected = _Collector()
    server, pipelines = _validate(env.data, collected)
    problems += [
        (loc, 0, msg, None)
        for loc, msg in collected.items
        if not any(loc[:n] in poisoned for n in range(len(loc) + 1))
    ]
    if server is not None:
        register_secrets([server.token, server.metrics_token])
    config = Config(
        path=Path(files[0]),
        file=files[0],
        base_dir=Path(files[0]).resolve().parent,
        server=server or ServerConfig(),
        pipelines=pipelines,
        lines=layered.lines,
        env_paths=frozenset(env.env_paths),
        secrets=frozenset(env.secrets),
        files=tuple(files),
        sets=tuple(sets),
        origins={k: v for k, v in layered.files.items() if v != files[0]},
    )
    if problems:
        found = sorted(
            (config.problem(loc, msg, line or None, file) for loc, line, msg, file in problems),
            key=lambda p: (p.file != files[0], p.file, p.line),
        )
        env_only = len(found) == len(env.problems)
        error = (EnvVarError if env_only else ConfigError)(found)
        error.partial = config  # the pipelines that did validate, for one-pass reports
        unusable = poisoned | {loc for loc, _ in collected.items}  # salvaged without them
        error.poisoned = frozenset(format_loc(loc) for loc in unusable)
        raise error
    return config


def _as_problems(items: list[tuple[Loc, int, str, str | None]]) -> list[Problem]:
    return [Problem(file or "", line, format_loc(loc), msg) for loc, line, msg, file in items]


class _Collector:
    def __init__(self) -> None:
        self.items: list[tuple[Loc, str]] = []

    def add(self, loc: Loc, message: str) -> None:
        self.items.append((loc, message))

    def validate(self, model: type[_Model], value: Any, loc: Loc) -> Any:
        try:
            return model.model_validate(value)
        except pydantic.ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False):
                where, message = describe_error(model, err)
                self.add((*loc, *where), message)
            return _salvage(model, value, exc)


def _salvage(model: type[_Model], value: Any, exc: pydantic.ValidationError) -> Any:
    """``value`` validated without the keys that failed (already reported), or None.

    So that one unknown or bad key does not hide the problems of the stages beside it:
    the loader still resolves what is left (its findings are reported in the same pass).
    """
    if not isinstance(value, dict):
        return None
    cleaned = copy.deepcopy(value)
    for err in exc.errors(include_input=False, include_url=False):
        *parents, last = err["loc"] or (None,)
        node: Any = cleaned
        for part in parents:
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                node = None
        if isinstance(node, dict) and last in node and last not in ("use", "source"):
            del node[last]
    try:
        return model.model_validate(cleaned)
    except pydantic.ValidationError:
        return None


def _validate(data: dict[str, Any], out: _Collector) -> tuple[ServerConfig | None, dict[str, Any]]:
    for key in data:
        if key not in ("server", "pipelines"):
            out.add((key,), "unknown key; expected one of `server`, `pipelines`")
    server = out.validate(ServerConfig, data.get("server") or {}, ("server",))
    raw = data.get("pipelines")
    if "pipelines" not in data:
        out.add((), "missing required key `pipelines`")
        return server, {}
    if not isinstance(raw, dict) or not raw:
        found = "an empty mapping" if isinstance(raw, dict) or raw is None else "another type"
        out.add(("pipelines",), f"expected a mapping of pipeline names to pipelines, found {found}")
        return server, {}
    pipelines: dict[str, PipelineConfig] = {}
    for name, value in raw.items():
        loc = ("pipelines", name)
        if not NAME_RE.match(name):
            out.add(
                loc,
                "invalid pipeline name; expected letters, digits, `_`, `.` or `-`, "
                "starting with a letter, digit or `_`",
            )
        pipeline = out.validate(PipelineConfig, value, loc)
        if pipeline is not None:
            _check_pipeline(pipeline, loc, out)
            pipelines[name] = pipeline
    return server, pipelines


def _check_pipeline(pipeline: PipelineConfig, loc: Loc, out: _Collector) -> None:
    if pipeline.request_params and pipeline.trigger != "request":
        out.add((*loc, "request_params"), "only allowed with `trigger: request`")
    seen: dict[str, Loc] = {}
    for where, stage in pipeline.stages():
        if stage.id is None:
            continue
        if stage.id in seen:
            first = format_loc((*loc, *seen[stage.id]))
            out.add((*loc, *where, "id"), f"duplicate stage id; already used by `{first}`")
        else:
            seen[stage.id] = where


def describe(config: Config) -> dict[str, Any]:
    """Describe ``config`` as JSON-able data for ``pipeline list``.

    Every value that came from the environment is replaced by ``***``, and so are a
    non-empty ``server.token`` or ``server.metrics_token`` and the password of a URL
    (``postgresql://u:***@h/db``).
    """
    server = config.server.model_dump()
    for key in ("token", "metrics_token"):
        if server[key]:
            server[key] = MASK
    pipelines = {
        name: _describe_pipeline(config, ("pipelines", name), p)
        for name, p in config.pipelines.items()
    }
    return {
        "files": list(config.files or (config.file,)),
        "sets": shown_sets(config),
        "server": _masked(config, ("server",), server),
        "pipelines": pipelines,
    }


def shown_sets(config: Config) -> list[str]:
    """The ``--set`` arguments as they may be shown: a token or a ``${VAR}`` is masked."""
    out = []
    for arg in config.sets:
        path, _, value = arg.partition("=")
        secret = path.strip() in ("server.token", "server.metrics_token") or "${" in value
        out.append(f"{path}={MASK}" if secret and value else arg)
    return out


def _describe_pipeline(config: Config, loc: Loc, p: PipelineConfig) -> dict[str, Any]:
    def stage(s: StageConfig, where: Loc) -> dict[str, Any]:
        place = "".join(f"[{part}]" if isinstance(part, int) else str(part) for part in where)
        name = s.use.rpartition(":")[2].rpartition(".")[2] if ":" in s.use else s.use
        out: dict[str, Any] = {"use": s.use, "with": s.with_, "id": s.id or f"{place}:{name}"}
        if where[0] == "transforms":
            retry = s.retry.model_dump() if s.retry else None
            out |= {"concurrency": s.concurrency, "ordered": s.ordered, "timeout": s.timeout}
            out["retry"] = retry
        return out | {"blocking": s.blocking}

    described: dict[str, Any] = _masked(
        config,
        loc,
        {
            "description": p.description,
            "trigger": p.trigger,
            "source": stage(p.source, ("source",)),
            "transforms": [stage(s, ("transforms", i)) for i, s in enumerate(p.transforms)],
            "sinks": [stage(s, ("sinks", i)) for i, s in enumerate(p.sinks)],
            "dead_letter": stage(p.dead_letter, ("dead_letter",)) if p.dead_letter else None,
            "request_params": p.request_params,
            "retain": p.retain,
            "retain_bytes": p.retain_bytes,
            "max_chunk_errors": p.max_chunk_errors,
        },
    )
    return described


def _masked(config: Config, loc: Loc, value: Any) -> Any:
    if value == MASK:
        return value
    if config.from_env(loc):
        return MASK
    if isinstance(value, str) and "://" in value:  # a password in a URL or DSN
        return _URL_PASSWORD.sub(rf"\1:{MASK}@", value)
    if isinstance(value, dict):
        return {k: _masked(config, (*loc, k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(config, (*loc, i), v) for i, v in enumerate(value)]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


_TYPE_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}
_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def describe_error(model: type[BaseModel], err: Mapping[str, Any]) -> tuple[Loc, str]:
    """Turn one pydantic error into ``(location, message)``; the input is never repeated."""
    loc: Loc = tuple(err["loc"])
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "missing":
        return loc[:-1], f"missing required key `{loc[-1]}`"
    if kind == "extra_forbidden":
        keys = ", ".join(f"`{k}`" for k in _allowed_keys(_annotation_at(model, loc[:-1])))
        return loc, f"unknown key; expected one of {keys}"
    if kind in _TYPE_MESSAGES:
        return loc, _TYPE_MESSAGES[kind]
    annotation = _annotation_at(model, loc)
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "")
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        noun = "an integer" if annotation is int else "a number"
        return loc, f"expected {noun} {_BOUNDS[kind]} {bound}"
    if kind == "literal_error":
        return loc, "expected " + " or ".join(f"`{a}`" for a in get_args(annotation))
    return loc, "invalid value"


def _strip_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _annotation_at(model: type[BaseModel], loc: Loc) -> Any:
    tp: Any = model
    for part in loc:
        tp = _strip_none(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {f.alias or n: f for n, f in tp.model_fields.items()}
            if part not in fields:
                return None
            tp = fields[str(part)].annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    return _strip_none(tp)


def _allowed_keys(tp: Any) -> list[str]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []
