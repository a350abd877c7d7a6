"""One verdict vocabulary: every surface says the same words for the same diagnosis."""

from __future__ import annotations

import io

import pytest

from diffdiag.model import VERDICTS, Diagnosis, Finding, Verdict

WORDS = {None: "no problems found", "info": "healthy (notes only)", "warning": "problems found",
         "critical": "critical problems found"}


def _diagnosis(worst: str | None) -> Diagnosis:
    sev = [s for s in ("info", "warning", "critical") if worst is not None
           and ("info", "warning", "critical").index(s) <= ("info", "warning", "critical").index(worst)]
    return Diagnosis(findings=[Finding(id="loss_spike", severity=s, score=0.5, message=f"a {s} finding")
                               for s in sev], created="2026-01-01T00:00:00Z")


def test_vocabulary():
    assert [v.id for v in VERDICTS.values()] == ["ok", "info", "warning", "critical", "cannot_judge"]
    assert Verdict.of(None) is VERDICTS["ok"] and Verdict.of("critical").words == "critical problems found"
    assert VERDICTS["info"].title == "Healthy (notes only)"
    with pytest.raises(KeyError):
        Verdict.of("fatal")


@pytest.mark.parametrize("worst", [None, "info", "warning", "critical"])
def test_every_surface_says_the_same(worst):
    from diffdiag.model import RunData
    from integrations import mlflow_sink, wandb_sink
    from reports import html, pdf, wandb_report

    d = _diagnosis(worst)
    words = WORDS[worst]
    v = d.verdict()
    assert v.words == words and v.id == (worst or "ok")
    assert mlflow_sink.verdict(d) == v.id
    assert mlflow_sink.note_section(d).startswith(f"{mlflow_sink.NOTE_LEAD}{words}")
    assert wandb_sink.summary_keys(d)["diffdiag/verdict"] == words
    assert f"**Verdict: {words}**" in wandb_report._markdown(RunData(), d)
    assert html._verdict(d)[1] == words[0].upper() + words[1:]
    assert pdf.answer_lines(d)[0][0] == words[0].upper() + words[1:]
    from diffdiag import cli

    summary = getattr(cli, "print_summary", None)
    if summary is None:  # moved out of the CLI (issue 11)
        from diffdiag.summary import print_summary as summary
    out = io.StringIO()
    summary(d, "report", out=out)
    assert f": {words} — " in out.getvalue()
