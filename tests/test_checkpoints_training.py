"""LoRA health from the weights of real trainings (docs/CONTRACT.md §3, ``checkpoint_*``).

The runs are real: the project's tiny diffusers UNet LoRA-tuned with PEFT and AdamW
(:mod:`diffdiag.integrations.tiny_lora`), healthy and with the LR warmed up to 100x
(0.1); their weights are written as diffusers' ``train_text_to_image_lora.py`` writes
them (``checkpoint-N/pytorch_lora_weights.safetensors`` through diffusers' own
``save_lora_weights``, the final ``pytorch_lora_weights.safetensors``, ``hparams.yml``:
``tests/lora_runs.py``). Ground truth is measured here independently of diffdiag: the
size of each module's ΔW against the real base layer it adapts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from .conftest import validate_diagnosis  # noqa: E402
from .lora_runs import cached_run  # noqa: E402

STEPS, EVERY = 60, 10
WARN = ("warning", "critical")


@pytest.fixture(scope="session")
def base():
    from diffdiag.integrations.tiny_lora import load_or_build_base

    return load_or_build_base()[0]


@pytest.fixture(scope="session")
def healthy(tmp_path_factory):
    return cached_run(tmp_path_factory, fault=None, steps=STEPS, every=EVERY)


@pytest.fixture(scope="session")
def too_high(tmp_path_factory):
    return cached_run(tmp_path_factory, fault="lr_too_high", steps=STEPS, every=EVERY)


def _analyze(*checkpoints, logdir=None):
    import diffdiag

    run = diffdiag.load(checkpoints=tuple(str(p) for p in checkpoints), logdir=str(logdir) if logdir else None)
    return run, diffdiag.analyze(run)


def true_relative_sizes(path, base) -> dict[str, float]:
    """‖ΔW‖_F / ‖W₀‖_F per module, from the file's factors (dense ΔW, float64) and the real base layer."""
    from safetensors.numpy import load_file

    sd = load_file(str(path))
    out = {}
    for key, down in sd.items():
        if key.endswith(("lora_A.weight", "lora.down.weight")):
            stem = key.rsplit(".lora", 1)[0]
            up = sd[stem + (".lora_B.weight" if "lora_A" in key else ".lora.up.weight")]
            dw = up.astype(np.float64) @ down.astype(np.float64)        # diffusers' files: alpha = rank, scale 1
            w0 = base.get_submodule(stem.removeprefix("unet.")).weight.detach().double().numpy()
            out[stem] = float(np.linalg.norm(dw) / np.linalg.norm(w0))
    return out


@pytest.fixture(scope="session")
def strong_healthy(tmp_path_factory):
    """A healthy run at a high-but-sane LR (3e-3) and rank 16: larger updates, still no blow-up."""
    return cached_run(tmp_path_factory, fault=None, steps=STEPS, every=EVERY, lr=3e-3, rank=16)


@pytest.mark.parametrize("which", ["healthy", "strong_healthy"])
def test_healthy_run_raises_nothing_from_its_weights(which, request, base):
    """Single final file, the whole output folder, the checkpoint folders alone: nothing at warning+, no note."""
    healthy = request.getfixturevalue(which)
    assert np.isfinite(healthy.losses).all() and np.median(healthy.losses[-20:]) < 0.2   # it trained fine
    rel = true_relative_sizes(healthy.final, base)
    assert len(rel) == 32 and np.median(list(rel.values())) < 0.7      # ground truth: a healthy size
    for paths in ([healthy.final], [healthy.out], healthy.checkpoints):
        run, diag = _analyze(*paths)
        assert not [f for f in diag.findings if f.severity in WARN], [f.message for f in diag.findings]
        assert diag.warnings == []          # diffusers' files store no alpha: scale 1 is their convention
        assert diag.causes == []
    assert [c.step for c in run.checkpoint_scan.checkpoints] == list(range(EVERY, STEPS + 1, EVERY))


