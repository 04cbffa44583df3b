"""Real-time NDJSON pipelines whose stages are plain Python functions.

Stage authors need one import line::

    from pipeline import Chunk, Envelope, Message, resource, sink, stream_transform
"""

from __future__ import annotations

from pipeline.errors import (
    ConfigError,
    PipelineError,
    StageLoadError,
    StageParamsError,
)
from pipeline.inlet import Inlet
from pipeline.meter import report_backlog
from pipeline.stage import resource, sink, stream_transform
from pipeline.types import BadChunk, Chunk, Delivery, Envelope, Message

__all__ = [
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

__version__ = "0.1.0"
