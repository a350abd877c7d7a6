"""Artifact onset: the first step from which an artifact appears in the training samples and stays.

Samples are real photos (scikit-image) re-rendered per step (JPEG at a random
quality, a new random crop each step, as a model's samples change); from the
onset step on they carry stripe banding (random axis, period, box and
amplitude per step); a transient one-off artifact appears at one earlier step
only. What cannot exist here is a real diffusion model producing these
samples — the artifacts are drawn onto photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.scenarios.images import _crop, photo, rerender, stripes_case
from diffdiag.analyzers.onset import find_onset, find_onsets
from diffdiag.model import ImageInput, RunData, Settings
from .lora_files import kohya_lora_files

PHOTOS = ["astronaut", "camera", "coffee", "chelsea", "rocket"]


def _clean(name: str, seed: int, size=(224, 224)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rerender(_crop(photo(name), size[0], size[1], rng), "jpeg", rng)


def _striped(name: str, seed: int, size=(224, 224)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return stripes_case(axis=["vertical", "horizontal"][seed % 2], period=int(rng.integers(5, 12)), name=name,
                        seed=seed, amplitude=float(rng.uniform(0.07, 0.1)), size=size).image


def make_samples(steps: list[int], onset_index: int | None, transient_index: int | None, seed: int,
                 per_step: int = 2) -> list[tuple[int, int, np.ndarray]]:
    """(step, prompt index, image) triples; stripes from ``onset_index`` on and at ``transient_index`` only."""
    out = []
    for i, st in enumerate(steps):
        for j in range(per_step):
            name = PHOTOS[(j + seed) % len(PHOTOS)]
            s = seed * 1000 + i * 10 + j
            bad = (onset_index is not None and i >= onset_index) or i == transient_index
            out.append((st, j, _striped(name, s) if bad else _clean(name, s)))
    return out


def _run(samples) -> RunData:
    return RunData(samples=[ImageInput(img, f"wandb:samples/{j}@{st}", step=st) for st, j, img in samples])


@pytest.mark.parametrize("seed,n_steps,onset_index,transient_index", [(0, 9, 5, 2), (1, 8, 3, 1), (2, 10, 6, None)])
def test_onset_from_tracker_samples(seed, n_steps, onset_index, transient_index):
    from diffdiag.checks.onset import check_onset

    rng = np.random.default_rng(seed)
    stride = int(rng.choice([50, 100, 250]))
    steps = [stride * (i + 1) for i in range(n_steps)]
    run = _run(make_samples(steps, onset_index, transient_index, seed))
    res = check_onset(run, Settings())
    findings = res.findings
    table = res.data
    assert table["steps"] == steps and table["presence"]["stripes"][onset_index:] == [True] * (n_steps - onset_index)
    assert [o.step for o in table["onsets"]] == [steps[onset_index]]
    before, at = table["pairs"]["stripes"]
    assert before.step == steps[onset_index - 1] and at.step == steps[onset_index]
    assert [(f.id, f.location["artifact"], f.location["step"]) for f in findings] == \
        [("artifact_onset", "stripes", steps[onset_index])]
    ev = findings[0].evidence
    assert ev["last_clean_step"] == steps[onset_index - 1]
    assert ev["stay_fraction"] >= 0.8
    if transient_index is not None:
        assert steps[transient_index] in ev["transient_steps"]


def test_transient_artifact_is_not_an_onset():
    from diffdiag.checks.onset import check_onset

    steps = [100 * (i + 1) for i in range(7)]
    run = _run(make_samples(steps, None, 3, seed=4))
    res = check_onset(run, Settings())
    assert res.findings == []
    info = res.data
    assert info["presence"]["stripes"] == [i == 3 for i in range(7)]  # it was seen, once


def test_artifact_present_from_the_start_is_not_an_onset():
    from diffdiag.checks.onset import check_onset

    steps = [10, 20, 30, 40, 50]
    run = _run(make_samples(steps, 0, None, seed=5))
    assert check_onset(run, Settings()).findings == []


@pytest.mark.parametrize("present,expected", [
    ([0, 0, 0, 1, 1, 1], 3),
    ([0, 1, 0, 0, 1, 1, 1, 1], 4),           # early transient
    ([0, 1, 0, 1, 1, 1, 1, 1], 3),           # transient just before the onset: not where it started to stay
    ([0, 0, 1, 1, 0, 1, 1, 1, 1, 1], 2),     # one miss after the onset (9 of 8 later steps: ≥ 80 %)
    ([0, 0, 0, 0, 0, 1], None),              # only the last sample: cannot tell it stays
    ([0, 1, 0, 1, 0, 1, 0, 1], None),        # flicker
    ([1, 1, 1, 1], None),                    # from the start
    ([0, 0, 0, 0], None),
])
def test_find_onset_rule(present, expected):
    steps = list(range(0, 10 * len(present), 10))
    o = find_onset(steps, [bool(p) for p in present], "stripes")
    assert (None if o is None else o.index) == expected
    if o is not None:
        assert o.step == steps[expected] and o.last_clean_step == steps[expected - 1]


def test_find_onsets_sorts_and_handles_unsorted_steps():
    steps = [30, 10, 20, 40, 50]
    res = find_onsets(steps, {"stripes": [True, False, False, True, True],
                              "hf_noise_patch": [True, False, True, True, True]})
    assert [(o.artifact, o.step) for o in res] == [("hf_noise_patch", 20), ("stripes", 30)]


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.round(img * 255), 0, 255).astype(np.uint8)).save(path)


def test_cli_onset_from_kohya_sample_folder_next_to_checkpoints(tmp_path, run_cli):
    """kohya layout: LoRA files and ``sample/<name>_<step:06d>_<prompt:02d>_<timestamp>.png`` in one output dir."""
    steps = [250 * (i + 1) for i in range(6)]
    out = tmp_path / "out"
    paths = kohya_lora_files(out, steps, seed=7)
    for st, j, img in make_samples(steps, 3, None, seed=7):
        _save(img, out / "sample" / f"mylora_{st:06d}_{j:02d}_20260101120000.png")
    code, _, err, diag = run_cli("analyze", "--checkpoints", str(out), report=tmp_path / "r")
    assert code == 0, err
    onsets = [f for f in diag["findings"] if f["id"] == "artifact_onset"]
    assert len(onsets) == 1
    f = onsets[0]
    assert f["location"] == {"step": steps[3], "artifact": "stripes"}
    assert f["evidence"]["checkpoint"] == paths[3].name
    assert f["evidence"]["last_clean_checkpoint"] == paths[2].name
    assert not [x for x in diag["findings"] if x["id"].startswith("checkpoint_")]
    assert (tmp_path / "r" / "figures" / "artifact_onset.png").exists()


def test_step_folders_in_logdir(tmp_path):
    from diffdiag.sources.samples import load_sample_folders, sample_step

    steps = [200, 400, 600, 800]
    for st, j, img in make_samples(steps, 2, None, seed=8, per_step=1):
        _save(img, tmp_path / "logs" / "samples" / f"step_{st}" / f"{j}.png")
    samples, notes = load_sample_folders(logdir=tmp_path / "logs")
    assert [s.step for s in samples] == steps and notes == []
    assert sample_step("x/sample/my_lora_e000004_01_20240101010101.png") == 4
    assert sample_step("x/1200/prompt_a.png") == 1200
    assert sample_step("x/validation/img-step001500-0.webp") == 1500