def test_final_lora_file_alone_is_flagged_as_exploded(too_high, base, tmp_path):
    from diffdiag.analyzers.checkpoints import LAYER_GAIN, OVERSIZE_MEDIAN

    truth = true_relative_sizes(too_high.final, base)
    assert np.median(list(truth.values())) > 5                          # ground truth: blown up
    run, diag = _analyze(too_high.final)
    (f,) = [f for f in diag.findings if f.severity in WARN]
    assert f.id == "checkpoint_norm_explosion" and f.severity == "critical"
    assert f.location["growth"] is None and f.location["checkpoint"] == run.checkpoint_scan.checkpoints[0].name
    assert f.evidence["basis"] == "size" and f.evidence["n_checkpoints"] == 1
    assert f.evidence["n_oversized"] == f.evidence["n_compared"] == 32 == len(f.location["modules"])
    # the figures are the file's: ‖B A‖ over a layer of gain 1/√3 of the module's width
    from safetensors.numpy import load_file

    sd = load_file(str(too_high.final))
    mine = []
    for key, down in sd.items():
        if key.endswith("lora.down.weight"):
            up = sd[key.replace("lora.down", "lora.up")]
            mine.append(np.linalg.norm(up.astype(np.float64) @ down) / (LAYER_GAIN * np.sqrt(up.shape[0])))
    assert f.evidence["median_relative_size"] == pytest.approx(float(np.median(mine)), rel=1e-4)
    assert f.evidence["median_relative_size"] >= OVERSIZE_MEDIAN
    assert f"{f.evidence['median_relative_size']:.3g}x" in f.message
    # ... and close to the truth measured against the real base layers (the base's gain is ~0.6)
    assert f.evidence["median_relative_size"] == pytest.approx(np.median(list(truth.values())), rel=0.25)
    # a checkpoint-only analysis still observes the loss-spike symptom, and ranks the LR first
    top = [c for c in diag.causes if c.symptom == "loss_spikes"][0]
    assert top.id == "loss_spikes.learning_rate_too_high" and diag.findings.index(f) in top.findings
    diag.created = "2026-01-01T00:00:00+00:00"
    doc = validate_diagnosis(json.loads(json.dumps(diag.to_dict())))     # growth null is in the schema
    assert doc["findings"][0]["location"]["growth"] is None


def test_folders_blown_up_after_the_first_checkpoint(too_high, base):
    first = true_relative_sizes(too_high.checkpoints[0] / "pytorch_lora_weights.safetensors", base)
    assert np.median(list(first.values())) < 0.7                        # still a healthy size at step 10
    run, diag = _analyze(too_high.out)
    found = [f for f in diag.findings if f.severity in WARN and f.id.startswith("checkpoint")]
    assert [f.id for f in found] == ["checkpoint_norm_explosion"], [f.message for f in found]
    f = found[0]
    names = [c.name for c in run.checkpoint_scan.checkpoints]
    k = names.index(f.location["checkpoint"])
    assert 0 < k and f.location["growth"] is not None and f.location["growth"] > 1
    # it is the first checkpoint where some module's true ΔW outgrew its base layer 4x, or the median one 2x
    onset = next(i for i, c in enumerate(run.checkpoint_scan.checkpoints)
                 if (lambda r: max(r) >= 4 or np.median(r) >= 2)(list(true_relative_sizes(c.path, base).values())))
    assert k == onset
    assert f.severity == "critical" and f.evidence["peak_median_relative_size"] >= 2


def test_folders_blown_up_before_the_first_checkpoint(too_high):
    """Only the checkpoints from step 40 on: the first one is already exploded — an explosion, growth null."""
    later = [d for d in too_high.checkpoints if int(d.name.split("-")[1]) >= 40] + [too_high.final]
    run, diag = _analyze(*later)
    found = [f for f in diag.findings if f.severity in WARN]
    assert [f.id for f in found] == ["checkpoint_norm_explosion"]
    f = found[0]
    assert f.location["checkpoint"] == "checkpoint-40/pytorch_lora_weights.safetensors"
    assert f.location["growth"] is None and f.evidence["first_checkpoint"] is True
    assert "at the first checkpoint" in f.message and f.evidence["step"] == 40


