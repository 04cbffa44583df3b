"""In-process helpers for stage authors and tests: run stages and pipelines to lists.

The public testing API; see `pipeline.testing.helpers` for the details.
"""

from __future__ import annotations

from pipeline.testing.helpers import collect_source, make_stage, run_pipeline, run_transform

__all__ = ["collect_source", "make_stage", "run_pipeline", "run_transform"]
