"""``python -m bench soak --quick``: the one command that re-measures issue 9, end to end.

Small numbers, the same checks as the full run: every probe must survive, and each
row must show the outcome the issue asks for (not just "yes").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.soak import QUICK, Sizes, probes
from bench.soak_http import TOKEN, hostile_requests
from tests.http_helpers import ROOT


def rows(table: str) -> dict[str, list[str]]:
    out = {}
    for text in table.splitlines():
        cells = [c.strip() for c in text.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("probe", "---"):
            out[cells[0]] = cells[1:]
    return out


def test_the_hostile_requests_are_the_issues_111() -> None:
    """111 distinct requests, a third of them carrying the real token."""
    requests = hostile_requests()
    assert len(requests) == len(set(requests)) == 111
    assert sum(TOKEN.encode() in r for r in requests) == 37


def test_soak_quick_runs_every_probe_and_all_survive(tmp_path: Path) -> None:
    """The whole command at small sizes: each probe's row and the written report."""
    doc = tmp_path / "hardening.md"
    cmd = [sys.executable, "-m", "bench", "soak", "--quick", "--docs", str(doc)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    got = rows(proc.stdout)
    assert set(got) == set(probes(Sizes())), proc.stdout + proc.stderr
    failed = {name: row for name, row in got.items() if row[1] != "yes"}
    assert failed == {}
    assert proc.returncode == 0
    lost = {name: row[2] for name, row in got.items() if row[2] != "0"}
    assert lost == {"full-disk": "102"}  # its envelopes are lost, and the run says so
    healthy = QUICK.clients - QUICK.frozen
    expected = {
        "hostile-http": "0 bodies with a 5xx, traceback or the token",
        "slowloris": f"{QUICK.slowloris}/{QUICK.slowloris} closed by the server",
        "idle-sockets": f"{QUICK.idle}/{QUICK.idle} closed by the server",
        "tailing": f"{healthy}/{healthy} healthy clients got every envelope, no gap; "
        f"{QUICK.frozen}/{QUICK.frozen} frozen cut and closed",
        "sigterm-streams": f"{QUICK.streams}/{QUICK.streams} got complete(reason=shutdown) "
        "and a clean end; exit 0",
        "integrity": "exact: stdout, file sink, HTTP since=0",
        "idle-tailers": f"{QUICK.newcomers}/{QUICK.newcomers} new streams served",
        "full-disk": "exit 1, complete reason error",
    }
    for name, text in expected.items():
        assert text in got[name][3], (name, got[name])
    report = doc.read_text()
    assert "`python -m bench soak --quick`" in report
    assert f"{len(got)} of {len(got)} probes survived" in report
    assert report.count("| yes |") == len(got)


def test_the_report_names_tests_that_exist_and_probes_that_run() -> None:
    """Each of issue 9's 11 items names test files that exist and probes of the command."""
    from bench.soak import ITEMS

    assert [item[0] for item in ITEMS] == [str(n) for n in range(1, 12)]
    names = set(probes(Sizes()))
    for _, _, tests, used in ITEMS:
        for path in tests.split(", "):
            assert (ROOT / path).is_file(), path
        for name in used.split(", "):
            wild = name.endswith("*") and any(n.startswith(name[:-1]) for n in names)
            assert name == "-" or name in names or wild, name
