"""End-to-end diagnosis on the fast subset of the labelled scenarios (``benchmarks/scenarios``).

Each scenario writes real inputs (heavy-tailed training logs, scikit-image
photo pairs with drawn artifacts, VAE-like latents of photo crops, training
folders with masks, LoRA checkpoints), runs the real ``diffdiag analyze``
command line on them and asserts the ground truth exactly: the expected
findings at warning or above, nothing else at warning or above, the expected
cause ranked first per symptom, and — for healthy inputs — no finding at
warning or above and no cause at all. ``python -m benchmarks.accuracy`` runs
the full set and prints the confusion table.
"""

from __future__ import annotations

import re

import pytest

from .conftest import validate_diagnosis

from benchmarks.accuracy import analyze_without_report, judge
from benchmarks.scenarios import all_scenarios, fast_scenarios

CAUSE_IDS = {
    "stripes": ["stripes.batchnorm_imbalance", "stripes.latent_periodicity", "stripes.augmentation_pattern"],
    "tiling_doubling": ["tiling_doubling.tiled_sources", "tiling_doubling.mask_preparation",
                        "tiling_doubling.over_regularization"],
    "loss_spikes": ["loss_spikes.corrupted_batch", "loss_spikes.learning_rate_too_high", "loss_spikes.ema_gap"],
}
FAST = fast_scenarios()


def test_every_cause_has_two_distinct_fast_scenarios_where_it_must_rank_first():
    for symptom, ids in CAUSE_IDS.items():
        for cid in ids:
            names = [n for n, sc in FAST.items() if sc.causes.get(symptom) == cid]
            assert len(names) >= 2, (cid, names)


def test_fast_subset_has_healthy_runs_photos_latents_and_datasets():
    kinds = {sc.kind for sc in FAST.values() if sc.healthy}
    assert {"loss", "images", "latents", "dataset"} <= kinds


def test_full_registry_size_and_coverage():
    scen = all_scenarios()
    assert len(scen) >= 60
    for symptom, ids in CAUSE_IDS.items():
        for cid in ids:
            assert sum(sc.causes.get(symptom) == cid for sc in scen.values()) >= 4, cid
    assert sum(sc.healthy for sc in scen.values()) >= 12


@pytest.mark.parametrize("name", sorted(FAST))
def test_fast_scenario(name, tmp_path):
    """The CLI's parser, sources, checks and causes on one scenario; the diagnosis validated against the schema.

    Rendering report.html/pdf is skipped here (it costs more than the analysis); the report test
    below and ``benchmarks/accuracy.py`` run the full command line.
    """
    sc = FAST[name]
    argv = sc.build(tmp_path / "inputs")
    diag = validate_diagnosis(analyze_without_report(argv))
    r = judge(sc, diag)
    assert not r.missed, f"missed {sorted(r.missed)}; reported {sorted(r.reported)}"
    assert not r.false_alarms, f"false alarms {sorted(r.false_alarms)}"
    for symptom, want in sc.causes.items():
        assert r.causes.get(symptom) == want, (symptom, r.causes, [
            (c["id"], c["score"], c["evidence"]) for c in diag["causes"]])
    if sc.healthy:
        assert r.healthy_ok, (sorted(r.reported), diag["causes"])
    else:
        # every cause cites findings that exist, carries evidence sentences and advice
        for c in diag["causes"]:
            assert c["evidence"] and c["advice"]
            assert all(0 <= i < len(diag["findings"]) for i in c["findings"])
        # the symptom's causes are all listed, best first
        for symptom in sc.causes:
            got = [c for c in diag["causes"] if c["symptom"] == symptom]
            assert sorted(c["id"] for c in got) == sorted(CAUSE_IDS[symptom])
            assert [c["score"] for c in got] == sorted((c["score"] for c in got), reverse=True)


def test_report_shows_ranked_causes_first_with_evidence_advice_and_figures(tmp_path, run_cli):
    sc = FAST["combo/stripes/latent-period/6c-vertical"]
    argv = sc.build(tmp_path / "inputs")
    code, out, err, diag = run_cli("analyze", *argv, "--no-progress", report=tmp_path / "report")
    assert code == 0, err
    html = (tmp_path / "report" / "report.html").read_text()
    i_causes, i_findings = html.index("id='causes'"), html.index("id='findings'")
    assert i_causes < i_findings
    causes_html = html[i_causes:i_findings]
    order = re.findall(r"data-cause='([a-z_.]+)'", causes_html)
    assert order[0] == "stripes.latent_periodicity"
    assert order == [c["id"] for c in diag["causes"]]
    assert "6 cells × 8 px" in causes_html and "What to try" in causes_html
    top_cause_html = causes_html.split("data-cause='stripes.latent_periodicity'")[1].split("data-cause=")[0]
    assert "figures: " in top_cause_html and "href='#fig-" in top_cause_html  # linked to its supporting figures
    assert "Stripes / banding: most probable cause Periodic pattern in the latents (stripes.latent_periodicity" in out
