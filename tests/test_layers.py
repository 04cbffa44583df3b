"""Import edges follow the layers of STYLE 4.2: a module imports only from below."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = {
    "types": 0,
    "errors": 0,
    "log": 0,
    "envelope": 1,
    "stage": 1,
    "_yaml": 1,
    "_env": 1,
    "acks": 1,
    "config": 2,
    "isolate": 2,
    "hub": 2,
    "subscription": 2,
    "catalog": 2,
    "loader": 3,
    "reader": 3,
    "chain": 3,
    "engine": 3,
    "fanout": 3,
    "supervisor": 4,
    "testing": 4,
    "server": 5,
    "_responses": 5,
    "tail": 5,
    "_pretty": 4,
    "serve": 6,
    "cli": 7,
    "__main__": 7,
    "__init__": 7,
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pipeline":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("pipeline."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipeline."):
                    found.add(alias.name.split(".")[1])
    return found


def test_every_module_has_a_layer() -> None:
    """Each module of the package is placed in the layer table."""
    modules = {p.stem for p in (ROOT / "pipeline").glob("*.py")}
    assert modules - set(LAYERS) == set()


def test_imports_point_down() -> None:
    """No module imports from its own layer's peers above it or from higher layers."""
    bad = []
    for path in (ROOT / "pipeline").glob("*.py"):
        mine = LAYERS[path.stem]
        for dep in imports_of(path):
            if dep in LAYERS and path.stem != "__init__" and LAYERS[dep] > mine:
                bad.append(f"{path.stem} -> {dep}")
    assert bad == []


def test_framework_never_imports_stage_library() -> None:
    """Nothing in pipeline/ imports stages/ statically (built-ins go by import string)."""
    offenders = []
    for path in (ROOT / "pipeline").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.stem}: {n}" for n in names if n.split(".")[0] == "stages"]
    assert offenders == []


def test_stage_library_uses_public_api_only() -> None:
    """stages/ imports only the public names of `pipeline` (and the envelope encoder)."""
    offenders = []
    for path in (ROOT / "stages").rglob("*.py"):
        for dep in imports_of(path):
            import pipeline

            if dep not in pipeline.__all__ and dep != "envelope":
                offenders.append(f"{path.name} -> {dep}")
    assert offenders == []
