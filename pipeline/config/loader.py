"""``use:`` + ``with:`` -> bound, checked stages (`ResolvedStage`), without running anything.

A ``use:`` is a short name from `stages.BUILTINS` for the stage's role, or
``module.path:callable``; the config's folder is importable. Each callable's shape is
checked against its place (source, transform, sink) and its ``with:`` against its
signature. Every problem of every pipeline is reported at once, as
``FILE:LINE: path: message``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.models import Config, PipelineConfig, StageConfig, load
from pipeline.errors import ConfigError, Problem, StageParamsError
from pipeline.stage import (
    ResolvedStage,
    RetryPolicy,
    StageMeta,
    calling_of,
    is_resource,
    meta_of,
    params_model,
    resource_sink,
    resource_source,
    validate_params,
)
from pipeline.types import StageKind

__all__ = [
    "TRANSPORT_KEYS",
    "ResolvedPipeline",
    "import_timeout",
    "load_and_resolve",
    "problem_order",
    "request_params",
    "resolve",
]

IMPORT_TIMEOUT = 30.0
"""Default seconds a stage module's import may take (``$PIPELINE_IMPORT_TIMEOUT``)."""

Loc = tuple[str | int, ...]
TRANSPORT_KEYS = frozenset({"since"})
"""Query keys the HTTP transport uses itself; never passed to a source."""

_ROLES = {"source": "source", "transforms": "transform", "sinks": "sink", "dead_letter": "sink"}
_IMPORT_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_OPTIONS = ("concurrency", "ordered", "timeout", "retry")
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_FIRST_ARG = {"transform": "the chunk", "sink": "the envelope"}


@dataclass(frozen=True, slots=True)
class ResolvedPipeline:
    """A pipeline whose stages are all imported, checked and bound; nothing has run."""

    name: str
    config: PipelineConfig
    source: ResolvedStage
    transforms: tuple[ResolvedStage, ...]
    sinks: tuple[ResolvedStage, ...]
    dead_letter: ResolvedStage | None


def resolve(config: Config) -> dict[str, ResolvedPipeline]:
    """Import and check every stage of every pipeline of ``config``, in file order.

    Raises:
        ConfigError: with every problem found, in line order.
    """
    resolver = _Resolver(config, _builtins())  # before the config's folder can shadow it
    base = str(config.base_dir)
    if base not in sys.path:
        sys.path.insert(0, base)
    importlib.invalidate_caches()
    pipelines = {name: resolver.pipeline(name, p) for name, p in config.pipelines.items()}
    if resolver.problems:
        raise ConfigError(sorted(resolver.problems, key=problem_order(config)))
    return {name: rp for name, rp in pipelines.items() if rp is not None}


def problem_order(config: Config) -> Callable[[Problem], tuple[bool, str, int]]:
    """Sort key for problems: the first file's in line order, then the others'."""
    return lambda p: (p.file != config.file, p.file, p.line)


def load_and_resolve(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    environ: Mapping[str, str] | None = None,
    sets: Sequence[str] = (),
) -> tuple[Config, dict[str, ResolvedPipeline]]:
    """Load ``path`` (one file or several, merged) and ``sets``, then resolve it,
    reporting every problem in one pass.

    Schema problems do not hide import or parameter problems of the pipelines that did
    validate: both are reported together, in line order.

    Raises:
        ConfigError: with every problem found.
    """
    try:
        config = load(path, environ, sets)
    except ConfigError as exc:
        partial = exc.partial
        if not isinstance(partial, Config):
            raise
        try:
            resolve(partial)
        except ConfigError as more:
            seen = set(exc.problems)
            fresh = [
                p
                for p in more.problems
                if p not in seen
                and not any(
                    p.path == bad or p.path.startswith((bad + ".", bad + "["))
                    for bad in exc.poisoned
                )
            ]
            merged = exc.problems + fresh
            exc.problems = sorted(merged, key=problem_order(partial))
            exc.args = ("\n".join(str(p) for p in exc.problems),)
        raise
    return config, resolve(config)


def request_params(rp: ResolvedPipeline, query: Mapping[str, str]) -> dict[str, Any]:
    """Return the source's parameters for one request: declared query values over ``with:``.

    Raises:
        StageParamsError: an undeclared query key, or a value the source's signature
            rejects; messages name the parameter, never its value.
    """
    declared = set(rp.config.request_params)
    given: dict[str, Any] = {}
    for key, value in query.items():
        if key in TRANSPORT_KEYS:
            continue
        if key not in declared:
            msg = f"undeclared request parameter `{key}`"
            raise StageParamsError(msg, [((key,), "undeclared request parameter")])
        given[key] = value
    try:
        return validate_params(rp.source.fn, {**rp.config.source.with_, **given}, skip_first=False)
    except StageParamsError as exc:
        errors = [(loc, f"request parameter `{loc[0]}`: {m}") for loc, m in exc.errors if loc]
        raise StageParamsError("; ".join(m for _, m in errors), errors) from None


