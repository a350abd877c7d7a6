"""The report folder (issue 12): diffdiag replaces only what it wrote there.

``--report DIR`` keeps ``DIR/.diffdiag-manifest.json`` of diffdiag's own outputs; other files in
DIR (a PNG someone put into ``figures/``, a ``report.html`` of their own, a link planted where an
output goes) are never replaced or deleted. A report location that cannot be used — a file, a
``report.pdf`` that is a folder, a folder that cannot be created — is one stderr line, exit 2,
said before the analysis, with nothing outside the report folder changed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from .conftest import tree_digest
from .craft import crafts

#: report locations that cannot be used (each one stderr line, exit 2, nothing changed)
BAD_PLACES = ["report_is_a_file", "pdf_is_a_folder", "html_not_ours", "html_is_a_link", "figures_is_a_link",
              "figures_is_a_file", "figure_not_ours", "cannot_create"]


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """A short loss log with one spike (a report with a figure, quickly)."""
    from benchmarks.scenarios import loss_logs as S

    return S.write_csv(S.injected_spikes(300, 3, n_spikes=1), tmp_path_factory.mktemp("report_log") / "train.csv",
                       lists=False)


def _run(log: Path, report: Path) -> tuple[int, str, str]:
    from diffdiag.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["analyze", "--logdir", str(log), "--no-progress", "--report", str(report)])
    return code, out.getvalue(), err.getvalue()


def _one_line(err: str, name: str, expect: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and name in lines[0] and expect in lines[0] and len(lines[0]) <= 300, err
    assert "Traceback" not in err and "unexpected" not in err.lower()
    return lines[0]


def _manifest(report: Path) -> set[str]:
    return set(json.loads((report / ".diffdiag-manifest.json").read_text())["files"])


@crafts("report", "foreign-report", "foreign_figure", "foreign_notes", "foreign_figure_beside_old_report",
        "old_report_without_manifest")
def test_foreign_files_in_the_report_folder_are_kept(log, tmp_path):
    """A PNG of someone else's in figures/ and a notes file survive two analyses; diffdiag's own
    outputs are replaced. The second run finds the folder as an earlier diffdiag left it (no manifest:
    its diagnosis.json names its outputs, one of them a figure this analysis does not draw): those are
    adopted as diffdiag's own, the stale figure deleted, a file the listing does not name kept."""
    report = tmp_path / "report"
    (report / "figures").mkdir(parents=True)
    (report / "figures" / "mine.png").write_bytes(b"a user's figure")
    (report / "notes.txt").write_text("keep me")
    foreign = tree_digest(report / "figures" / "mine.png", report / "notes.txt")
    code, out, err = _run(log, report)
    assert code == 0, err
    own = _manifest(report)
    assert {"report.html", "report.pdf", "diagnosis.json"} <= own and "figures/mine.png" not in own
    figs = {p for p in own if p.startswith("figures/")}
    assert figs and all((report / p).is_file() for p in figs)
    # as an earlier diffdiag left it: no manifest; its diagnosis.json lists a figure not drawn again
    (report / ".diffdiag-manifest.json").unlink()
    doc = json.loads((report / "diagnosis.json").read_text())
    doc["outputs"]["figures"].append(str(report / "figures" / "old_section.png"))
    (report / "diagnosis.json").write_text(json.dumps(doc))
    (report / "figures" / "old_section.png").write_bytes(b"from an earlier diffdiag report")
    (report / "figures" / "someone.png").write_bytes(b"x")
    code, out, err = _run(log, report)
    assert code == 0, err
    assert not (report / "figures" / "old_section.png").exists()
    assert (report / "figures" / "someone.png").read_bytes() == b"x"
    assert tree_digest(report / "figures" / "mine.png", report / "notes.txt") == foreign
    assert _manifest(report) == own
    assert not list(report.rglob("*.diffdiag-tmp")), "a temporary file was left"


@crafts("report", "foreign-report", *BAD_PLACES)
@pytest.mark.parametrize("case", BAD_PLACES)
def test_report_locations_that_cannot_be_used(log, tmp_path, case):
    """Each: one line naming the place and the problem, exit 2; every file there and outside unchanged."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("not diffdiag's")
    report = tmp_path / "report"
    name, expect = str(report), ""
    if case == "report_is_a_file":
        report.write_text("a file where the report folder goes")
        expect = "is a file, not a folder"
    else:
        report.mkdir()
    if case == "pdf_is_a_folder":
        (report / "report.pdf").mkdir()
        (report / "report.pdf" / "inside.txt").write_text("x")
        name, expect = "report.pdf", "is a folder where diffdiag writes a report file"
    elif case == "html_not_ours":
        (report / "report.html").write_text("<p>my own page</p>")
        name, expect = "report.html", "is a file diffdiag did not write"
    elif case == "html_is_a_link":  # written through, it would overwrite the file it points at
        (report / "report.html").symlink_to(outside / "precious.txt")
        name, expect = "report.html", "is a link diffdiag did not write"
    elif case == "figures_is_a_link":
        (report / "figures").symlink_to(outside, target_is_directory=True)
        name, expect = "figures", "is a link"
    elif case == "figures_is_a_file":
        (report / "figures").write_text("x")
        name, expect = "figures", "is a file where the report's folder goes"
    elif case == "figure_not_ours":
        (report / "figures").mkdir()
        (report / "figures" / "loss.png").write_bytes(b"someone's loss plot")
        name, expect = "loss.png", "is a file diffdiag did not write"
    elif case == "cannot_create":
        report = tmp_path / "outside" / "precious.txt" / "report"
        name, expect = "precious.txt", "is a file, not a folder"
    before = tree_digest(tmp_path)
    code, out, err = _run(log, report)
    _one_line(err, name, expect)
    assert code == 2
    after = {p: h for p, h in tree_digest(tmp_path).items() if not p.endswith("/.diffdiag-manifest.json")}
    assert after == before, "diffdiag changed a file it did not write"


@crafts("report", "foreign-report", "unwritable_folder")
@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_report_folder(log, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, out, err = _run(log, ro / "report")
    finally:
        ro.chmod(0o700)
    _one_line(err, "report", "permission denied")
    assert code == 2


@crafts("csv", "warnings", "key_the_fonts_lack")
def test_names_the_fonts_lack_draw_without_warnings(analyze, tmp_path):
    """A loss key in CJK with an emoji (matplotlib's fonts lack them): the report is drawn (boxes for the
    missing glyphs), no library warning, the spike found."""
    import math

    d = tmp_path / "in"
    d.mkdir()
    log = d / "train.csv"
    rng = np.random.default_rng(0)
    rows = [f"{s},{(0.1 * math.exp(-s / 100) + 0.05 + rng.normal(0, 0.003)) * (8 if s == 150 else 1):.5f}"
            for s in range(300)]
    log.write_text("step,損失🔥\n" + "\n".join(rows) + "\n", encoding="utf-8")
    o = analyze("--logdir", str(log), "--loss-key", "損失🔥", watch=[d])
    assert o.code == 0 and not o.err.strip(), o.err
    assert (150 in {f["location"].get("step") for f in o.diag["findings"] if f["id"] == "loss_spike"})