def test_exploded_then_shrunk_by_weight_decay_is_no_collapse(tmp_path):
    """Blown up before the first checkpoint, then weight decay shrinks it to a fraction: one explosion."""
    from benchmarks.scenarios.checkpoints import train_lora_checkpoints

    sc = train_lora_checkpoints(tmp_path, seed=6, event="blowup_decay", event_index=2, n_event_modules=32,
                                n_checkpoints=4, steps_per=4, formats=("kohya",))
    run, diag = _analyze(sc.root / "kohya")
    cmp = run.checkpoint_scan.comparison
    assert cmp.totals[-1] < 0.4 * cmp.totals[0]                          # it did shrink (what looked like collapse)
    assert [f.id for f in diag.findings if f.severity in WARN] == ["checkpoint_norm_explosion"]
    f = diag.findings[0]
    assert f.location["checkpoint"] == sc.checkpoint_name("kohya", 0) and f.location["growth"] is None


def test_logs_and_checkpoints_rank_lr_first_citing_the_weights_and_the_configured_lr(too_high):
    run, diag = _analyze(too_high.out, logdir=too_high.logs)
    assert run.config["learning_rate"] == pytest.approx(0.1)           # from hparams.yml
    top = [c for c in diag.causes if c.symptom == "loss_spikes"][0]
    assert top.id == "loss_spikes.learning_rate_too_high"
    (ex,) = [i for i, f in enumerate(diag.findings) if f.id == "checkpoint_norm_explosion"]
    assert ex in top.findings
    ck = diag.findings[ex].location["checkpoint"]
    assert any(ck in e and e.startswith("For") for e in top.evidence)
    (lr_line,) = [e for e in top.evidence if "learning rate is 0.1 " in e]
    assert lr_line.startswith("For (+2.0)") and "100x the top of the usual 1e-05–0.001" in lr_line


def test_notes_name_every_file_once_with_its_format(healthy, tmp_path):
    """A PEFT adapter without its adapter_config.json: one note for all its files, in diagnosis.json."""
    from safetensors.numpy import load_file, save_file

    for d in healthy.checkpoints[:3]:
        sd = load_file(str(d / "pytorch_lora_weights.safetensors"))
        out = tmp_path / d.name
        out.mkdir()
        peft = {"base_model.model." + k.removeprefix("unet.").replace(".lora.down.", ".lora_A.")
                .replace(".lora.up.", ".lora_B."): v for k, v in sd.items()}          # PEFT's own key names
        save_file(peft, str(out / "adapter_model.safetensors"))
    run, diag = _analyze(tmp_path)
    notes = [w for w in diag.warnings if "adapter_config.json" in w]
    assert len(notes) == 1 and "PEFT" in notes[0] and "3 checkpoints" in notes[0], diag.warnings
    assert all(f"checkpoint-{s}/adapter_model.safetensors" in notes[0] for s in (10, 20, 30))
    assert diag.to_dict()["outputs"]["warnings"].count(notes[0]) == 1


def test_a_base_model_given_with_the_lora_is_what_its_updates_are_measured_against(healthy, too_high, base):
    """``--checkpoints tiny_base.safetensors run/``: ‖ΔW‖ over the real base layers, the truth measured above."""
    from diffdiag.integrations.tiny_lora import SHIPPED_BASE

    for r, exploded in ((healthy, False), (too_high, True)):
        truth = true_relative_sizes(r.final, base)
        run, diag = _analyze(SHIPPED_BASE, r.final)
        cmp = run.checkpoint_scan.comparison
        assert cmp.names == [run.checkpoint_scan.checkpoints[0].name] and len(cmp.base_norms) == 32
        got = dict(zip(cmp.modules, cmp.relative_size()[0]))
        assert got == pytest.approx(truth, rel=1e-4)
        assert diag.warnings == [f"{SHIPPED_BASE.parent.name}/{SHIPPED_BASE.name}: a full state dict given with "
                                 "LoRA checkpoints, taken as their base model: 32 of 32 LoRA modules are measured "
                                 "against its layers."]
        found = [f for f in diag.findings if f.severity in WARN]
        assert bool(found) == exploded
        if exploded:
            assert found[0].evidence["reference"] == "base_weights" and "base layers' weights" in found[0].message
            assert found[0].evidence["median_relative_size"] == pytest.approx(np.median(list(truth.values())),
                                                                               rel=1e-4)
