"""The bench report's tables stay well-formed Markdown, partial rows included."""

from __future__ import annotations

from bench import targets
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


def test_targets_read_same_run_ratios_and_say_by_how_much_they_miss() -> None:
    """The targets section takes a pair's same-run ratio (framework / C) and a latency;
    a target the run did not measure says so instead of a verdict."""
    results = {
        "groups": {
            "http": {"variants": {"framework": {"ratios_to": [{"ref": "C", **stats(0.8)}]}}},
            "latency-load": {"variants": {"framework-load": {"summary": {"p99_ms": stats(1.5)}}}},
        }
    }
    rows = {row.split(" | ")[0].lstrip("| "): row for row in targets.section(results)}
    http = rows["HTTP, one client: framework / (C) hand-coalesced Starlette"]
    assert "0.8 (0.72" in http and "**missed** by 20%" in http
    load = rows["latency under load, 10 k env/s to 100 clients: p99"]
    assert "1.50 (1.35" in load and load.endswith("| met |")
    assert rows["whole process to a file: framework / Bytewax"].endswith(
        "not measured | >= 1.2x |  |"
    )


def test_the_readme_table_is_generated_between_its_markers() -> None:
    """README.md carries the markers the report writes its table between, and the table
    made from any results is two cells a row."""
    text = targets.README.read_text()
    assert text.count(targets.BEGIN) == 1 and text.count(targets.END) == 1
    rows = targets.readme_rows({"meta": {"peers": {"bytewax": "0.21.1", "pathway": None}}})
    assert {row.count(" | ") for row in rows} == {1}
