"""The catalog of built-in stages and the generated docs/stages.md."""

from __future__ import annotations

import textwrap
from pathlib import Path

from pipeline.config.catalog import (
    ParamDoc,
    StageDoc,
    _args,
    _sections,
    catalog,
    render_markdown,
    render_text,
)
from stages import BUILTINS

ROOT = Path(__file__).resolve().parents[2]


def test_every_builtin_is_fully_documented() -> None:
    """Each built-in loads, has a summary and a YAML example, and every parameter a text."""
    docs = catalog()
    assert [(d.role, d.name) for d in docs] == [
        (role, name) for role in ("source", "transform", "sink") for name in BUILTINS[role]
    ]
    for doc in docs:
        assert doc.error is None, doc
        assert doc.summary, doc.name
        assert doc.example.lstrip().startswith(("source:", "transforms:", "sinks:")), doc.name
        for param in doc.params:
            assert param.description, f"{doc.name}.{param.name}"


def test_parameters_come_from_the_signature() -> None:
    """Types, defaults and required-ness are read from the signature, texts from Args."""
    by_name = {(d.role, d.name): d for d in catalog()}
    counter = by_name["source", "counter"]
    assert counter.kind == "source"
    assert counter.params[0] == ParamDoc(
        "count", "NonNegativeInt | None", "10", "How many chunks to yield; ``null`` counts forever."
    )
    sink_file = by_name["sink", "file"]
    assert sink_file.kind == "stream sink, receives lines in batches"
    assert [p.name for p in sink_file.params] == ["path", "mode", "fsync"]
    assert sink_file.params[0].required
    assert by_name["transform", "batch"].kind == "stream transform"
    assert by_name["transform", "parse_json"].kind == "per-chunk transform"
    source_file = by_name["source", "file"]
    assert source_file.params[1].type == "Literal['lines', 'ndjson']"


def test_a_broken_module_is_an_entry_with_an_error() -> None:
    """A module that fails to import is shown with its error instead of crashing."""
    docs = catalog(
        {
            "source": {"gone": "no_such_module_here:thing", "counter": "stages.sources:counter"},
            "sink": {"missing": "stages.sinks:no_such_sink"},
        }
    )
    assert [d.name for d in docs] == ["gone", "counter", "missing"]
    assert docs[0].error == "ModuleNotFoundError: No module named 'no_such_module_here'"
    assert docs[1].error is None
    assert docs[2].error is not None
    assert docs[2].error.startswith("AttributeError")
    text = render_text(docs)
    assert "cannot load: ModuleNotFoundError" in text
    assert "**Cannot be loaded:**" in render_markdown(docs)


def test_render_text_lists_names_roles_and_params() -> None:
    """The terminal listing names each stage, its role and its parameters."""
    doc = StageDoc(
        "transform",
        "demo",
        "mod:demo",
        kind="per-chunk transform",
        summary="Do a thing.",
        params=(ParamDoc("size", "int", "3", "How many."), ParamDoc("path", "str", None)),
    )
    assert render_text([doc]) == (
        "demo  (per-chunk transform)  mod:demo\n"
        "    Do a thing.\n"
        "      size  int = 3\n"
        "            How many.\n"
        "      path  str required\n"
    )


def test_docstring_sections_and_args() -> None:
    """Google-style sections split; Args lines continue on indented lines."""
    doc = textwrap.dedent(
        """\
        Summary line.

        More text.

        Args:
            a: First
                continued.
            b (int): Second.

        Example:
            x:
              y: 1
        """
    )
    sections = _sections(doc)
    assert sections[""] == "Summary line.\n\nMore text."
    assert sections["Example"] == "x:\n  y: 1"
    assert _args(sections["Args"]) == {"a": "First continued.", "b": "Second."}


def test_docs_stages_md_is_up_to_date() -> None:
    """docs/stages.md is exactly what the catalog renders (regenerate it when this fails)."""
    expected = render_markdown(catalog())
    actual = (ROOT / "docs" / "stages.md").read_text()
    assert actual == expected, (
        "docs/stages.md is stale: regenerate it with `pipeline stages --markdown > docs/stages.md`"
    )
