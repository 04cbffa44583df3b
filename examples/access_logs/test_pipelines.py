"""The access-log example tested with the pytest plugin: ``pytest examples/access_logs``.

Run from the repository root (the shipped log's path in the config is relative to it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.testing import Pipelines

OK = '1.2.3.4 - - [12/Mar/2024:14:00:01 +0100] "GET / HTTP/1.1" 200 512 "-" "curl/8.5"'
PAY = '5.6.7.8 - alice [12/Mar/2024:14:01:00 +0100] "POST /pay HTTP/1.1" 503 - "-" "curl/8.5"'


@pytest.fixture
def pipelines_config() -> Path:
    """This example's config, instead of the project's root pipelines.yaml."""
    return Path(__file__).with_name("pipelines.yaml")


def test_requests_per_minute_by_status_class(pipelines: Pipelines) -> None:
    """Each minute is counted when the next one starts, and the last at the end."""
    result = pipelines.run("access_logs", [OK, OK, PAY])
    result.assert_finished().assert_acked("all")
    result.assert_data(
        [
            {
                "minute": "2024-03-12T13:00:00Z",
                "requests": 2,
                "2xx": 2,
                "3xx": 0,
                "4xx": 0,
                "5xx": 0,
            },
            {
                "minute": "2024-03-12T13:01:00Z",
                "requests": 1,
                "2xx": 0,
                "3xx": 0,
                "4xx": 0,
                "5xx": 1,
            },
        ]
    )


def test_a_damaged_line_is_a_chunk_error(pipelines: Pipelines) -> None:
    """A line cut short goes to the dead-letter sink; the counts go on."""
    result = pipelines.run("access_logs", [OK, OK[:30]])
    result.assert_finished().assert_acked("all")
    result.assert_chunk_errors(
        {"stage": "transforms[0]", "type": "ValueError", "message": "^not a Combined Log Format"}
    )
    assert result.sinks["dead_letter:file"].envelopes[0]["chunk"] == OK[:30]


def test_only_server_errors_with_an_override(pipelines: Pipelines) -> None:
    """`with_` raises `min_status`: only the 503 is kept, parsed into an event."""
    result = pipelines.run("access_events", [OK, PAY], with_={"transforms[1]": {"min_status": 500}})
    result.assert_finished()
    assert [(e["status"], e["user"], e["bytes"]) for e in result.data] == [(503, "alice", 0)]


def test_the_shipped_log_shows_the_incident(pipelines: Pipelines) -> None:
    """The real file source over the shipped log: 30 minutes, the 5xx burst at 13:17."""
    result = pipelines.run("access_logs")
    result.assert_finished().assert_stats(processed=30, chunk_errors=30, errors=0)
    by_minute = {m["minute"][11:16]: m for m in result.data}
    assert by_minute["13:16"]["5xx"] == 0
    assert by_minute["13:17"]["5xx"] == 18
