"""Shared fixtures: anyio on asyncio, free ports, config writers."""

from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser import browser, other_origin, page  # noqa: F401  (fixtures for page tests)

ROOT = Path(__file__).resolve().parent.parent

# Stage modules that fail on import on purpose (the bad-config corpus): not for doctest.
collect_ignore = ["config/bad_configs"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def anyio_backend() -> str:
    """aiostream is asyncio-based: run async tests on asyncio only."""
    return "asyncio"


@pytest.fixture
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a dedented pipelines.yaml (and optional extra files) into tmp_path."""

    def write(text: str, name: str = "pipelines.yaml", **files: str) -> Path:
        for fname, body in files.items():
            (tmp_path / fname).write_text(textwrap.dedent(body))
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


INSTALLED = (sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parent.parent / "pipeline"))
"""Where the interpreter's, the installed packages' and our own modules come from."""


@pytest.fixture
def isolated_imports() -> Iterator[None]:
    """Undo the loader's changes to sys.path and sys.modules after the test.

    Only the modules loaded from elsewhere (the test's own stage files) are forgotten:
    dropping a library's module that happened to be imported first during the test
    would give its next importer a second copy, with exception classes of its own
    (httpx would no longer recognise httpcore's errors, say).
    """
    path, modules, no_pyc = list(sys.path), set(sys.modules), sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # leave no __pycache__ beside the test configs
    yield
    sys.dont_write_bytecode = no_pyc
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if not origin.startswith(INSTALLED):
            del sys.modules[name]
