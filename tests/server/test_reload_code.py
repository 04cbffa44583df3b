"""Fingerprints of user code (pipeline.config.code, pipeline.config.snapshot)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline.config import snapshot
from pipeline.errors import ConfigError

MODULE = """
    import helpers

    FACTOR = 2


    async def source(count: int = 3):
        for i in range(count):
            yield {"i": i}


    def double(chunk):
        return {"i": chunk["i"] * FACTOR}


    def label(chunk):
        return {**chunk, "label": helpers.name()}
"""

CONFIG = """
    pipelines:
      doubled:
        source: {use: shared:source}
        transforms: [{use: shared:double}]
      labelled:
        source: {use: shared:source}
        transforms: [{use: shared:label}]
      builtin:
        source: {use: counter, with: {count: 3}}
"""


@pytest.fixture
def project(tmp_path: Path, isolated_imports: None) -> Path:
    (tmp_path / "shared.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "helpers.py").write_text("def name():\n    return 'a'\n")
    config = tmp_path / "pipelines.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    return config


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_only_the_pipelines_using_what_changed_differ(project: Path) -> None:
    """A literal global, a helper module and a moved function each change exactly the
    pipelines whose stages use them; the user modules are really imported again."""
    first = snapshot.take(project)
    same = snapshot.take(project, previous=first)
    assert snapshot.diff(first.prints, same.prints).restart == []
    assert (
        same.pipelines["doubled"].transforms[0].fn
        is not first.pipelines["doubled"].transforms[0].fn
    )

    edit(project.parent / "shared.py", "FACTOR = 2", "FACTOR = 3")
    second = snapshot.take(project, previous=same)
    assert snapshot.diff(same.prints, second.prints).changed == ["doubled"]

    edit(project.parent / "helpers.py", "'a'", "'b'")
    third = snapshot.take(project, previous=second)
    assert snapshot.diff(second.prints, third.prints).changed == ["labelled"]

    edit(project.parent / "shared.py", "import helpers\n", "import helpers\n\n\n\n")
    moved = snapshot.take(project, previous=third)
    assert snapshot.diff(third.prints, moved.prints).restart == []
    assert str(project.parent / "helpers.py") in moved.files


def test_definition_changes_added_and_removed(project: Path) -> None:
    """Editing `with:`, adding and removing pipelines show up in the diff, by kind."""
    first = snapshot.take(project)
    edit(project, "{count: 3}", "{count: 4}")
    edit(project, "  labelled:", "  renamed:")
    second = snapshot.take(project, previous=first)
    change = snapshot.diff(first.prints, second.prints)
    assert change.as_dict() == {
        "added": ["renamed"],
        "removed": ["labelled"],
        "changed": ["builtin"],
    }
    assert change.unchanged == ["doubled"]


def test_a_module_that_no_longer_imports_is_a_config_problem(project: Path) -> None:
    """A syntax error in a stage module is reported with the config's FILE:LINE."""
    first = snapshot.take(project)
    edit(project.parent / "shared.py", "FACTOR = 2", "FACTOR = (")
    with pytest.raises(ConfigError) as info:
        snapshot.take(project, previous=first)
    assert [p.path for p in info.value.problems] == [
        "pipelines.doubled.source.use",
        "pipelines.doubled.transforms[0].use",
        "pipelines.labelled.source.use",
        "pipelines.labelled.transforms[0].use",
    ]
    assert "SyntaxError" in info.value.problems[0].message


UNSHOWABLE = """
    class Unit:
        def __repr__(self):
            raise RuntimeError("not ready")


    UNITS = (Unit(),)
    SCALE = 10


    def tag(chunk):
        return {**chunk, "units": len(UNITS) * SCALE}
"""


def test_a_global_whose_repr_raises_is_fingerprinted_by_its_module(
    tmp_path: Path, isolated_imports: None
) -> None:
    """A stage reading a tuple of user objects whose `repr` raises still gets a
    fingerprint (from its module's file): an edit of that file restarts it."""
    (tmp_path / "units.py").write_text(textwrap.dedent(UNSHOWABLE))
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        "pipelines:\n  u:\n    source: {use: counter}\n    transforms: [{use: units:tag}]\n"
    )
    first = snapshot.take(config)
    same = snapshot.take(config, previous=first)
    assert snapshot.diff(first.prints, same.prints).restart == []
    edit(tmp_path / "units.py", "SCALE = 10", "SCALE = 20")
    second = snapshot.take(config, previous=same)
    assert snapshot.diff(same.prints, second.prints).changed == ["u"]
