"""Hostile config inputs: each gets one clear line and exit 2, never a traceback or a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config.parse import MAX_CONFIG_BYTES


def validate(cwd: Path, config: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", "-c", config],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def stage_config(tmp_path: Path, module: str, code: str) -> str:
    (tmp_path / f"{module}.py").write_text(code)
    (tmp_path / "p.yaml").write_text(f"pipelines:\n  p:\n    source: {{use: '{module}:x'}}\n")
    return "p.yaml"


def test_nul_byte_is_a_problem(tmp_path: Path) -> None:
    """A NUL byte in the YAML: FILE:LINE and exit 2, not a traceback."""
    (tmp_path / "nul.yaml").write_bytes(b"pipelines:\n  p:\n    source: {use: counter}\x00\n")
    proc = validate(tmp_path, "nul.yaml")
    assert (proc.returncode, proc.stderr) == (
        2,
        "nul.yaml:3: invalid YAML: the file contains a non-printable character\n",
    )


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("raise SystemExit(0)\n", "SystemExit: 0"),
        ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    ],
)
def test_system_exit_or_interrupt_at_import_is_a_problem(
    tmp_path: Path, code: str, shown: str
) -> None:
    """A stage module raising SystemExit or KeyboardInterrupt on import is a validation
    problem (exit 2), not a silent exit 0 or `Aborted!`."""
    proc = validate(tmp_path, stage_config(tmp_path, "quits", code))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"p.yaml:3: pipelines.p.source.use: module `quits` failed to import: {shown} (quits.py:1)\n"
    )


def test_an_import_that_hangs_is_bounded(tmp_path: Path) -> None:
    """An import that never finishes: given up after $PIPELINE_IMPORT_TIMEOUT seconds."""
    config = stage_config(tmp_path, "hangs", "import time\ntime.sleep(600)\n")
    proc = validate(tmp_path, config, PIPELINE_IMPORT_TIMEOUT="1")
    assert proc.returncode == 2
    assert proc.stderr == (
        "p.yaml:3: pipelines.p.source.use: importing module `hangs` took more than 1 s\n"
    )


def test_fifo_and_devices_are_refused(tmp_path: Path) -> None:
    """`-c` on a FIFO (would block) or /dev/zero (never ends): refused before reading."""
    os.mkfifo(tmp_path / "fifo.yaml")
    for config in ("fifo.yaml", "/dev/zero"):
        proc = validate(tmp_path, config)
        assert (proc.returncode, proc.stderr) == (
            2,
            f"{config}: cannot read config file: not a regular file\n",
        )


def test_a_huge_config_is_refused(tmp_path: Path) -> None:
    """A config file over the size limit is refused, whatever it holds."""
    (tmp_path / "big.yaml").write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    proc = validate(tmp_path, "big.yaml")
    assert (proc.returncode, proc.stderr) == (
        2,
        f"big.yaml: cannot read config file: larger than {MAX_CONFIG_BYTES} bytes\n",
    )
