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
    [
        ("postgres", SINK, "asyncpg", "postgres"),
        ("postgres", SOURCE, "asyncpg", "postgres"),
        ("amqp", SINK, "aio_pika", "amqp"),
        ("amqp", SOURCE, "aio_pika", "amqp"),
        ("mqtt", SINK, "aiomqtt", "mqtt"),
        ("mqtt", SOURCE, "aiomqtt", "mqtt"),
        ("redis_stream", SINK, "redis", "redis"),
        ("redis_stream", SOURCE, "redis", "redis"),
        ("nats", SINK, "nats", "nats"),
        ("nats", SOURCE, "nats", "nats"),
    ],
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


def test_list_and_validate_never_print_a_password_in_a_url(
    write_config: Callable[..., Path],
) -> None:
    """A DSN or URL written in the YAML shows `***` for its password in `list`."""
    config = write_config(
        """
        pipelines:
          p:
            source:
              use: amqp
              with: {url: "amqp://guest:hunter2secret@127.0.0.1:5672/", queue: q}
            sinks:
              - use: postgres
                with:
                  dsn: postgresql://app:hunter2secret@127.0.0.1/db
                  table: t
                  columns: {id: data.id}
        """
    )
    for args in (["list"], ["list", "--json"], ["validate"]):
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", *args, "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "hunter2secret" not in proc.stdout + proc.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "pipeline", "list", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "postgresql://app:***@127.0.0.1/db" in listed
    assert "amqp://guest:***@127.0.0.1:5672/" in listed
