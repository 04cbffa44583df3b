"""Test your pipelines: run them in-process on given chunks and check what came out.

- `Pipelines`: a config's pipelines, ``run(name, chunks=[...], with_={...})`` each
  (the pytest plugin's ``pipelines`` fixture is one).
- `RunResult`: the envelopes, with ``data``, ``errors``, ``stats``, ``reason``,
  ``acked`` and ``assert_*`` helpers whose failures show the envelopes.
- `source_from` / `captured_sink`: a list as a source (acknowledgements recorded) and
  an in-memory sink, so a pipeline of broker connectors runs without its broker.
- `Fault`: make a stage or a sink fail on purpose on its Nth chunk.
- `run_stage`: one source, transform or sink through the real engine, to a `RunResult`.
- `run_pipeline`, `run_transform`, `collect_source`, `make_stage`: run plain functions.

Names are imported on first use, so ``import pipeline.testing`` (which pytest does for
the plugin) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.testing.harness import (
        CapturedSink,
        Fault,
        ListSource,
        RunResult,
        captured_sink,
        source_from,
    )
    from pipeline.testing.helpers import (
        collect_source,
        make_stage,
        run_pipeline,
        run_stage,
        run_transform,
    )
    from pipeline.testing.project import Pipelines

__all__ = [
    "CapturedSink",
    "Fault",
    "ListSource",
    "Pipelines",
    "RunResult",
    "captured_sink",
    "collect_source",
    "make_stage",
    "run_pipeline",
    "run_stage",
    "run_transform",
    "source_from",
]

_WHERE = {
    "CapturedSink": "harness",
    "Fault": "harness",
    "ListSource": "harness",
    "RunResult": "harness",
    "captured_sink": "harness",
    "source_from": "harness",
    "collect_source": "helpers",
    "make_stage": "helpers",
    "run_pipeline": "helpers",
    "run_stage": "helpers",
    "run_transform": "helpers",
    "Pipelines": "project",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        msg = f"module `pipeline.testing` has no attribute `{name}`"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"pipeline.testing.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
