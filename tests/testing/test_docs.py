"""docs/testing.md: the first test in YAML and in pytest run exactly as shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "testing.md").read_text()
README = (ROOT / "README.md").read_text()


def block(text: str, lang: str, index: int = 0) -> str:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)[index]


def project(tmp_path: Path) -> Path:
    """The README's first-screen project: my_stages.py and pipelines.yaml."""
    (tmp_path / "my_stages.py").write_text(block(README, "python"))
    (tmp_path / "pipelines.yaml").write_text(block(README, "yaml"))
    return tmp_path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_first_yaml_test_passes_and_its_failure_looks_as_shown(tmp_path: Path) -> None:
    """The YAML case passes; with one value changed the report is the one in the docs."""
    root = project(tmp_path)
    case = block(DOC, "yaml")
    (root / "pipelines.test.yaml").write_text(case)
    out = run("pipeline", "test", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == block(DOC, "console").split("\n", 1)[1]
    (root / "pipelines.test.yaml").write_text(case.replace("value: 20.1}", "value: 20.2}"))
    out = run("pipeline", "test", cwd=root)
    assert out.returncode == 1
    assert out.stdout == block(DOC, "text")


def test_the_first_pytest_test_passes(tmp_path: Path) -> None:
    """The pytest example passes with nothing configured but the installed plugin."""
    root = project(tmp_path)
    (root / "test_pipelines.py").write_text(block(DOC, "python"))
    out = run("pytest", "-q", "-p", "no:cacheprovider", "-W", "error", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
    (root / "test_pipelines.py").write_text(block(DOC, "python").replace("21.2}", "21.3}"))
    out = run("pytest", "-q", "-p", "no:cacheprovider", cwd=root)
    assert out.returncode == 1
    assert '-{"n":12,"unit":"kelvin","value":21.3}' in out.stdout
    assert "envelopes:" in out.stdout
