"""The user code behind a config: which modules it is, a fingerprint of it, a fresh import.

A reload must really run the new code, so the modules a config's stages come from are
dropped from `sys.modules` before the config is resolved again. *User code* is every
imported module whose file lies under a config's folder or under the top-level package
of a stage module named by ``use:``, except the standard library, installed packages
(``site-packages``) and the project's own ``pipeline`` and ``stages`` packages.

A pipeline's fingerprint hashes its definition (the validated `PipelineConfig`) and the
user code its stages run: each stage function's body and defaults, the user functions it
calls (recursively), the literal globals it reads, and the whole file of any user module
it uses otherwise (``helpers.label()``), with the user modules that module reaches. A
reload restarts exactly the pipelines whose fingerprint changed; editing one function of
a shared ``stages.py`` restarts only the pipelines that use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

import orjson

__all__ = [
    "code_roots",
    "fingerprint",
    "purge_user_modules",
    "reached",
    "stage_modules",
    "user_modules",
]

_OWN = ("pipeline", "stages")


def _system_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def _file_of(module: ModuleType) -> str | None:
    file = getattr(module, "__file__", None)
    return os.path.realpath(file) if isinstance(file, str) else None


def _is_own(name: str) -> bool:
    return name.partition(".")[0] in _OWN or name == "__main__"


def user_modules(roots: Iterable[Path | str]) -> dict[str, str]:
    """Map every imported user module under ``roots`` to its file (see the module doc)."""
    prefixes = tuple(os.path.realpath(r) + os.sep for r in roots)
    system = _system_roots()
    found = {}
    for name, module in list(sys.modules.items()):
        file = _file_of(module) if module is not None else None
        if file is None or _is_own(name) or file.startswith(system):
            continue
        if file.startswith(prefixes):
            found[name] = file
    return found


def code_roots(base_dirs: Iterable[Path], stage_modules: Iterable[str]) -> list[Path]:
    """The folders holding user code: the configs' folders, and each named stage module's
    top-level package (or the module's own folder)."""
    roots = [Path(d) for d in base_dirs]
    for name in stage_modules:
        top = sys.modules.get(name.partition(".")[0])
        file = _file_of(top) if top is not None else None
        if file is None or _is_own(name) or file.startswith(_system_roots()):
            continue
        roots.append(Path(file).parent)
    return roots


def purge_user_modules(roots: Iterable[Path | str]) -> list[str]:
    """Forget every user module under ``roots`` so the next import reads its file again.

    Their cached bytecode is removed too: an edit within the same second that keeps the
    file's size would otherwise be served from a stale ``.pyc``.
    """
    names = user_modules(roots)
    for name, file in names.items():
        sys.modules.pop(name, None)
        try:
            cached = importlib.util.cache_from_source(file)
        except (NotImplementedError, ValueError):  # no bytecode cache here (cache_tag None,
            continue  # or not a .py file): nothing stale to remove
        with contextlib.suppress(OSError):
            os.unlink(cached)
    importlib.invalidate_caches()
    return sorted(names)


def _referenced(module: ModuleType, users: dict[str, str]) -> set[str]:
    out = set()
    for value in list(vars(module).values()):
        name: Any = value.__name__ if isinstance(value, ModuleType) else None
        if name is None:
            name = getattr(value, "__module__", None)
        if isinstance(name, str) and name in users:
            out.add(name)
    return out


def stage_modules(fn: Callable[..., Any]) -> set[str]:
    """The modules defining ``fn`` (a function, a partial, or an instance's class)."""
    target: Any = getattr(fn, "func", fn)
    names = {getattr(target, "__module__", None), getattr(type(target), "__module__", None)}
    return {n for n in names if isinstance(n, str)}


def reached(starts: Iterable[str], users: dict[str, str]) -> list[str]:
    """Every user module reachable from ``starts`` through module globals, sorted."""
    seen: set[str] = set()
    todo = [s for s in starts if s in users]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        module = sys.modules.get(name)
        if module is not None:
            todo.extend(_referenced(module, users) - seen)
    return sorted(seen)


_LITERALS = (str, bytes, int, float, bool, type(None), tuple, frozenset)


class _Code:
    """What one pipeline's stages run: function bodies, literals and whole modules."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self.parts: list[str] = []
        self.modules: set[str] = set()
        self._seen: set[int] = set()

    def add(self, obj: Any) -> None:
        target = getattr(obj, "__wrapped__", None) or getattr(obj, "func", None) or obj
        target = getattr(target, "__func__", target)
        if not inspect.isfunction(target):
            kind = target if inspect.isclass(target) else type(target)
            self.modules.add(kind.__module__)
            return
        if id(target) in self._seen:
            return
        self._seen.add(id(target))
        self.parts.append(f"{target.__module__}:{target.__qualname__}:{_shape(target.__code__)}")
        self.parts.append(repr(target.__defaults__) + repr(target.__kwdefaults__))
        for cell in target.__closure__ or ():
            with contextlib.suppress(ValueError):
                self.value(target, "<closure>", cell.cell_contents)
        for name in _global_names(target.__code__):
            if name in target.__globals__:
                self.value(target, name, target.__globals__[name])

    def value(self, fn: Any, name: str, value: Any) -> None:
        if isinstance(value, ModuleType):
            if value.__name__ in self.users:
                self.modules.add(value.__name__)
        elif inspect.isfunction(value) or inspect.isclass(value):
            if getattr(value, "__module__", None) in self.users:
                self.add(value)
        elif isinstance(value, _LITERALS) and (text := _repr(value)) is not None:
            self.parts.append(f"{name}={text}")
        elif fn.__module__ in self.users:  # some other object: its module's file decides
            self.modules.add(fn.__module__)


def _repr(value: Any) -> str | None:
    """A literal's text, or None when it is long or its ``repr`` fails (a tuple of user
    objects may hold one that cannot be shown yet): then its module's file decides."""
    try:
        text = repr(value)
    except Exception:
        return None
    return text if len(text) < 10_000 else None


def _global_names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _global_names(const)
    return names


def _shape(code: CodeType) -> str:
    """A function's code without its file or line numbers (moving it changes nothing)."""
    consts = tuple(_shape(c) if isinstance(c, CodeType) else repr(c) for c in code.co_consts)
    blob = repr((code.co_code, consts, code.co_names, code.co_varnames, code.co_freevars))
    return hashlib.sha256(blob.encode()).hexdigest()


def _digest(file: str) -> str:
    try:
        return hashlib.sha256(Path(file).read_bytes()).hexdigest()
    except OSError:
        return "missing"


def fingerprint(definition: Any, fns: Iterable[Callable[..., Any]], users: dict[str, str]) -> str:
    """Hash a pipeline's definition and the user code its stage functions reach.

    A stage function counts by its body (not its line numbers), its defaults, and what
    it uses: user functions it calls (the same way, recursively), literal globals, and
    whole user modules (by file, with the user modules those reach) for anything else.

    Args:
        definition: JSON-able data (the pipeline's validated config, dumped).
        fns: the pipeline's stage callables.
        users: the user modules, as `user_modules` returns them.
    """
    found = _Code(users)
    for fn in fns:
        found.add(fn)
    files = [(name, _digest(users[name])) for name in reached(found.modules, users)]
    blob = orjson.dumps(
        {"definition": definition, "code": sorted(found.parts), "files": files},
        option=orjson.OPT_SORT_KEYS,
        default=str,
    )
    return hashlib.sha256(blob).hexdigest()
