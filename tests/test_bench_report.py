"""The bench report's tables stay well-formed Markdown, partial rows included."""

from __future__ import annotations

from bench.report import reproduce, table
from bench.run import cli_n
from bench.variants import GROUPS


def stats(median: float) -> dict[str, float]:
    return {"median": median, "min": median * 0.9, "max": median * 1.1}


def test_a_partial_row_keeps_its_cells_inside_the_table() -> None:
    """A row cut by the time budget says so inside its ratio cell, with as many cells as
    the header (it was appended after the closing `|`)."""
    group = {
        "kind": "throughput",
        "base": "loop",
        "variants": {
            "loop": {"label": "loop", "status": "ok", "summary": {"rate": stats(1000.0)}},
            "engine": {
                "label": "engine",
                "status": "partial",
                "summary": {"rate": stats(800.0)},
                "ratio": stats(0.8),
            },
        },
    }
    rows = table(group)
    cells = [row.count("|") for row in rows]
    assert len(set(cells)) == 1, rows
    assert rows[-1].endswith("|")
    assert "(partial: time budget)" in rows[-1].split("|")[4]


def test_the_command_line_shows_the_n_a_group_ran_with() -> None:
    """A group of fixed size (ack latency: 200 messages) or capped size (Redis: 100,000)
    shows the --n that reproduces it, not the run's --n (it showed --n 200000)."""
    groups = {g.name: g for g in GROUPS}
    for name, expected in (("ack-latency", 200), ("redis", 100_000), ("http", 200_000)):
        group = groups[name]
        n = cli_n(group, group.params(200_000), 200_000)
        assert n == expected
        line = reproduce(name, {"reps": 5, "cli_n": n}, {"n": 200_000})
        assert line == f"python -m bench --only {name} --n {expected} --reps 5"
