"""The package's import arrows follow docs/architecture.md, with no cycle anywhere.

Rooms (subpackages) may import only the rooms listed for them; inside the vocabulary
(the top-level modules) a module imports only from a lower level. Every import counts,
also one inside a function or under ``TYPE_CHECKING``: a design cycle is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "pipeline"

VOCABULARY = {"types": 0, "errors": 0, "log": 0, "meter": 0, "envelope": 1, "stage": 1, "inlet": 1}
"""Top-level modules every room may use, by level."""

ALLOWED = {
    "config": {"vocabulary"},
    "engine": {"vocabulary"},
    "hub": {"vocabulary"},
    "server": {"vocabulary", "engine", "hub", "config"},
    "client": {"vocabulary", "config"},
    "testing": {"vocabulary", "engine", "config"},
    "cli": {"vocabulary", "config", "engine", "hub", "server", "client", "testing"},
    "__main__": {"cli"},
    "__init__": {"vocabulary"},
}
"""room -> the rooms it may import ("vocabulary" = the modules of `VOCABULARY`)."""


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def room_of(name: str) -> str:
    part = name.split(".")[1] if "." in name else "__init__"
    return "vocabulary" if part in VOCABULARY else part


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from pipeline.x import y`` counts ``x.y``
    when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif node.module in known:
                    found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
    return {f for f in found if f.startswith("pipeline")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def test_every_module_has_a_room() -> None:
    """Each module sits in the vocabulary or in a room of the table."""
    rooms = {room_of(name) for name in modules()}
    assert rooms - set(ALLOWED) - {"vocabulary"} == set()


def test_rooms_import_only_what_they_may() -> None:
    """config, engine and hub use only the vocabulary; server and client what the table says."""
    bad = []
    for name, deps in graph().items():
        mine = room_of(name)
        for dep in deps:
            theirs = room_of(dep)
            if name == "pipeline" and dep == "pipeline.testing":
                continue
            if theirs == mine and mine != "vocabulary":
                continue
            if mine == "vocabulary":
                if (
                    theirs != "vocabulary"
                    or VOCABULARY[dep.split(".")[1]] >= VOCABULARY[name.split(".")[1]]
                ):
                    bad.append(f"{name} -> {dep}")
            elif theirs not in ALLOWED[mine]:
                bad.append(f"{name} -> {dep}")
    assert sorted(bad) == []


def test_no_import_cycles() -> None:
    """No module reaches itself through imports, inside a room too."""
    g = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if dep.endswith("__init__") or (dep in g and g[dep] and dep == "pipeline"):
                continue
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert cycles == []


def test_framework_never_imports_stage_library() -> None:
    """Nothing in pipeline/ imports stages/ statically (built-ins go by import string)."""
    offenders = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] == "stages"]
    assert offenders == []


def test_stage_library_uses_public_api_only() -> None:
    """stages/ imports only the public names of `pipeline` (and the envelope encoder)."""
    offenders = []
    for path in (ROOT / "stages").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            if node.module == "pipeline":
                names = [a.name for a in node.names if a.name not in pipeline.__all__]
                offenders += [f"{path.name} -> {name}" for name in names]
            elif node.module.startswith("pipeline.") and node.module != "pipeline.envelope":
                offenders.append(f"{path.name} -> {node.module}")
    assert offenders == []
