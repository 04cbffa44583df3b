"""The catalog of built-in stages, read from their signatures and docstrings.

Each built-in's docstring is its documentation (Google style: a summary line, a
description, ``Args:`` for every parameter, and an ``Example:`` in YAML). `catalog`
collects them for ``pipeline stages``; `render_text` prints them on a terminal and
`render_markdown` writes ``docs/stages.md``.

Built-ins are reached through the import strings of ``stages.BUILTINS``, never imported
statically; a module that fails to import becomes an entry with an ``error``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args, get_origin

import orjson

from pipeline.inlet import inlet_parameter
from pipeline.stage import calling_of, meta_of, params_model

__all__ = ["ParamDoc", "StageDoc", "catalog", "render_markdown", "render_text"]

ROLES = ("source", "transform", "sink")
_TITLES = {"source": "Sources", "transform": "Transforms", "sink": "Sinks"}
_SECTION = re.compile(r"^([A-Z][A-Za-z ]*):\s*$")
_ARG = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?:\s*(.*)$")
_NAME = re.compile(r"\b[A-Za-z_]\w*\b")


@dataclass(frozen=True, slots=True)
class ParamDoc:
    """One parameter of a stage, as ``with:`` takes it."""

    name: str
    type: str
    default: str | None  # its YAML text; None when the parameter is required
    description: str = ""

    @property
    def required(self) -> bool:
        """Whether ``with:`` must give this parameter."""
        return self.default is None


@dataclass(frozen=True, slots=True)
class StageDoc:
    """One built-in stage: where it lives and how to use it, or why it cannot load."""

    role: str
    name: str
    target: str
    kind: str = ""
    summary: str = ""
    description: str = ""
    params: tuple[ParamDoc, ...] = field(default_factory=tuple)
    example: str = ""
    error: str | None = None


def catalog(builtins: Mapping[str, Mapping[str, str]] | None = None) -> list[StageDoc]:
    """Describe every built-in stage, sources first, then transforms, then sinks.

    ``builtins`` defaults to ``stages.BUILTINS`` (role -> short name -> ``module:attr``).
    """
    if builtins is None:
        builtins = importlib.import_module("stages").BUILTINS
    docs = []
    for role in sorted(builtins, key=lambda r: (ROLES.index(r) if r in ROLES else 99, r)):
        for name, target in builtins[role].items():
            docs.append(_describe(role, name, target))
    return docs


def _describe(role: str, name: str, target: str) -> StageDoc:
    try:
        fn = _load(target)
        params = _params(fn, role)
    except Exception as exc:  # a broken module is shown, not fatal
        return StageDoc(role, name, target, error=f"{type(exc).__name__}: {exc}")
    sections = _sections(inspect.getdoc(fn) or "")
    args = _args(sections.get("Args", ""))
    return StageDoc(
        role=role,
        name=name,
        target=target,
        kind=_kind(fn, role),
        summary=sections[""].split("\n\n", 1)[0].replace("\n", " "),
        description=sections[""].partition("\n\n")[2].strip(),
        params=tuple(ParamDoc(p.name, p.type, p.default, args.get(p.name, "")) for p in params),
        example=sections.get("Example", sections.get("Examples", "")),
    )


def _load(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        msg = f"`{target}` is not callable"
        raise TypeError(msg)
    return fn  # type: ignore[no-any-return]


def _kind(fn: Callable[..., Any], role: str) -> str:
    meta = meta_of(fn)
    if role == "source":
        return "source"
    if role == "sink":
        stream = meta is not None and meta.stream
        receives = meta.receives if meta is not None else "envelopes"
        batches = " in batches" if meta is not None and meta.batch else ""
        return f"{'stream ' if stream else ''}sink, receives {receives}{batches}"
    if meta is not None and meta.stream:
        return "stream transform"
    if calling_of(fn) in ("gen", "asyncgen"):
        return "flat-map transform"
    return "per-chunk transform"


def _params(fn: Callable[..., Any], role: str) -> list[ParamDoc]:
    model = params_model(fn, skip_first=role != "source")
    written = {name: p.annotation for name, p in inspect.signature(fn).parameters.items()}
    out = []
    bound = inlet_parameter(fn)  # bound by the server, not given in `with:`
    for name, info in model.model_fields.items():
        if name == bound:
            continue
        hint = written.get(name, inspect.Parameter.empty)
        if isinstance(hint, str):
            type_text = _NAME.sub(lambda m: _unalias(m.group(), fn), hint)
        elif hint is inspect.Parameter.empty:
            type_text = "any"
        else:
            type_text = inspect.formatannotation(hint)
        default = None if info.is_required() else _yaml_value(info.default)
        out.append(ParamDoc(name, type_text, default))
    return out


def _unalias(name: str, fn: Callable[..., Any]) -> str:
    """The base type of a stage's own checked alias (``Annotated[X, <validator>]``): ``X``.

    Aliases with only bounds (pydantic's ``PositiveInt``) keep their name, which says it.
    """
    alias = getattr(fn, "__globals__", {}).get(name)
    if get_origin(alias) is not Annotated:
        return name
    base, *extras = get_args(alias)
    if all(type(x).__module__.startswith("annotated_types") for x in extras):
        return name
    return inspect.formatannotation(base)


def _yaml_value(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def _sections(doc: str) -> dict[str, str]:
    """Split a Google-style docstring into ``{"": head, "Args": ..., "Example": ...}``."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in doc.splitlines():
        match = _SECTION.match(line)
        if match:
            current = match.group(1)
            sections[current] = []
        else:
            sections[current].append(line)
    return {name: textwrap.dedent("\n".join(lines)).strip() for name, lines in sections.items()}


def _args(text: str) -> dict[str, str]:
    """Parse an ``Args:`` block: ``name: text`` lines, continued on indented lines."""
    args: dict[str, list[str]] = {}
    last = None
    for line in text.splitlines():
        match = _ARG.match(line)
        if match and not line[:1].isspace():
            last = match.group(1)
            args[last] = [match.group(2)]
        elif last is not None and line.strip():
            args[last].append(line.strip())
    return {name: " ".join(parts).strip() for name, parts in args.items()}


def render_text(docs: list[StageDoc]) -> str:
    """Render the catalog for a terminal: name, role, kind, summary and parameters."""
    blocks = []
    for doc in docs:
        kind = doc.kind if doc.kind and doc.kind != doc.role else doc.role
        head = f"{doc.name}  ({kind})  {doc.target}"
        lines = [head]
        if doc.error is not None:
            lines.append(f"    cannot load: {doc.error}")
        elif doc.summary:
            lines.append(f"    {doc.summary}")
        width = max((len(p.name) for p in doc.params), default=0)
        for p in doc.params:
            default = "required" if p.default is None else f"= {p.default}"
            lines.append(f"      {p.name:<{width}}  {p.type} {default}")
            if p.description:
                lines.append(f"      {'':<{width}}  {p.description}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def render_markdown(docs: list[StageDoc]) -> str:
    """Render the catalog as the ``docs/stages.md`` page."""
    out = [
        "# Built-in stages",
        "",
        "<!-- Generated from the stages' docstrings by `pipeline stages --markdown`;"
        " do not edit by hand. -->",
        "",
        "Use a built-in by its short name in `use:`; its parameters go under `with:`.",
        "Any other stage is a `module.path:callable` you write.",
    ]
    for role in dict.fromkeys(doc.role for doc in docs):
        out += ["", f"## {_TITLES.get(role, role.title())}"]
        for doc in (d for d in docs if d.role == role):
            out += ["", *_markdown_stage(doc)]
    return "\n".join(out) + "\n"


def _markdown_stage(doc: StageDoc) -> list[str]:
    out = [f"### `{doc.name}`", "", f"`{doc.target}` — {doc.kind or doc.role}"]
    if doc.error is not None:
        return [*out, "", f"**Cannot be loaded:** `{doc.error}`"]
    out += ["", doc.summary]
    if doc.description:
        out += ["", doc.description]
    if doc.params:
        out += ["", "| parameter | type | default | description |", "| --- | --- | --- | --- |"]
        for p in doc.params:
            default = "*required*" if p.default is None else f"`{_cell(p.default)}`"
            out.append(f"| `{p.name}` | `{_cell(p.type)}` | {default} | {_cell(p.description)} |")
    if doc.example:
        out += ["", "```yaml", doc.example, "```"]
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
