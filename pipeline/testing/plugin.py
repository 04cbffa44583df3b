"""The pytest plugin of ``ndjson-pipeline`` (entry point ``pytest11``: ``pipeline``).

It gives every test suite two fixtures:

- ``pipelines_config``: the config file to test: ``--pipelines-config PATH``, else the
  ``pipelines_config`` ini option, else ``pipelines.yaml`` in pytest's root folder.
  Override the fixture in a ``conftest.py`` or a test module for another file.
- ``pipelines``: a `pipeline.testing.Pipelines` of that file:
  ``pipelines.run("sensors", chunks=[...], with_={...})`` runs one pipeline in-process.

Pytest loads this module in every run of anyone who installed the package, so it
imports nothing from the framework until a test asks for a fixture, registers no
marker, and emits no warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pipeline.testing.project import Pipelines

__all__ = ["pipelines", "pipelines_config", "pytest_addoption"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--pipelines-config`` and the ``pipelines_config`` ini option."""
    group = parser.getgroup("pipeline", "ndjson-pipeline")
    group.addoption(
        "--pipelines-config",
        dest="pipelines_config",
        default=None,
        metavar="PATH",
        help="pipelines.yaml for the `pipelines` fixture (default: the root folder's)",
    )
    parser.addini(
        "pipelines_config",
        "pipelines.yaml for the `pipelines` fixture, relative to the root folder",
        default="",
    )


@pytest.fixture
def pipelines_config(request: pytest.FixtureRequest) -> Path:
    """The config file the ``pipelines`` fixture loads."""
    config = request.config
    given = config.getoption("pipelines_config") or config.getini("pipelines_config")
    if not given:
        return config.rootpath / "pipelines.yaml"
    path = Path(str(given))
    return path if path.is_absolute() else config.rootpath / path


@pytest.fixture
def pipelines(pipelines_config: Path) -> Pipelines:
    """The project's pipelines, each runnable in-process: ``pipelines.run(name, chunks)``."""
    from pipeline.testing.project import Pipelines

    return Pipelines(pipelines_config)
