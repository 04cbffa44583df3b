"""The pytest plugin as a user gets it: a real pytest subprocess in a fresh project."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STAGES = """
from pipeline import Message

def shout(chunk, *, suffix: str = "!"):
    if not isinstance(chunk.get("text"), str):
        raise TypeError("`text` must be a string")
    return {**chunk, "text": chunk["text"].upper() + suffix}

async def broker(url: str):
    raise ConnectionError(f"no broker at {url}")
    yield  # pragma: no cover
"""

CONFIG = """
pipelines:
  loud:
    source:
      use: shout_stages:broker
      with: {url: "redis://nowhere:1"}
    transforms:
      - use: shout_stages:shout
    sinks:
      - use: file
        with: {path: out/loud.ndjson}
"""

USER_TESTS = """
import pytest
from pipeline.testing import Fault


def test_shout(pipelines):
    result = pipelines.run("loud", chunks=[{"text": "hi"}, {"text": 3}])
    result.assert_finished()
    result.assert_data([{"text": "HI!"}])
    result.assert_chunk_errors({"stage": "transforms[0]", "type": "TypeError"})
    result.assert_acked("all")
    assert result.stats["processed"] == 1
    assert result.sinks["sinks[0]:file"].data == [{"text": "HI!"}]


def test_with_and_faults(pipelines):
    result = pipelines.run(
        "loud",
        chunks=[{"text": "a"}, {"text": "b"}],
        with_={"transforms[0]": {"suffix": "?"}},
        faults=[Fault("sinks[0]", on_chunk=3, error="OSError")],
    )
    result.assert_reason("error").assert_error(stage="sinks[0]", type="OSError")
    assert result.data == [{"text": "A?"}, {"text": "B?"}]
    assert result.acked == [0]


async def test_async(pipelines):
    result = await pipelines.arun("loud", chunks=[{"text": "x"}])
    assert result.data == [{"text": "X!"}]


def test_shows_envelopes(pipelines):
    result = pipelines.run("loud", chunks=[{"text": "hi"}])
    result.assert_data([{"text": "HELLO"}])
"""


def run_pytest(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A user's project: config, stages, tests, and a strict pytest config."""
    (tmp_path / "shout_stages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(CONFIG)
    (tmp_path / "test_loud.py").write_text(USER_TESTS)
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent("""
            [tool.pytest.ini_options]
            addopts = "--strict-config --strict-markers -p anyio"
            filterwarnings = ["error"]
            anyio_mode = "auto"
        """)
    )
    (tmp_path / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n"
    )
    return tmp_path


def test_a_user_project_tests_its_pipelines(user_project: Path) -> None:
    """The fixture loads ./pipelines.yaml; the broker source is replaced; sinks captured."""
    out = run_pytest(user_project)
    assert "1 failed, 3 passed" in out.stdout, out.stdout + out.stderr
    assert "FAILED test_loud.py::test_shows_envelopes" in out.stdout
    # the assertion message shows the diff and the envelopes of the run
    assert '-{"text":"HELLO"}' in out.stdout
    assert '+{"text":"HI!"}' in out.stdout
    assert "envelopes:" in out.stdout
    assert '{"status":"processing","pipeline":"loud"' in out.stdout
    assert "harness.py" not in out.stdout, "the helpers' own frames are hidden"
    assert not (user_project / "out").exists(), "sinks are in-memory by default"


def test_the_config_path_is_an_option_an_ini_key_or_a_fixture(user_project: Path) -> None:
    """--pipelines-config and the ini key point the fixture at another file."""
    other = user_project / "conf"
    other.mkdir()
    (other / "other.yaml").write_text(CONFIG.replace("loud:", "quiet:"))
    (user_project / "test_other.py").write_text(
        "def test_other(pipelines):\n    assert pipelines.names == ['quiet']\n"
    )
    out = run_pytest(user_project, "test_other.py", "--pipelines-config", "conf/other.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    pyproject = user_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + 'pipelines_config = "conf/other.yaml"\n')
    out = run_pytest(user_project, "test_other.py")
    assert out.returncode == 0, out.stdout + out.stderr
    out = run_pytest(user_project, "test_loud.py::test_shout")
    assert "1 failed" in out.stdout
    assert "no pipeline `loud`" in out.stdout and "(known: `quiet`)" in out.stdout


def test_a_bad_config_fails_the_test_with_every_problem(user_project: Path) -> None:
    """A config with problems fails the tests that use it, naming FILE:LINE."""
    (user_project / "pipelines.yaml").write_text(CONFIG.replace("shout_stages:shout", "nope:x"))
    out = run_pytest(user_project, "test_loud.py::test_shout")
    assert out.returncode == 1
    assert "pipelines.yaml:8: pipelines.loud.transforms[0].use: cannot import module `nope`" in (
        out.stdout
    )


def test_the_plugin_is_registered_and_cheap_to_load() -> None:
    """pytest finds the plugin by its entry point; loading it imports no engine or pydantic."""
    code = (
        "import sys, pipeline.testing.plugin, pipeline.testing\n"
        "heavy = ['aiostream', 'structlog', 'starlette', 'uvicorn', 'yaml', 'pydantic',\n"
        "         'pipeline.engine', 'pipeline.config', 'pipeline.testing.harness']\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    from importlib.metadata import entry_points

    found = [ep.value for ep in entry_points(group="pytest11") if ep.name == "pipeline"]
    assert found == ["pipeline.testing.plugin"]


def test_without_the_plugin_there_is_no_fixture(user_project: Path) -> None:
    """`-p no:pipeline` turns the plugin off (proves the entry point is what loads it)."""
    out = run_pytest(user_project, "test_loud.py::test_shout", "-p", "no:pipeline")
    assert "fixture 'pipelines' not found" in out.stdout
