"""Unit tests of the section-7 cause rules, on hand-built findings (exact rankings).

The findings here are written by hand in the shapes the analyzers produce
(docs/CONTRACT.md §3 and the evidence conventions on the board); the end-to-end
scenarios in ``test_scenarios.py`` check the same rules on real analyzer output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffdiag.causes import rank_causes
from diffdiag.causes.evidence import config_value, harmonic_match, period_along, periods_match, sigmoid
from diffdiag.model import Finding, LatentFile, RunData, RunLog, Series, Settings


def F(fid: str, severity: str = "warning", score: float = 0.8, location=None, evidence=None) -> Finding:
    return Finding(fid, severity, score, f"{fid} (hand-built)", dict(location or {}), dict(evidence or {}))


def ranking(causes, symptom):
    return [c.id.split(".", 1)[1] for c in causes if c.symptom == symptom]


def top(causes, symptom):
    return ranking(causes, symptom)[0]


def heavy_tailed_loss(n: int, seed: int, level: float = 0.12) -> np.ndarray:
    """Per-step diffusion-like loss: log-normal around a slowly decaying level (p99/median ≈ 8)."""
    rng = np.random.default_rng(seed)
    trend = level * (1 + 0.5 * np.exp(-np.arange(n) / (n / 5)))
    return trend * np.exp(rng.normal(0, 0.9, n))


def log_with(loss: np.ndarray, lr: np.ndarray | None = None, sample_ids=None, ema=None, grad=None) -> RunLog:
    steps = np.arange(loss.size)
    log = RunLog(scalars={"loss": Series("loss", steps, loss)}, loss_key="loss")
    if lr is not None:
        log.scalars["lr"] = Series("lr", steps, lr)
        log.lr_key = "lr"
    if ema is not None:
        log.scalars["ema_loss"] = Series("ema_loss", steps, ema)
        log.ema_key = "ema_loss"
    if grad is not None:
        log.scalars["grad_norm"] = Series("grad_norm", steps, grad)
        log.grad_norm_key = "grad_norm"
    if sample_ids is not None:
        log.sample_ids = sample_ids
    return log


S = Settings()


# ------------------------------------------------------------------ helpers

def test_evidence_helpers():
    assert period_along([32, 48], "vertical") == 48.0
    assert period_along([32, 48], "horizontal") == 32.0
    assert period_along([None, 48], None) == 48.0
    assert period_along(40, "vertical") == 40.0
    assert period_along(None, "vertical") is None
    assert periods_match(48, 46.5) and not periods_match(56, 48)  # 7 vs 6 cells × 8 px
    assert harmonic_match(96, 48) == 2 and harmonic_match(144, 48) == 3 and harmonic_match(50, 48) is None
    assert config_value({"optimizer": {"weight-decay": "0.2"}}, "weight_decay") == 0.2
    assert config_value({"train/lora_dropout": 0.4}, "lora_dropout") == 0.4
    assert config_value({}, "weight_decay") is None
    assert sigmoid(0) == 0.5 and sigmoid(-800) == 0.0


def test_no_symptom_no_causes():
    # info-level triggers and non-trigger findings do not make a symptom observed
    findings = [F("loss_spike", "info", location={"step": 5, "key": "loss"}), F("loss_plateau"),
                F("latent_batch_shift"), F("dataset_tiled_source", location={"file": "a.png", "period_px": [32, 32]})]
    assert rank_causes(findings, RunData(), S) == []


# ------------------------------------------------------------------ loss spikes

def _spikes(steps, before=0.1, after=0.1, **ev):
    return [F("loss_spike", location={"step": s, "key": "loss"},
              evidence={"value": 1.5, "baseline": before, "z": 9.0, "level_before": before,
                        "level_after": after, **ev}) for s in steps]


def test_spikes_with_sample_correlation_rank_corrupted_batch_first():
    findings = _spikes([120, 480, 910, 1400]) + [
        F("loss_sample_correlation", location={"sample_ids": ["img_0042", "img_0107"]},
          evidence={"per_sample": {"img_0042": {"ratio": 6.2, "p_value": 1e-9, "n_steps": 12},
                                   "img_0107": {"ratio": 4.0, "p_value": 3e-5, "n_steps": 10}}})]
    causes = rank_causes(findings, RunData(), S)
    assert ranking(causes, "loss_spikes") == ["corrupted_batch", "learning_rate_too_high", "ema_gap"]
    c = causes[0]
    assert c.score > 0.9
    assert 4 in c.findings and {0, 1, 2, 3} <= set(c.findings)
    assert any("img_0042" in e and "6.2" in e for e in c.evidence)
    assert "sample" in c.advice


def test_divergence_and_elevated_level_rank_lr_first():
    findings = _spikes([3000, 3004, 3010, 3300], before=0.1, after=0.19) + [
        F("loss_divergence", "critical", location={"step": 3002, "key": "loss"},
          evidence={"level_before": 0.1, "level_after": 0.31, "ratio": 3.1, "lr_at_step": 4e-3}),
        F("grad_norm_spike", location={"step": 2950, "key": "grad_norm"})]
    causes = rank_causes(findings, RunData(), S)
    assert ranking(causes, "loss_spikes") == ["learning_rate_too_high", "corrupted_batch", "ema_gap"]
    lr = causes[0]
    assert lr.score > 0.95
    ev = " ".join(lr.evidence)
    assert "3002" in ev and "3.1" in ev and "0.004" in ev and "×1.90" in ev
    assert "bursts" in ev  # 3 of 4 spikes within 5 steps of another
    assert "grad" in ev


def test_ema_divergence_alone_ranks_ema_gap_first():
    findings = [F("ema_divergence", location={"start_step": 6120, "end_step": 6600, "key": "ema_loss"},
                  evidence={"max_gap": 0.4, "band": 0.05, "raw_level": 0.11})]
    causes = rank_causes(findings, RunData(), S)
    assert ranking(causes, "loss_spikes") == ["ema_gap", "corrupted_batch", "learning_rate_too_high"]
    assert causes[0].score > 0.9 and causes[1].score < 0.2
    assert any("6120" in e and "0.4" in e for e in causes[0].evidence)


def test_ema_divergence_that_follows_a_raw_divergence_is_not_an_ema_gap():
    findings = [F("loss_divergence", location={"step": 5000, "key": "loss"},
                  evidence={"level_before": 0.1, "level_after": 0.4, "ratio": 4.0}),
                F("ema_divergence", location={"start_step": 5010, "end_step": 5400, "key": "ema_loss"},
                  evidence={"max_gap": 0.2})]
    causes = rank_causes(findings, RunData(), S)
    assert top(causes, "loss_spikes") == "learning_rate_too_high"


def test_isolated_spikes_with_flat_level_and_no_other_evidence_rank_corrupted_batch_first():
    findings = _spikes([500, 2100, 5200], before=0.1, after=0.102)
    causes = rank_causes(findings, RunData(), S)
    assert ranking(causes, "loss_spikes") == ["corrupted_batch", "learning_rate_too_high", "ema_gap"]
    assert any("×1.02" in e for e in causes[0].evidence)


def test_recurring_sample_ids_computed_from_the_log():
    """Without a loss_sample_correlation finding, recurrence in the logged batches still counts."""
    rng = np.random.default_rng(3)
    n = 3000
    ids = {s: [f"s{int(x)}" for x in rng.choice(400, 4, replace=False)] for s in range(n)}
    spike_steps = [150, 700, 1333, 2040, 2710]
    for s in spike_steps:
        ids[s][0] = "s_bad"
    loss = heavy_tailed_loss(n, 1)
    loss[spike_steps] = 3.0
    run = RunData(log=log_with(loss, sample_ids=ids))
    causes = rank_causes(_spikes(spike_steps), run, S)
    assert top(causes, "loss_spikes") == "corrupted_batch"
    assert any("s_bad" in e and "5 of the 5" in e for e in causes[0].evidence)


def test_spike_rate_rising_with_lr_ranks_lr_first_even_with_flat_levels():
    n = 4000
    lr = np.linspace(1e-5, 2e-3, n)  # an LR range test
    rng = np.random.default_rng(7)
    spike_steps = sorted(rng.choice(np.arange(3000, 4000), 8, replace=False).tolist())
    loss = heavy_tailed_loss(n, 2)
    loss[spike_steps] = 4.0
    run = RunData(log=log_with(loss, lr=lr))
    causes = rank_causes(_spikes(spike_steps, before=0.1, after=0.105), run, S)
    assert top(causes, "loss_spikes") == "learning_rate_too_high"
    assert any("more frequent at LR" in e for e in causes[0].evidence)


def test_spike_rate_flat_in_lr_speaks_against_lr():
    n = 4000
    lr = 1e-4 * (0.5 + 0.5 * np.cos(np.linspace(0, np.pi, n)))  # cosine decay
    spike_steps = [300, 900, 1500, 2100, 2700, 3300, 3900]  # uniform in time
    loss = heavy_tailed_loss(n, 4)
    loss[spike_steps] = 3.0
    run = RunData(log=log_with(loss, lr=lr))
    causes = rank_causes(_spikes(spike_steps), run, S)
    lr_cause = next(c for c in causes if c.id.endswith("learning_rate_too_high"))
    assert any(e.startswith("Against") and "does not rise" in e for e in lr_cause.evidence)
    assert top(causes, "loss_spikes") == "corrupted_batch"


def test_level_ratio_is_measured_on_the_log_when_present():
    n = 2000
    loss = heavy_tailed_loss(n, 5)
    loss[1000:] *= 2.0  # the level doubles at the spike and stays
    loss[1000] = 5.0
    run = RunData(log=log_with(loss))
    # the finding's own level numbers say "flat"; the log says ×2 — the log wins
    causes = rank_causes(_spikes([1000], before=0.1, after=0.1), run, S)
    assert top(causes, "loss_spikes") == "learning_rate_too_high"


def test_nonfinite_persistent_vs_isolated():
    n = 1000
    loss = heavy_tailed_loss(n, 6)
    loss[700:] = np.nan
    run = RunData(log=log_with(loss))
    f = [F("loss_nonfinite", "critical", location={"step": 700, "steps": list(range(700, 1000)), "key": "loss"})]
    assert top(rank_causes(f, run, S), "loss_spikes") == "learning_rate_too_high"
    loss = heavy_tailed_loss(n, 6)
    loss[[300, 640]] = np.inf
    run = RunData(log=log_with(loss))
    f = [F("loss_nonfinite", "critical", location={"step": 300, "steps": [300, 640], "key": "loss"})]
    causes = rank_causes(f, run, S)
    assert top(causes, "loss_spikes") == "corrupted_batch"
    assert any("2 isolated steps" in e for e in causes[0].evidence)


def test_grad_norm_growth_supports_lr():
    n = 3000
    grad = np.exp(np.linspace(0, np.log(6), n)) * np.random.default_rng(0).lognormal(0, 0.2, n)
    run = RunData(log=log_with(heavy_tailed_loss(n, 8), grad=grad))
    causes = rank_causes(_spikes([2500, 2800], before=0.1, after=0.11), run, S)
    lr_cause = next(c for c in causes if c.id.endswith("learning_rate_too_high"))
    assert any("gradient norm grows" in e for e in lr_cause.evidence)


def test_loss_scores_are_probabilities_and_every_cause_is_listed():
    causes = rank_causes(_spikes([10]), RunData(), S)
    assert len(causes) == 3 and all(0 <= c.score <= 1 for c in causes)
    assert all(c.evidence and c.advice for c in causes)
    assert [c.score for c in causes] == sorted((c.score for c in causes), reverse=True)


# ------------------------------------------------------------------ stripes

def _stripe(period, axis="vertical", image="out.png"):
    return F("stripes", location={"image": image, "axis": axis, "period_px": period, "bbox": [0, 0, 256, 256]},
             evidence={"strength": 0.4})


@pytest.mark.parametrize("cells,scale,period", [(6, 8, 48.0), (5, 8, 41.0), (7, 4, 28.5), (12, 8, 95.0)])
def test_latent_period_times_vae_scale_matching_ranks_latent_periodicity_first(cells, scale, period):
    findings = [_stripe(period), F("latent_periodicity",
                                   location={"files": ["lat_100.npy"], "axis": "vertical", "period": cells,
                                             "channel": 2})]
    run = RunData(latents=[LatentFile("lat_100.npy", 100, {"latents": np.zeros((1, 4, 8, 8), np.float32)})])
    causes = rank_causes(findings, run, Settings(vae_scale=scale))
    assert ranking(causes, "stripes")[0] == "latent_periodicity"
    c = causes[0]
    assert c.score > 0.9 and c.findings == [0, 1]
    assert any(f"{cells} cells × {scale} px" in e for e in c.evidence)


def test_latent_period_not_matching_does_not_win_over_batch_shift():
    findings = [_stripe(48.0),
                F("latent_periodicity", location={"file": "l.npy", "axis": "vertical", "period": 11, "channel": 0}),
                F("latent_batch_shift", location={"files": ["a.npy", "b.npy"], "channels": [1, 3]},
                  evidence={"distance": {"1": 0.8, "3": 0.6}, "threshold": 0.2})]
    run = RunData(latents=[LatentFile("a.npy", 1, {})])
    causes = rank_causes(findings, run, S)
    assert ranking(causes, "stripes")[0] == "batchnorm_imbalance"
    assert any("channels 1, 3" in e and "0.8" in e for e in causes[0].evidence)


def test_aperiodic_stripes_with_batch_shift_and_batchnorm_layers():
    findings = [_stripe(None, axis="horizontal"),
                F("latent_batch_shift", location={"files": ["a.npy"], "channels": [0]})]
    run = RunData(model_info={"normalization_layers": ["BatchNorm2d", "GroupNorm"]},
                  latents=[LatentFile("a.npy", 1, {})])
    causes = rank_causes(findings, run, S)
    assert ranking(causes, "stripes") == ["batchnorm_imbalance", "augmentation_pattern", "latent_periodicity"]
    assert causes[0].score > 0.95
    assert any("BatchNorm2d" in e for e in causes[0].evidence)


def test_batch_independent_norms_speak_against_batchnorm():
    findings = [_stripe(None)]
    a = rank_causes(findings, RunData(model_info={"normalization_layers": ["GroupNorm"]}), S)
    b = rank_causes(findings, RunData(model_info={"normalization_layers": ["BatchNorm2d"]}), S)
    score = {c.id: c.score for c in a}, {c.id: c.score for c in b}
    assert score[0]["stripes.batchnorm_imbalance"] < score[1]["stripes.batchnorm_imbalance"]


@pytest.mark.parametrize("axis,pair,period", [("vertical", [None, 40], 41.0), ("horizontal", [24, None], 24.0),
                                              ("vertical", [64, 64], 63.0)])
def test_dataset_pattern_with_the_stripe_period_ranks_augmentation_first(axis, pair, period):
    findings = [_stripe(period, axis=axis),
                F("dataset_tiled_source", location={"file": "train/img_007.png", "period_px": pair},
                  evidence={"axis": axis, "strength": 0.5}),
                F("latent_stats_drift", "info", location={"files": ["a.npy"], "channels": [0]})]
    run = RunData(dataset_dir=Path("train"))
    causes = rank_causes(findings, run, S)
    assert ranking(causes, "stripes")[0] == "augmentation_pattern"
    assert any("img_007" in e for e in causes[0].evidence)


def test_dataset_pattern_on_the_other_axis_does_not_count():
    findings = [_stripe(40.0, axis="vertical"),
                F("dataset_tiled_source", location={"file": "x.png", "period_px": [40, None]},
                  evidence={"axis": "horizontal"}),
                F("latent_periodicity", location={"file": "l.npy", "axis": "vertical", "period": 5, "channel": 1})]
    causes = rank_causes(findings, RunData(dataset_dir=Path("d"), latents=[LatentFile("l.npy", 1, {})]), S)
    assert ranking(causes, "stripes")[0] == "latent_periodicity"
    aug = next(c for c in causes if c.id.endswith("augmentation_pattern"))
    assert aug.score < 0.5


def test_latent_stripes_alone_point_to_latent_periodicity():
    findings = [F("stripes", location={"latents": "lat_200.npy", "axis": "horizontal", "period_px": 6,
                                       "bbox": [0, 0, 64, 64]}, evidence={"period_cells": 6})]
    causes = rank_causes(findings, RunData(latents=[LatentFile("lat_200.npy", 200, {})]), S)
    assert ranking(causes, "stripes")[0] == "latent_periodicity"
    assert any("48 px" in e for e in causes[0].evidence)


def test_clean_inputs_lower_each_stripe_cause():
    findings = [_stripe(48.0)]
    base = {c.id: c.score for c in rank_causes(findings, RunData(), S)}
    clean = {c.id: c.score for c in rank_causes(
        findings, RunData(latents=[LatentFile("a", 1, {})], dataset_dir=Path("d")), S)}
    for cid in ("stripes.latent_periodicity", "stripes.augmentation_pattern", "stripes.batchnorm_imbalance"):
        assert clean[cid] < base[cid]


# ------------------------------------------------------------------ tiling doubling

def _doubling(p=40):
    return F("tiling_period_doubling", location={"image": "out.png", "reference": "ref.png",
                                                  "period_px": [p, p], "doubled_period_px": [2 * p, 2 * p]})


@pytest.mark.parametrize("p", [24, 40, 52])
def test_tiled_sources_first(p):
    findings = [_doubling(p)] + [
        F("dataset_tiled_source", location={"file": f"tex_{k}.png", "period_px": [p, p]},
          evidence={"strength": 0.7, "seamless": True}) for k in range(3)]
    causes = rank_causes(findings, RunData(dataset_dir=Path("d"), masks_dir=Path("m")), S)
    assert ranking(causes, "tiling_doubling")[0] == "tiled_sources"
    assert causes[0].score > 0.95 and causes[0].findings == [0, 1, 2, 3]
    assert any(f"({p} px)" in e for e in causes[0].evidence)


@pytest.mark.parametrize("problem", ["misaligned", "non_binary", "size_mismatch", "empty"])
def test_invalid_masks_rank_mask_preparation_first(problem):
    findings = [_doubling(), F("dataset_invalid_mask", location={"file": "m1.png", "problem": problem}),
                F("dataset_invalid_mask", location={"file": "m2.png", "problem": problem}),
                F("dataset_tiled_source", "info", location={"file": "brick.png", "period_px": [70, 35]})]
    causes = rank_causes(findings, RunData(dataset_dir=Path("d"), masks_dir=Path("m")), S)
    assert ranking(causes, "tiling_doubling")[0] == "mask_preparation"
    assert any(problem in e and "m1.png" in e for e in causes[0].evidence)


def test_norm_collapse_plateau_and_config_rank_over_regularization_first():
    findings = [_doubling(),
                F("loss_plateau", location={"start_step": 0, "end_step": 1900, "key": "loss"},
                  evidence={"level": 0.2, "later_level": 0.12, "ratio": 1.67}),
                F("checkpoint_norm_collapse", location={"checkpoint": "lora-step00003000.safetensors",
                                                        "modules": ["a", "b", "c"], "growth": 0.31})]
    run = RunData(dataset_dir=Path("d"), config={"weight_decay": 0.3, "network_dropout": 0.5},
                  checkpoints=[Path("x")])
    causes = rank_causes(findings, run, S)
    assert ranking(causes, "tiling_doubling") == ["over_regularization", "mask_preparation", "tiled_sources"]
    ev = " ".join(causes[0].evidence)
    assert "0.31" in ev and "1900" in ev and "weight decay is 0.3" in ev and "network_dropout is 0.5" in ev


def test_config_alone_decides_over_regularization_against_priors():
    causes = rank_causes([_doubling()], RunData(config={"optimizer": {"weight_decay": 0.2}, "lora_dropout": 0.35}), S)
    assert ranking(causes, "tiling_doubling")[0] == "over_regularization"
    causes = rank_causes([_doubling()], RunData(config={"weight_decay": 0.01}), S)
    assert ranking(causes, "tiling_doubling")[0] == "tiled_sources"


def test_findings_indices_refer_to_the_full_list():
    findings = [F("hf_noise_patch"), F("crop_offset"), _doubling(),
                F("dataset_invalid_mask", location={"file": "m.png", "problem": "misaligned"})]
    causes = rank_causes(findings, RunData(masks_dir=Path("m"), dataset_dir=Path("d")), S)
    mask = next(c for c in causes if c.id.endswith("mask_preparation"))
    assert mask.findings == [2, 3]
    assert all(0 <= i < len(findings) for c in causes for i in c.findings)


def test_multiple_symptoms_are_grouped_in_contract_order():
    findings = [_stripe(48.0), _doubling(), *_spikes([10])]
    causes = rank_causes(findings, RunData(), S)
    assert [c.symptom for c in causes] == ["loss_spikes"] * 3 + ["tiling_doubling"] * 3 + ["stripes"] * 3


def test_checkpoint_metadata_regularisation_is_read_from_the_collapse_finding():
    findings = [_doubling(28), F("checkpoint_norm_collapse",
                                 location={"checkpoint": "lora-step00002000.safetensors", "modules": ["m1"],
                                           "growth": 0.2},
                                 evidence={"fraction_of_modules": 0.9, "over_regularisation": True,
                                           "regularisation": {"weight_decay": 0.25, "network_dropout": 0.3}})]
    causes = rank_causes(findings, RunData(dataset_dir=Path("d"), checkpoints=[Path("c")]), S)
    assert ranking(causes, "tiling_doubling")[0] == "over_regularization"
    ev = " ".join(causes[0].evidence)
    assert "weight decay is 0.25" in ev and "network_dropout is 0.3" in ev and "90 %" in ev
    # a collapse of a few modules counts less than a broad one
    few = [_doubling(28), F("checkpoint_norm_collapse", location={"checkpoint": "c", "modules": ["m1"], "growth": 0.2},
                            evidence={"fraction_of_modules": 0.1})]
    broad = {c.id: c.score for c in rank_causes(findings[:1] + [F("checkpoint_norm_collapse", location={
        "checkpoint": "c", "modules": ["m1"], "growth": 0.2}, evidence={"fraction_of_modules": 0.9})], RunData(), S)}
    narrow = {c.id: c.score for c in rank_causes(few, RunData(), S)}
    assert narrow["tiling_doubling.over_regularization"] < broad["tiling_doubling.over_regularization"]


def test_ema_break_inside_a_nonfinite_tail_is_not_an_ema_gap():
    n = 1000
    loss = heavy_tailed_loss(n, 9)
    loss[400] = np.inf  # one isolated bad step first
    loss[700:] = np.nan
    run = RunData(log=log_with(loss))
    f = [F("loss_nonfinite", "critical", location={"step": 400, "steps": [400, *range(700, 1000)], "key": "loss"}),
         F("ema_divergence", location={"start_step": 720, "end_step": 999, "key": "ema_loss"},
           evidence={"max_gap": 2.1})]
    causes = rank_causes(f, run, S)
    assert ranking(causes, "loss_spikes")[0] == "learning_rate_too_high"
    assert any("non-finite at step 700 and never recovers" in e for e in causes[0].evidence)
    ema = next(c for c in causes if c.id.endswith("ema_gap"))
    assert any(e.startswith("Against") and "from step 700" in e for e in ema.evidence)


def test_latent_period_on_the_stripe_axis_counts_when_the_pixel_period_is_unmeasured():
    findings = [_stripe(None, axis="horizontal"), _stripe(None, axis="vertical"),
                F("latent_periodicity", location={"files": ["a.npy"], "axis": "horizontal", "period": 7, "channel": 3}),
                F("stripes", location={"latents": "a.npy", "axis": "horizontal", "period_px": 56, "bbox": [0, 0, 8, 8]},
                  evidence={"period_cells": 7})]
    causes = rank_causes(findings, RunData(latents=[LatentFile("a.npy", 1, {})]), S)
    assert ranking(causes, "stripes")[0] == "latent_periodicity"
    assert any("along the axis of the horizontal stripes" in e for e in causes[0].evidence)
    # a latent period on the other axis only is not enough
    findings[2].location["axis"] = findings[3].location["axis"] = "vertical"
    findings[0].location["axis"] = findings[1].location["axis"] = "horizontal"
    causes = rank_causes(findings, RunData(latents=[LatentFile("a.npy", 1, {})]), S)
    lat = next(c for c in causes if c.id.endswith("latent_periodicity"))
    assert not any("along the axis" in e for e in lat.evidence)


def test_trainer_config_beside_the_logs_is_read_when_no_tracker_config():
    log = log_with(heavy_tailed_loss(500, 10))
    log.config = {"weight_decay": 0.25, "network_dropout": 0.3}
    causes = rank_causes([_doubling(30)], RunData(log=log), S)
    assert ranking(causes, "tiling_doubling")[0] == "over_regularization"
    assert any("weight decay is 0.25" in e for e in causes[0].evidence)
    # a tracker's config wins over the file beside the logs
    causes = rank_causes([_doubling(30)], RunData(log=log, config={"weight_decay": 0.0, "network_dropout": 0.0}), S)
    assert ranking(causes, "tiling_doubling")[0] == "tiled_sources"


def test_nonfinite_steps_of_recurring_samples_point_to_corrupted_batches():
    """Garbage samples give NaN at their steps (the tiny LoRA's corrupted_samples fault); a NaN at the very
    last step is no blow-up."""
    rng = np.random.default_rng(11)
    n = 200
    ids = {s: [f"sample_{int(x):03d}" for x in rng.choice(16, 2, replace=False)] for s in range(n)}
    loss = heavy_tailed_loss(n, 12)
    bad_steps = [s for s in range(n) if {"sample_006", "sample_010"} & set(ids[s])]
    loss[bad_steps] = np.nan
    loss[-1] = np.nan
    bad_steps = sorted(set(bad_steps) | {n - 1})
    run = RunData(log=log_with(loss, sample_ids=ids))
    f = [F("loss_nonfinite", "critical", location={"step": bad_steps[0], "steps": bad_steps, "key": "loss"})]
    causes = rank_causes(f, run, S)
    assert ranking(causes, "loss_spikes")[0] == "corrupted_batch"
    ev = " ".join(causes[0].evidence)
    assert "isolated" in ev and "batches with a non-finite loss" in ev


def test_latent_stripes_period_px_is_in_pixels():
    """Latent stripes report ``period_px`` in pixels (cells × --vae-scale); without ``period_cells``
    the 48 px latent band must match 48 px pixel stripes, not 48 × 8."""
    findings = [_stripe(48.0), F("stripes", location={"latents": "lat_100.npy", "axis": "vertical",
                                                      "period_px": 48, "bbox": [0, 0, 512, 512]})]
    causes = rank_causes(findings, RunData(latents=[LatentFile("lat_100.npy", 100, {})]), S)
    assert ranking(causes, "stripes")[0] == "latent_periodicity"
    top = causes[0]
    assert any("6 cells × 8 px per cell = 48 px matches" in e for e in top.evidence), top.evidence
