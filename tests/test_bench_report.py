"""The bench report's tables stay well-formed Markdown, partial rows included."""

from __future__ import annotations

from bench.report import table


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
