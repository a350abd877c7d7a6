"""The held-out check of the hand-set cause weights (``benchmarks/accuracy.py --holdout``, docs/CAUSES.md).

Ground truth: the scenario registry (which scenarios carry an expected cause), the sweep generator's
variants per cause, and a real analysis of one tuning and one held-out scenario.
"""

from __future__ import annotations

import importlib
import json
import re

import pytest

from benchmarks.accuracy import HOLDOUT_SEED, holdout_split, holdout_table, main
from benchmarks.scenarios import all_scenarios

CAUSES = 9  # three symptoms x three causes (docs/CONTRACT.md §3)


def test_split_is_the_registered_cause_scenarios_against_fresh_variants():
    parts = holdout_split(2)
    assert list(parts) == ["tuning", "held-out"]
    tuning, held = parts["tuning"], parts["held-out"]
    assert set(tuning) == {k for k, v in all_scenarios().items() if v.causes}
    assert all(v.kind != "sweep" for v in tuning.values())
    assert all(v.kind == "sweep" and len(v.causes) == 1 for v in held.values())
    single = [v for v in held.values() if not v.competing]
    assert len(single) == 2 * CAUSES and len({c for v in single for c in v.causes.values()}) == CAUSES
    assert any(v.competing for v in held.values()) and any(v.competing for v in tuning.values())
    assert not set(tuning) & set(held)
    # deterministic, and drawn from a seed that is not --sweep's default
    assert list(holdout_split(2)["held-out"]) == list(held)
    assert HOLDOUT_SEED != 12345


def test_table_reports_each_part_per_symptom_and_cause():
    def summary(correct: int, cases: int) -> dict:
        confusion = {"stripes.latent_periodicity": {"stripes.latent_periodicity": correct,
                                                    "(symptom not observed)": cases - correct}}
        return {"per_symptom": {"stripes": {"cases": cases, "correct": correct, "confusion": confusion}},
                "per_cause": {"stripes.latent_periodicity": {"cases": cases, "correct": correct}},
                "cause_cases": cases, "top_cause_accuracy": correct / cases,
                "top_cause_by_group": {"single": {"cases": cases, "correct": correct},
                                       "competing": {"cases": 0, "correct": 0}}}

    lines = holdout_table({"tuning": summary(4, 4), "held-out": summary(2, 3)}).splitlines()
    assert lines[0].split() == ["top-cause", "accuracy", "tuning", "held-out"]
    assert [ln.split() for ln in lines[2:]] == [["stripes", "100%", "(4/4)", "67%", "(2/3)"],
                                                 ["latent_periodicity", "100%", "(4/4)", "67%", "(2/3)"],
                                                 ["all", "causes", "100%", "(4/4)", "67%", "(2/3)"],
                                                 ["single-cause", "scenarios", "100%", "(4/4)", "67%", "(2/3)"],
                                                 ["competing-evidence", "scenarios", "-", "-"],
                                                 ["misses:", "symptom", "not", "observed", "0", "1"]]


def test_holdout_run_judges_the_causes_of_both_parts(tmp_path, capsys):
    out_json = tmp_path / "holdout.json"
    assert main(["--holdout", "1", "--only", "loss/stale-ema/s1", "--only", "sweep/loss/stale-ema/0",
                 "--no-report", "--keep", str(tmp_path / "runs"), "--json", str(out_json)]) == 0
    parts = json.loads(out_json.read_text())
    assert parts["holdout_seed"] == HOLDOUT_SEED and parts["variants_per_cause"] == 1
    for part in ("tuning", "held-out"):
        assert parts[part]["per_cause"] == {"loss_spikes.ema_gap": {"cases": 1, "correct": 1}}
    out = capsys.readouterr().out
    assert "--- held-out: 1 cause scenarios" in out
    assert [ln.split() for ln in out.splitlines() if ln.startswith("all causes")] == \
        [["all", "causes", "100%", "(1/1)", "100%", "(1/1)"]]


def _doc_sections() -> dict[str, str]:
    """docs/CAUSES.md cut at its ``###`` headings (the model part first, under ``""``)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "CAUSES.md").read_text()
    parts = re.split(r"^### ", text, flags=re.M)
    return {"": parts[0], **{p.split("\n", 1)[0]: p for p in parts[1:]}}


def _value(text: str) -> float:
    return float(text.strip().replace("−", "-").replace("+", ""))


@pytest.mark.parametrize("module", ["loss_spikes", "stripes", "tiling"])
def test_causes_doc_lists_every_prior_and_weight_with_its_value(module):
    mod = importlib.import_module(f"diffdiag.causes.{module}")
    section = next(v for k, v in _doc_sections().items() if f"diffdiag/causes/{module}.py" in k)
    documented: dict[str, float] = {}
    for row in section.splitlines():
        cells = row.split("|")
        if row.startswith("| `W_"):
            names = re.findall(r"`(W_\w+)`", cells[1])
            values = cells[2].split("/")
            assert len(names) == len(values), row
            documented.update({n: _value(v) for n, v in zip(names, values)})
    # priors and thresholds named in the text: "`PRIOR_LR` 0.35", "`LEVEL_FLAT` 1.15"
    for name, value in re.findall(r"`([A-Z][A-Z0-9_]+)` (?:= )?([0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)", section):
        if hasattr(mod, name):
            documented[name] = float(value)
    weights = {k: v for k, v in vars(mod).items() if re.match(r"(W|PRIOR)_[A-Z0-9_]+$", k)
               and isinstance(v, (int, float))}
    assert sorted(set(weights) - set(documented)) == [], f"docs/CAUSES.md lacks these of {module}.py"
    wrong = {k: (v, getattr(mod, k)) for k, v in documented.items() if hasattr(mod, k) and v != getattr(mod, k)}
    assert wrong == {}, f"docs/CAUSES.md value vs diffdiag/causes/{module}.py"


def test_causes_doc_model_constants_are_current():
    from diffdiag.causes import evidence

    found = re.findall(r"`([A-Z][A-Z0-9_]+)` = ([0-9]+(?:\.[0-9]+)?)", _doc_sections()[""])
    assert {n for n, _ in found} >= {"INFO_DISCOUNT", "PRECONDITION_CAP", "PERIOD_REL_TOL", "HARMONIC_RATIO_TOL"}
    assert {n: float(v) for n, v in found} == {n: getattr(evidence, n) for n, _ in found}