class _Resolver:
    """Resolves stages, collecting problems instead of stopping at the first."""

    def __init__(self, config: Config, builtins: Mapping[str, Mapping[str, str]]) -> None:
        self.config = config
        self.builtins = builtins
        self.problems: list[Problem] = []
        self.imported: dict[str, Callable[..., Any] | str] = {}

    def add(self, loc: Loc, message: str) -> None:
        if loc[-1] == "use" and self.config.from_env(loc):  # the message would name it
            message = "cannot load the stage named by the environment (its name is not shown)"
        self.problems.append(self.config.problem(loc, message))

    def pipeline(self, name: str, pc: PipelineConfig) -> ResolvedPipeline | None:
        base: Loc = ("pipelines", name)
        before = len(self.problems)
        found = {where: self.stage((*base, *where), sc) for where, sc in pc.stages()}
        self.check_ids(base, found, pc)
        source = found[("source",)]
        if source is not None:
            self.check_request_params(base, pc, source)
        stages = [s for s in found.values() if s is not None]
        if len(self.problems) > before:
            return None
        return ResolvedPipeline(
            name=name,
            config=pc,
            source=stages[0],
            transforms=tuple(stages[1 : 1 + len(pc.transforms)]),
            sinks=tuple(stages[1 + len(pc.transforms) : 1 + len(pc.transforms) + len(pc.sinks)]),
            dead_letter=stages[-1] if pc.dead_letter is not None else None,
        )

    def stage(self, loc: Loc, sc: StageConfig) -> ResolvedStage | None:
        role = _ROLES[str(loc[2])]
        found = self.find(loc, sc.use, role)
        if found is None:
            return None
        fn, name = found
        if is_resource(fn):
            return self.resource(loc, role, fn, name, sc)
        kind = self.kind(loc, role, fn, sc.use)
        if kind is None:
            return None
        self.check_options(loc, kind, fn, sc)  # a problem here still lets later checks run
        params = self.params(loc, fn, sc.with_, skip_first=role != "source")
        if params is None:
            return None
        return self.build(loc, sc, name, kind, fn, params)

    def resource(
        self, loc: Loc, role: str, fn: Callable[..., Any], name: str, sc: StageConfig
    ) -> ResolvedStage | None:
        """A `pipeline.resource` stage: ``with:`` is checked against the resource function.

        What it yields is checked when a run sets it up. A source or a sink is adapted
        here (an async generator, a stream sink); a transform is opened by the run.
        """
        meta = meta_of(fn)
        if meta is not None and (role != "sink" or meta.role != "sink" or meta.stream):
            msg = f"`{sc.use}` is a resource: only a sink may be marked too (`@sink(receives=...)`)"
            self.add((*loc, "use"), msg)
            return None
        if role != "transform":
            for option in (*_OPTIONS, "blocking"):
                if option in sc.model_fields_set:
                    msg = f"only per-chunk transforms take `{option}`; this is a resource {role}"
                    self.add((*loc, option), msg)
        params = self.params(loc, fn, sc.with_, skip_first=False)
        if params is None:
            return None
        if role == "source":
            return self.build(loc, sc, name, "source", resource_source(fn), params)
        if role == "sink":
            receives = meta.receives if meta is not None else "envelopes"
            return self.build(loc, sc, name, "sink", resource_sink(fn, receives), params)
        return self.build(loc, sc, name, "map", fn, params)  # the run learns map or flat_map

    def build(
        self,
        loc: Loc,
        sc: StageConfig,
        name: str,
        kind: StageKind,
        fn: Callable[..., Any],
        params: dict[str, Any],
    ) -> ResolvedStage:
        """The `ResolvedStage` of a checked stage, with its id and options."""
        retry = RetryPolicy(**sc.retry.model_dump()) if sc.retry else RetryPolicy()
        place = "".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc[2:])
        return ResolvedStage(
            id=sc.id or f"{place}:{name}",
            kind=kind,
            fn=fn,
            params=params,
            concurrency=sc.concurrency,
            ordered=sc.ordered,
            timeout=sc.timeout,
            retry=retry,
            blocking=sc.blocking,
            meta=meta_of(fn),
        )

    def find(self, loc: Loc, use: str, role: str) -> tuple[Callable[..., Any], str] | None:
        """Turn ``use`` into the callable and the name used in the stage id."""
        builtins = self.builtins
        target, name = builtins[role].get(use), use
        if target is None:
            if ":" not in use or not _IMPORT_RE.fullmatch(use):
                self.add((*loc, "use"), _unknown(use, role, builtins))
                return None
            target, name = use, use.rpartition(":")[2].rpartition(".")[2]
        if target not in self.imported:
            self.imported[target] = _import(target, self.config.base_dir)
        fn = self.imported[target]
        if isinstance(fn, str):
            self.add((*loc, "use"), fn)
            return None
        return fn, name

    def kind(self, loc: Loc, role: str, fn: Callable[..., Any], use: str) -> StageKind | None:
        meta = meta_of(fn)
        if meta is not None and (role == "source" or (meta.role == "sink") != (role == "sink")):
            self.add((*loc, "use"), f"`{use}` is a {_marker(meta)}; it cannot be used as a {role}")
            return None
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            self.add((*loc, "use"), f"cannot read the signature of `{use}`")
            return None
        problem = _shape_problem(sig, role, use)
        if problem:
            self.add((*loc, "use"), problem)
            return None
        if role != "transform":
            return "source" if role == "source" else "sink"
        if meta is not None:
            return "stream"
        return "flat_map" if calling_of(fn) in ("gen", "asyncgen") else "map"

    def check_options(
        self, loc: Loc, kind: StageKind, fn: Callable[..., Any], sc: StageConfig
    ) -> None:
        if kind not in ("map", "flat_map"):
            what = "stream transform" if kind == "stream" else kind
            for option in _OPTIONS:
                if option in sc.model_fields_set:
                    msg = f"only per-chunk transforms take `{option}`; this stage is a {what}"
                    self.add((*loc, option), msg)
        if sc.blocking:
            problem = _blocking_problem(kind, fn, sc.use)
            if problem:
                self.add((*loc, "blocking"), problem)

    def params(
        self, loc: Loc, fn: Callable[..., Any], with_: dict[str, Any], *, skip_first: bool
    ) -> dict[str, Any] | None:
        try:
            return validate_params(fn, with_, skip_first=skip_first)
        except StageParamsError as exc:
            for where, message in exc.errors:
                self.add((*loc, "with", *where), message)
        return None

    def check_ids(
        self, base: Loc, found: Mapping[Loc, ResolvedStage | None], pc: PipelineConfig
    ) -> None:
        explicit = {where: sc.id is not None for where, sc in pc.stages()}
        seen: dict[str, Loc] = {}
        for where, stage in found.items():
            if stage is None:
                continue
            first = seen.setdefault(stage.id, where)
            if first != where and not (explicit[first] and explicit[where]):
                at = (*base, *where, "id") if explicit[where] else (*base, *where)
                self.add(at, f"stage id `{stage.id}` is already used")

    def check_request_params(self, base: Loc, pc: PipelineConfig, source: ResolvedStage) -> None:
        model = params_model(source.fn, skip_first=False)
        if model.model_config.get("extra") == "allow":
            return
        for i, name in enumerate(pc.request_params):
            if name not in model.model_fields:
                msg = f"`{name}` is not a parameter of the source `{pc.source.use}`"
                self.add((*base, "request_params", i), msg)


