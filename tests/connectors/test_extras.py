"""A connector whose client library is missing fails `validate` with one line naming the extra."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BLOCK = "import sys; sys.modules[{mod!r}] = None; from pipeline.cli import main; main()"


SINK = "pipelines:\n  p:\n    source: {{use: counter}}\n    sinks: [{{use: {use}}}]\n"
SOURCE = "pipelines:\n  p:\n    source: {{use: {use}}}\n"


@pytest.mark.parametrize(
    ("use", "shape", "module", "extra"),
    [("postgres", SINK, "asyncpg", "postgres")],
)
def test_missing_client_names_the_extra(
    write_config: Callable[..., Path], use: str, shape: str, module: str, extra: str
) -> None:
    """`validate` exits 2 with one problem line that says what to pip install."""
    config = write_config(shape.format(use=use))
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK.format(mod=module), "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"pip install 'ndjson-pipeline[{extra}]'" in lines[0]
    assert lines[0].startswith(f"{config}:")
