"""Relative paths in stage parameters: the working directory, said by ``validate``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def validate(
    cfg: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", "-c", str(cfg)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_validate_names_the_resolved_path_of_a_missing_file(tmp_path: Path) -> None:
    """A missing source file is a warning with its absolute path; the config is still ok."""
    conf = tmp_path / "conf"
    conf.mkdir()
    cfg = conf / "pipelines.yaml"
    cfg.write_text(
        "pipelines:\n"
        "  a:\n"
        "    source: {use: file, with: {path: logs/app.log, follow: true}}\n"
        "  b:\n"
        "    source: {use: file, with: {path: here.log}}\n"
    )
    (tmp_path / "here.log").write_text("x\n")  # relative to the working directory: found
    out = validate(cfg, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{cfg}: ok (2 pipelines: a, b)\n"
    assert out.stderr == (
        f"warning: {cfg}:3: pipelines.a.source.with.path: no such file "
        f"`{tmp_path}/logs/app.log` (relative paths are resolved against `{tmp_path}`)\n"
    )


def test_a_path_from_the_environment_is_not_printed(tmp_path: Path) -> None:
    """The warning still comes, without the value that came from the environment."""
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text("pipelines:\n  a:\n    source: {use: file, with: {path: '${LOGFILE}'}}\n")
    out = validate(cfg, tmp_path, {"LOGFILE": "/nowhere/secret-name.log"})
    assert out.returncode == 0, out.stderr
    assert "secret-name" not in out.stderr + out.stdout
    assert out.stderr == (
        f"warning: {cfg}:3: pipelines.a.source.with.path: no such file "
        f"(relative paths are resolved against `{tmp_path}`)\n"
    )
