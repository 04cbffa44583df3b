"""Every config in tests/config/bad_configs/ fails `pipeline validate` with its exact problems.

Each ``NN_name.yaml`` has its expected stderr in ``NN_name.expected``. The CLI runs as a
real subprocess from the corpus folder with a relative ``-c``, and ``SECRET`` set to a
value that must never be printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.config import loader
from pipeline.errors import ConfigError

CORPUS = Path(__file__).parent / "bad_configs"
CASES = sorted(p.name for p in CORPUS.glob("*.yaml"))
SECRET = "hunter2-secret"
ENV = {**os.environ, "SECRET": SECRET, "PYTHONDONTWRITEBYTECODE": "1"}
ENV.pop("PIPELINE_TEST_UNDEFINED_COUNT", None)
ENV.pop("TOKEN", None)


def _validate(name: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipeline", "validate", "-c", name]
    return subprocess.run(
        cmd, cwd=CORPUS, env=ENV, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.fixture(scope="module")
def results() -> dict[str, subprocess.CompletedProcess[str]]:
    """Run the whole corpus once, in parallel."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CASES, pool.map(_validate, CASES), strict=True))


def _expected(name: str) -> list[str]:
    return (CORPUS / name).with_suffix(".expected").read_text().splitlines()


def _problem_lines(name: str, stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{name}:")]


def test_corpus_is_large_enough() -> None:
    """The corpus holds at least 35 bad configs, each with its expected output."""
    assert len(CASES) >= 35
    assert all((CORPUS / n).with_suffix(".expected").exists() for n in CASES)


@pytest.mark.timeout(600)  # the first case's setup runs the whole corpus (51 subprocesses)
@pytest.mark.parametrize("name", CASES)
def test_validate_reports_exact_problems(
    name: str, results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    """`pipeline validate` exits 2 and prints exactly the expected problems, no traceback."""
    proc = results[name]
    assert proc.returncode == 2, proc.stderr
    assert _problem_lines(name, proc.stderr) == _expected(name)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.usefixtures("isolated_imports")
@pytest.mark.parametrize("name", CASES)
def test_load_and_resolve_report_the_same_problems(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, `loader.load_and_resolve` gives the same problems, all in one pass."""
    monkeypatch.chdir(CORPUS)
    with pytest.raises(ConfigError) as info:
        loader.load_and_resolve(name, environ={"SECRET": SECRET})
    assert [str(p) for p in info.value.problems] == _expected(name)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing.yaml", "missing.yaml: cannot read config file: No such file or directory"),
        (".", ".: cannot read config file: Is a directory"),
    ],
)
def test_unreadable_config_file(target: str, message: str) -> None:
    """A missing file or a folder given as config exits 2 with one clear line."""
    proc = _validate(target)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [message]
    assert "Traceback" not in proc.stderr
