"""Competing evidence: two or three causes of one symptom have evidence, and the evidence, not the prior, decides.

Each case is built in memory (hand-built findings in the analyzers' shapes, a small synthetic log where the
cause reads one) with the evidence of the right cause *and* of a wrong one; the wrong one is then given the
higher prior through ``rank_causes(..., priors=...)`` — 0.45 against the right one's 0.30 (prior odds ×1.9 for
the wrong cause; 0.45 is above every default prior, the highest being 0.40) — and the right cause must still
rank first. The end-to-end versions of these cases are
the ``competing/...`` scenarios of ``benchmarks/scenarios/combos.py`` (``python -m benchmarks.accuracy``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.scenarios import all_scenarios, scenario
from diffdiag.causes import default_priors, rank_causes
from diffdiag.causes import loss_spikes, stripes, tiling
from diffdiag.model import Finding, LatentFile, RunData, Settings

from .test_causes import log_with

S = Settings()
#: the wrong cause's prior and the right one's in every competing case below
WRONG_PRIOR, RIGHT_PRIOR = 0.45, 0.30


def F(fid: str, severity: str = "warning", location=None, evidence=None) -> Finding:
    return Finding(fid, severity, 0.8, f"{fid} (hand-built)", dict(location or {}), dict(evidence or {}))


def scores(causes, symptom):
    return {c.id: c.score for c in causes if c.symptom == symptom}


def winner(causes, symptom):
    s = scores(causes, symptom)
    return max(s, key=s.get)


def against_the_prior(findings, run, symptom, right, wrong, settings=S):
    """Rank with the wrong cause's prior high and the right one's low; return the causes (asserting the winner)."""
    causes = rank_causes(findings, run, settings, priors={wrong: WRONG_PRIOR, right: RIGHT_PRIOR})
    assert winner(causes, symptom) == right, [(c.id, round(c.score, 3), c.evidence) for c in causes]
    # the wrong cause had evidence of its own: this was a contest, not a walk-over
    wrong_cause = next(c for c in causes if c.id == wrong)
    assert any(e.startswith("For") for e in wrong_cause.evidence), wrong_cause.evidence
    return causes


# ------------------------------------------------------------------ the prior knob

def test_default_priors_are_the_modules_constants_and_the_default_ranking_is_unchanged():
    assert default_priors() == {**stripes.PRIORS, **tiling.PRIORS, **loss_spikes.PRIORS}
    assert default_priors()["loss_spikes.ema_gap"] == loss_spikes.PRIOR_EMA == 0.20
    assert default_priors()["tiling_doubling.tiled_sources"] == tiling.PRIOR_TILED == 0.40
    findings = [F("stripes", location={"image": "o.png", "axis": "vertical", "period_px": 48, "bbox": [0, 0, 9, 9]}),
                F("latent_periodicity", location={"file": "a.npy", "axis": "vertical", "period": 6, "channel": 1})]
    run = RunData(latents=[LatentFile("a.npy", 1, {})])
    plain = [(c.id, c.score, c.evidence) for c in rank_causes(findings, run, S)]
    explicit = [(c.id, c.score, c.evidence) for c in rank_causes(findings, run, S, priors=default_priors())]
    assert plain == explicit


def test_a_prior_alone_sets_the_score_when_there_is_no_evidence():
    f = [F("tiling_period_doubling", location={"image": "o", "reference": "r", "period_px": [30, 30],
                                               "doubled_period_px": [60, 60]})]
    got = scores(rank_causes(f, RunData(), S, priors={"tiling_doubling.over_regularization": 0.8}), "tiling_doubling")
    assert math.isclose(got["tiling_doubling.over_regularization"], 0.8)
    assert math.isclose(got["tiling_doubling.tiled_sources"], tiling.PRIOR_TILED)  # the others keep theirs


@pytest.mark.parametrize("priors,message", [({"stripes.nope": 0.5}, "unknown cause id"),
                                            ({"stripes.latent_periodicity": 1.0}, "strictly between"),
                                            ({"loss_spikes.ema_gap": 0.0}, "strictly between")])
def test_bad_priors_are_refused(priors, message):
    f = [F("stripes", location={"image": "o.png", "axis": "vertical", "period_px": 48, "bbox": [0, 0, 9, 9]})]
    with pytest.raises(ValueError, match=message):
        rank_causes(f, RunData(), S, priors=priors)


# ------------------------------------------------------------------ stripes

def _stripe(period, axis="vertical"):
    return F("stripes", location={"image": "out.png", "axis": axis, "period_px": period, "bbox": [0, 0, 256, 256]})


def _latent_period(cells, axis="vertical"):
    return F("latent_periodicity", location={"files": ["lat_100.npy"], "axis": axis, "period": cells, "channel": 2})


def _batch_shift():
    return F("latent_batch_shift", location={"files": ["lat_300.npy"], "channels": [1], "array": "latents"},
             evidence={"distance": {"1": 2.4}})


def _striped_training_image(period, axis="vertical", name="aug_000.png"):
    return F("dataset_tiled_source", location={"file": name, "period_px": [None, period] if axis == "vertical"
                                               else [period, None]}, evidence={"axis": axis})


LATENTS = [LatentFile(f"lat_{s}.npy", s, {}) for s in (100, 200, 300)]


@pytest.mark.parametrize("axis", ["vertical", "horizontal"])
def test_a_latent_period_that_matches_the_stripes_beats_a_batch_shift(axis):
    # 48 px stripes = 6 latent cells × 8 px; one file's channel statistics shifted too
    findings = [_stripe(48, axis), _latent_period(6, axis), _batch_shift()]
    causes = against_the_prior(findings, RunData(latents=LATENTS), "stripes", "stripes.latent_periodicity",
                               "stripes.batchnorm_imbalance")
    assert any("48 px" in e and "6 cells" in e for e in causes[0].evidence)


def test_a_latent_period_that_does_not_match_the_stripes_loses_to_a_batch_shift():
    # 26 px stripes; the latents repeat every 5 cells = 40 px (neither equal nor a harmonic)
    findings = [_stripe(26, "horizontal"), _latent_period(5, "horizontal"), _batch_shift()]
    causes = against_the_prior(findings, RunData(latents=LATENTS), "stripes", "stripes.batchnorm_imbalance",
                               "stripes.latent_periodicity")
    lat = next(c for c in causes if c.id == "stripes.latent_periodicity")
    assert any("not at the stripe period 26 px" in e for e in lat.evidence)


def test_training_images_striped_at_the_stripe_period_beat_unrelated_periodic_latents():
    findings = [_stripe(22), _latent_period(4), *(_striped_training_image(22, name=f"aug_{k}.png") for k in range(3))]
    run = RunData(latents=LATENTS, dataset_dir=Path("data"))
    causes = against_the_prior(findings, run, "stripes", "stripes.augmentation_pattern", "stripes.latent_periodicity")
    assert any("22 px" in e and "training image" in e for e in causes[0].evidence)


def test_training_images_striped_at_the_stripe_period_beat_a_batch_shift():
    findings = [_stripe(18, "horizontal"), _batch_shift(), _striped_training_image(18, "horizontal")]
    run = RunData(latents=LATENTS, dataset_dir=Path("data"))
    against_the_prior(findings, run, "stripes", "stripes.augmentation_pattern", "stripes.batchnorm_imbalance")


def test_a_latent_period_that_matches_beats_training_images_striped_at_another_period():
    findings = [_stripe(32, "horizontal"), _latent_period(4, "horizontal"),
                _striped_training_image(13, "horizontal")]
    run = RunData(latents=LATENTS, dataset_dir=Path("data"))
    against_the_prior(findings, run, "stripes", "stripes.latent_periodicity", "stripes.augmentation_pattern")


# ------------------------------------------------------------------ tiling doubling

def _doubling(py, px):
    return F("tiling_period_doubling", location={"image": "out.png", "reference": "ref.png", "period_px": [py, px],
                                                  "doubled_period_px": [2 * py, 2 * px]})


def _tiled(py, px, k):
    return F("dataset_tiled_source", location={"file": f"tex_{k}.png", "period_px": [py, px]},
             evidence={"seamless": True})


def _mask(problem, k):
    return F("dataset_invalid_mask", location={"file": f"img_{k}.png", "problem": problem})


DATA = RunData(dataset_dir=Path("data"), masks_dir=Path("masks"))


def test_tiled_sources_with_the_reference_period_beat_empty_masks():
    findings = [_doubling(24, 24), *(_tiled(24, 24, k) for k in range(3)), _mask("empty", 7), _mask("full", 8)]
    causes = against_the_prior(findings, DATA, "tiling_doubling", "tiling_doubling.tiled_sources",
                               "tiling_doubling.mask_preparation")
    assert any("(24 px) matches" in e for e in causes[0].evidence)


def test_misaligned_masks_beat_tiled_sources_whose_period_matches_nothing():
    # reference 28×20 px, doubled 56×40; the tiles repeat every 41×31 px: no axis matches either, nor ×2
    findings = [_doubling(28, 20), _tiled(41, 31, 0), _tiled(41, 31, 1),
                _mask("misaligned", 3), _mask("misaligned", 4), _mask("non_binary", 5)]
    causes = against_the_prior(findings, DATA, "tiling_doubling", "tiling_doubling.mask_preparation",
                               "tiling_doubling.tiled_sources")
    tiled_cause = next(c for c in causes if c.id == "tiling_doubling.tiled_sources")
    assert any(e.startswith("Against (-0.7)") and "(31, 41 px)" in e for e in tiled_cause.evidence)


def test_tile_periods_are_compared_axis_by_axis():
    # 20×28 tiles against a 28×20 reference: each axis differs by 40 % (a cross-axis comparison would match)
    swapped = rank_causes([_doubling(28, 20), _tiled(20, 28, 0)], DATA, S)
    tiled_cause = next(c for c in swapped if c.id == "tiling_doubling.tiled_sources")
    assert not any("matches the reference" in e for e in tiled_cause.evidence)
    same = rank_causes([_doubling(28, 20), _tiled(28, 40, 0)], DATA, S)  # y = the reference, x = the doubled
    tiled_cause = next(c for c in same if c.id == "tiling_doubling.tiled_sources")
    assert any("matches the reference" in e for e in tiled_cause.evidence)


def test_collapsing_norms_and_a_high_shelf_beat_an_empty_mask():
    findings = [_doubling(26, 30), _mask("empty", 1),
                F("checkpoint_norm_collapse", location={"checkpoint": "c-2000", "modules": ["a", "b", "c"],
                                                        "growth": 0.4}, evidence={"fraction_of_modules": 1.0}),
                F("loss_plateau", location={"start_step": 0, "end_step": 3000, "key": "loss"},
                  evidence={"level": 0.3, "later_level": 0.15, "ratio": 2.0})]
    run = RunData(dataset_dir=Path("data"), masks_dir=Path("masks"), checkpoints=[Path("c-2000")])
    against_the_prior(findings, run, "tiling_doubling", "tiling_doubling.over_regularization",
                      "tiling_doubling.mask_preparation")


# ------------------------------------------------------------------ loss spikes

def _spike(step, before=0.1, after=0.1):
    return F("loss_spike", location={"step": step, "key": "loss"},
             evidence={"start_step": step, "end_step": step, "level_before": before, "level_after": after})


def _correlation(ids):
    return F("loss_sample_correlation", location={"sample_ids": list(ids)},
             evidence={"per_sample": {i: {"ratio": 4.5, "p_value": 1e-12} for i in ids}})


def _batches(n, rng, bad_steps=(), bad="img_bad"):
    ids = {s: [f"img_{int(x):04d}" for x in rng.choice(600, 2, replace=False)] for s in range(n)}
    for s in bad_steps:
        ids[s][0] = bad
    return ids


def test_spikes_that_follow_bad_samples_beat_a_high_lr_warm_up():
    """The LR warms up to 1e-2 (10× the usual top), but the spikes come with one sample at low and high LR."""
    rng = np.random.default_rng(1)
    n = 6000
    spike_steps = sorted(rng.choice(np.arange(100, n - 100), 10, replace=False).tolist())
    loss = 0.1 * np.exp(rng.normal(0, 0.5, n))
    loss[spike_steps] = 4.0
    lr = 1e-2 * np.minimum(1.0, (np.arange(n) + 1) / (0.4 * n))
    run = RunData(log=log_with(loss, lr=lr, sample_ids=_batches(n, rng, spike_steps)))
    findings = [*(_spike(s) for s in spike_steps), _correlation(["img_bad"])]
    causes = against_the_prior(findings, run, "loss_spikes", "loss_spikes.corrupted_batch",
                               "loss_spikes.learning_rate_too_high")
    lr_cause = next(c for c in causes if c.id == "loss_spikes.learning_rate_too_high")
    assert any("0.01" in e and e.startswith("For") for e in lr_cause.evidence)  # the high LR did count


def test_spikes_timed_by_a_too_high_lr_beat_bad_samples_that_are_not_in_the_spike_batches():
    """The loss diverges as the LR warms up and spikes at high LR; two samples raise the loss ×3 all run long,
    but none of them is in a spike batch."""
    rng = np.random.default_rng(2)
    n = 8000
    lr = 5e-3 * np.minimum(1.0, (np.arange(n) + 1) / (0.5 * n))
    loss = 0.1 * np.exp(rng.normal(0, 0.5, n)) * np.where(np.arange(n) >= 3000, 2.2, 1.0)
    spike_steps = sorted(rng.choice(np.arange(4000, n - 50), 8, replace=False).tolist())
    loss[spike_steps] = 5.0
    ids = _batches(n, rng)
    for s in rng.choice(np.setdiff1d(np.arange(n), spike_steps), 40, replace=False):
        ids[int(s)][1] = "img_mild"
    findings = [*(_spike(s, 0.22, 0.22) for s in spike_steps), _correlation(["img_mild"]),
                F("loss_divergence", location={"step": 3000, "key": "loss"},
                  evidence={"level_before": 0.1, "level_after": 0.22, "ratio": 2.2})]
    causes = against_the_prior(findings, RunData(log=log_with(loss, lr=lr, sample_ids=ids)), "loss_spikes",
                               "loss_spikes.learning_rate_too_high", "loss_spikes.corrupted_batch")
    bad = next(c for c in causes if c.id == "loss_spikes.corrupted_batch")
    assert any("in only 0 of the 8 spike batches" in e for e in bad.evidence)


def test_bad_samples_in_the_spike_batches_keep_their_weight():
    """The new timing term speaks only when the correlated samples miss the spikes: here they make them."""
    rng = np.random.default_rng(3)
    n = 3000
    spike_steps = [200, 900, 1500, 2300]
    loss = 0.1 * np.exp(rng.normal(0, 0.5, n))
    loss[spike_steps] = 3.0
    run = RunData(log=log_with(loss, sample_ids=_batches(n, rng, spike_steps)))
    causes = rank_causes([*(_spike(s) for s in spike_steps), _correlation(["img_bad"])], run, S)
    bad = next(c for c in causes if c.id == "loss_spikes.corrupted_batch")
    assert not any("spike batches" in e for e in bad.evidence)
    lr_cause = next(c for c in causes if c.id == "loss_spikes.learning_rate_too_high")
    assert any("share specific samples" in e for e in lr_cause.evidence)


def test_a_stale_ema_beats_a_high_configured_lr_when_the_raw_loss_is_healthy():
    rng = np.random.default_rng(4)
    n = 4000
    loss = 0.1 * np.exp(rng.normal(0, 0.5, n))
    run = RunData(log=log_with(loss), config={"learning_rate": 5e-3, "lr_warmup_steps": 0})
    findings = [F("ema_divergence", location={"start_step": 1600, "end_step": 2100, "key": "ema_loss"},
                  evidence={"max_gap": 1.8})]
    against_the_prior(findings, run, "loss_spikes", "loss_spikes.ema_gap", "loss_spikes.learning_rate_too_high")


# ------------------------------------------------------------------ the scenarios

def test_competing_scenarios_cover_every_symptom_and_cause_family():
    comp = [sc for sc in all_scenarios().values() if sc.competing]
    assert len(comp) >= 8
    for symptom in ("stripes", "tiling_doubling", "loss_spikes"):
        wanted = {sc.causes[symptom] for sc in comp if symptom in sc.causes}
        assert len(wanted) == 3, (symptom, wanted)  # every cause of the symptom must win somewhere


def test_every_allowed_finding_carries_a_one_line_reason():
    for sc in all_scenarios().values():
        for fid, why in sc.allow.items():
            assert isinstance(why, str) and why.strip() and "\n" not in why, (sc.name, fid)
    with pytest.raises(TypeError, match="reason"):
        scenario("test/allow-without-reason", lambda f: [], allow={"hf_noise_patch"})
    with pytest.raises(ValueError, match="one-line reason"):
        scenario("test/allow-empty-reason", lambda f: [], allow={"hf_noise_patch": " "})
