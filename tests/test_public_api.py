"""The public API is `pipeline.__all__`, pinned here (httpx style)."""

from __future__ import annotations

import pipeline


def test_public_names_are_pinned() -> None:
    """Adding or removing a public name is a deliberate change of this list."""
    assert sorted(pipeline.__all__) == [
        "BadChunk",
        "Chunk",
        "ConfigError",
        "Delivery",
        "Envelope",
        "Inlet",
        "Message",
        "PipelineError",
        "StageLoadError",
        "StageParamsError",
        "report_backlog",
        "resource",
        "sink",
        "stream_transform",
    ]


def test_public_names_resolve() -> None:
    """Every name in __all__ is importable from the package."""
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None
