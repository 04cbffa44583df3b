"""The built-in stage library.

`BUILTINS` is the only registry: for each role, a short name -> ``module:attr`` import
string, resolved lazily by `pipeline.config.loader` so a broken module only affects the
pipelines that use it. Everything else is a ``module:attr`` the user writes.
"""

from __future__ import annotations

BUILTINS: dict[str, dict[str, str]] = {
    "source": {
        "counter": "stages.sources:counter",
        "file": "stages.sources:file",
        "stdin": "stages.sources:stdin",
        "ingest": "stages.connectors.ingest:ingest",
        "http": "stages.connectors.http:follow",
        "amqp": "stages.connectors.amqp:read",
        "mqtt": "stages.connectors.mqtt:read",
        "postgres": "stages.connectors.postgres_source:read",
        "redis_stream": "stages.connectors.redis:read",
        "nats": "stages.connectors.nats:read",
    },
    "transform": {
        "parse_json": "stages.transforms:parse_json",
        "batch": "stages.transforms:batch",
        "throttle": "stages.transforms:throttle",
        "dedupe": "stages.transforms:dedupe",
    },
    "sink": {
        "stdout": "stages.sinks:stdout",
        "file": "stages.sinks:file",
        "postgres": "stages.connectors.postgres:write",
        "amqp": "stages.connectors.amqp:write",
        "mqtt": "stages.connectors.mqtt:write",
        "redis_stream": "stages.connectors.redis:write",
        "nats": "stages.connectors.nats:write",
    },
}