def _builtins() -> Mapping[str, Mapping[str, str]]:
    """The `stages.BUILTINS` table; reached by name so `pipeline` never imports `stages`."""
    table: Mapping[str, Mapping[str, str]] = importlib.import_module("stages").BUILTINS
    return table


def _unknown(use: str, role: str, builtins: Mapping[str, Mapping[str, str]]) -> str:
    names = ", ".join(f"`{n}`" for n in sorted(builtins[role]))
    other = [r for r, table in builtins.items() if use in table]
    if other:
        return f"`{use}` is a built-in {other[0]}, not a {role}; built-in {role}s: {names}"
    module, dot, attr = use.rpartition(".")
    hint = f" (did you mean `{module}:{attr}`?)" if dot and ":" not in use else ""
    return f"unknown {role} `{use}`; expected `module:callable`{hint} or a built-in {role}: {names}"


def _marker(meta: StageMeta | None) -> str:
    if meta is not None and meta.role == "sink":
        return "sink (marked `@sink`)"
    return "stream transform (marked `@stream_transform`)"


def _shape_problem(sig: inspect.Signature, role: str, use: str) -> str | None:
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in _POSITIONAL]
    required_only = [p for p in positional if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if role == "source":
        if required_only:
            return (
                f"`{use}` takes a required positional parameter `{required_only[0].name}`; "
                "a source takes only keyword parameters from `with:`"
            )
        return None
    first = _FIRST_ARG[role]
    if not positional and not any(p.kind is p.VAR_POSITIONAL for p in params):
        return f"`{use}` takes no positional parameter; a {role} takes {first} as its first one"
    if [p for p in required_only if p is not positional[0]]:
        return (
            f"`{use}` takes more than one required positional parameter; a {role} takes "
            f"{first}, and keyword parameters from `with:`"
        )
    return None


def _blocking_problem(kind: StageKind, fn: Callable[..., Any], use: str) -> str | None:
    meta = meta_of(fn)
    if kind == "stream" or (meta is not None and meta.stream):
        return "`blocking: true` is not allowed on a stream stage"
    calling = calling_of(fn)
    if calling in ("async", "asyncgen"):
        return f"`blocking: true` is for sync functions; `{use}` is async"
    if kind == "source" and calling != "gen":
        return f"`blocking: true` on a source needs a sync generator function; `{use}` is not"
    return None


def _import(target: str, base_dir: Path) -> Callable[..., Any] | str:
    """Import ``module:attr``; return the callable, or the message saying why not."""
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = _import_bounded(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            return f"cannot import module `{module_name}`: {exc}"
        return _failed(module_name, exc, base_dir)
    except _ImportTimeout:
        return f"importing module `{module_name}` took more than {import_timeout():g} s"
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a stage module's, not ours
        return _failed(module_name, exc, base_dir)
    done: list[str] = []
    for part in attr.split("."):
        owner = f"`{module_name}:{'.'.join(done)}`" if done else f"module `{module_name}`"
        try:
            obj = getattr(obj, part)
        except Exception:
            return f"{owner} has no attribute `{part}`{_shadow_hint(module_name, base_dir)}"
        done.append(part)
    if not callable(obj):
        return f"`{target}` is not callable"
    return obj  # type: ignore[no-any-return]


class _ImportTimeout(Exception):
    """A stage module's import did not finish in time."""


def import_timeout() -> float:
    """Seconds a stage module's import may take: ``$PIPELINE_IMPORT_TIMEOUT``, default 30."""
    try:
        return max(float(os.environ.get("PIPELINE_IMPORT_TIMEOUT", "")), 0.1)
    except ValueError:
        return IMPORT_TIMEOUT


def _import_bounded(module_name: str) -> Any:
    """Import ``module_name``, giving up after `import_timeout` seconds.

    A module already imported (or being imported by this thread) is returned at once; a
    new one is imported in a daemon thread, so an import that hangs (a network call at
    import time) cannot hang ``validate`` or ``run``.
    """
    if module_name in sys.modules:
        return importlib.import_module(module_name)
    box: list[Any] = []
    done = threading.Event()

    def work() -> None:
        try:
            box.append((True, importlib.import_module(module_name)))
        except BaseException as exc:  # handed to the caller, which re-raises it
            box.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=work, name=f"import {module_name}", daemon=True).start()
    if not done.wait(import_timeout()):
        raise _ImportTimeout(module_name)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _shadow_hint(module_name: str, base_dir: Path) -> str:
    """Say so when a module beside the config lost to an installed one of the same name."""
    top = module_name.partition(".")[0]
    origin = getattr(sys.modules.get(top), "__file__", None) or ""
    beside = (base_dir / f"{top}.py").exists() or (base_dir / top).is_dir()
    if beside and not Path(origin).resolve().is_relative_to(base_dir.resolve()):
        return f" (`{top}` beside the config is shadowed by an installed `{top}`; rename it)"
    return ""


def _failed(module_name: str, exc: BaseException, base_dir: Path) -> str:
    if isinstance(exc, SyntaxError):
        text, file, line = f"SyntaxError: {exc.msg}", exc.filename, exc.lineno
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        file, line = _raised_at(exc)
    where = f" ({_show_path(file, base_dir)}:{line})" if file and line else ""
    return f"module `{module_name}` failed to import: {text}{where}"


def _raised_at(exc: BaseException) -> tuple[str | None, int | None]:
    """The deepest line of the innermost module being imported when ``exc`` was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    modules = [f.filename for f in frames if f.name == "<module>"]
    if not modules:
        return None, None
    last = [f for f in frames if f.filename == modules[-1]][-1]
    return last.filename, last.lineno


def _show_path(file: str, base_dir: Path) -> str:
    for root in (base_dir, Path.cwd()):
        try:
            return Path(file).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
    return file
