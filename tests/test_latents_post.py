"""Latent patterns made by the model: searched in ``post`` (and ``post - pre``) as well as ``pre``.

Ground truth: VAE-like healthy pre/post latents (``benchmarks.scenarios.latents``:
``pre`` = noisy photo latents, ``post`` = an epsilon prediction with a realistic
error) with a known wave added to one channel of one array in every file.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.scenarios.images import stripes_case
from benchmarks.scenarios.latents import healthy_latents
from diffdiag.analyzers.latents import batch_shift
from diffdiag.model import ImageInput, LatentFile, RunData, Settings
from diffdiag.pipeline import analyze


def _wave(size: int, period: int, phase: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float32)
    w = np.sign(np.sin(2 * np.pi * x / period + phase)) * 0.5 + 0.5 * np.sin(2 * np.pi * x / period + phase)
    return (w - w.mean()) / np.abs(w).max()


def _files(seed: int, *, array: str | None = None, channel: int = 0, period: int = 4, axis: str = "vertical",
           amplitude: float = 0.6, n_files: int = 5, size: int = 32) -> list[LatentFile]:
    case = healthy_latents(seed, n_files=n_files, size=size, pre_post=True)
    w = _wave(size, period, 0.7)
    out = []
    for i, (name, arrays) in enumerate(sorted(case.files.items())):
        arrays = {k: v.copy() for k, v in arrays.items()}
        if array is not None:
            a = arrays[array]
            sd = float(a[:, channel].std())
            a[:, channel] += amplitude * sd * (w[None, None, :] if axis == "vertical" else w[None, :, None])
        out.append(LatentFile(name, 100 * (i + 1), arrays))
    return out


def _alarms(diag):
    return [f for f in diag.findings if f.severity != "info"]


@pytest.mark.parametrize("array,channel,period,axis", [
    ("post", 2, 5, "vertical"), ("post", 0, 3, "horizontal"), ("post", 3, 9, "vertical"),
    ("pre", 1, 6, "horizontal"), ("pre", 2, 4, "vertical")])
def test_wave_in_one_channel_is_found_in_the_array_that_carries_it(array, channel, period, axis):
    files = _files(period * 10 + channel, array=array, channel=channel, period=period, axis=axis)
    diag = analyze(RunData(latents=files), Settings())
    per = [f for f in diag.findings if f.id == "latent_periodicity"]
    assert [(f.location["array"], f.location["channel"], f.location["period"], f.location["axis"]) for f in per] \
        == [(array, channel, period, axis)]
    assert sorted(per[0].location["files"]) == sorted(lf.path for lf in files)
    assert per[0].severity == "warning"
    stripes = [f for f in diag.findings if f.id == "stripes"]
    assert [(f.location["array"], f.location["period_px"]) for f in stripes] == [(array, period * 8)]
    assert {f.id for f in _alarms(diag)} == {"latent_periodicity", "stripes"}


def test_plain_latents_are_array_latents():
    case = healthy_latents(4, n_files=5, size=32)
    w = _wave(32, 7, 0.2)
    files = []
    for i, (name, x) in enumerate(sorted(case.files.items())):
        x = x.copy()
        x[:, 1] += 0.6 * float(x[:, 1].std()) * w[None, None, :]
        files.append(LatentFile(name, i, {"latents": x}))
    per = [f for f in analyze(RunData(latents=files), Settings()).findings if f.id == "latent_periodicity"]
    assert [(f.location["array"], f.location["channel"], f.location["period"]) for f in per] == [("latents", 1, 7)]


@pytest.mark.parametrize("seed", [0, 11, 17, 30, 31])
def test_healthy_pre_post_raise_nothing(seed):
    # seeds 11, 17 and 30 were batch-shift false alarms in `pre` before a suspect file's null pool held its own
    # samples (heterogeneous noise levels per sample make healthy files look like outliers on a first look)
    diag = analyze(RunData(latents=_files(100 + seed)), Settings())
    assert _alarms(diag) == []


def test_suspect_file_null_keeps_its_own_samples():
    case = healthy_latents(111, n_files=6, pre_post=True)
    pre = [v["pre"] for _, v in sorted(case.files.items())]
    res = batch_shift(pre)
    assert not res.shifted.any()
    # the same file shifted by 1.5 standard deviations in channel 0 is still found
    sd = float(np.concatenate(pre)[:, 0].std())
    pre[4] = pre[4].copy()
    pre[4][:, 0] += 1.5 * sd
    res = batch_shift(pre)
    assert np.argwhere(res.shifted).tolist() == [[4, 0]]
    assert res.file_threshold[4, 0] < res.distance[4, 0]


def test_stripes_cause_is_the_post_latent_period_when_it_matches_the_pixel_stripes():
    cells = 5
    img = stripes_case("vertical", cells * 8, "camera", seed=2, amplitude=0.08)
    files = _files(7, array="post", channel=1, period=cells, axis="vertical")
    run = RunData(images=[ImageInput(img.image, "out.png", img.reference, "ref.png")], latents=files)
    diag = analyze(run, Settings())
    pixel = [f for f in diag.findings if f.id == "stripes" and "image" in f.location]
    assert pixel and pixel[0].location["period_px"] == cells * 8
    ranked = sorted((c for c in diag.causes if c.symptom == "stripes"), key=lambda c: -c.score)
    assert ranked[0].id == "stripes.latent_periodicity"
    # without the post pattern the latents count against that cause
    run = RunData(images=[ImageInput(img.image, "out.png", img.reference, "ref.png")], latents=_files(7))
    ranked = sorted((c for c in analyze(run, Settings()).causes if c.symptom == "stripes"), key=lambda c: -c.score)
    assert ranked[0].id != "stripes.latent_periodicity"


def test_a_period_at_random_phases_is_content_not_an_artifact():
    # the same wave in every sample of every file: at one phase an artifact, at a phase drawn per sample a
    # periodic subject (coins, bricks) that the detector must leave alone
    rng = np.random.default_rng(3)
    case = healthy_latents(21, n_files=5, size=32)
    for phases in ("fixed", "random"):
        files = []
        for i, (name, x) in enumerate(sorted(case.files.items())):
            x = x.copy()
            sd = float(x[:, 2].std())
            for b in range(x.shape[0]):
                x[b, 2] += 0.8 * sd * _wave(32, 6, 0.4 if phases == "fixed" else float(rng.uniform(0, 2 * np.pi)))
            files.append(LatentFile(name, i, {"latents": x}))
        per = [f for f in analyze(RunData(latents=files), Settings()).findings if f.id == "latent_periodicity"]
        assert [(f.location["channel"], f.location["period"]) for f in per] == ([(2, 6)] if phases == "fixed" else [])


def test_healthy_latents_with_a_naturally_periodic_photo_raise_nothing():
    # benchmarks/sensitivity.py healthy latents #24: crops of `coins` in two files share an 8-cell period
    # (at random phases); before the phase-coherence rule this was latent_periodicity + stripes at warning
    from benchmarks.sensitivity import healthy_latents as bench_healthy

    assert _alarms(analyze(bench_healthy(24), Settings())) == []


def test_phase_agreement_counts_the_samples_that_carry_the_component():
    from diffdiag.analyzers.latents import phase_agreement

    x = np.arange(30)
    same = np.stack([np.cos(2 * np.pi * x / 6 + 0.3)] * 8)
    a = phase_agreement(same, 6)
    assert a.coherence == pytest.approx(1.0) and a.n_eff == pytest.approx(8.0)
    assert a.p_value == pytest.approx(np.exp(-8.0))
    # two samples in opposite phase cancel; a third, ten times weaker, hardly counts
    two = np.stack([np.cos(2 * np.pi * x / 6), -np.cos(2 * np.pi * x / 6), 0.1 * np.cos(2 * np.pi * x / 6)])
    b = phase_agreement(two, 6)
    assert b.coherence == pytest.approx(0.1 / 2.1) and b.n_eff == pytest.approx(2.1 ** 2 / 2.01)
    # one strong sample among weak ones: fully coherent with itself, yet one sample is no evidence
    one = np.stack([np.cos(2 * np.pi * x / 6)] + [0.01 * np.cos(2 * np.pi * x / 6 + k) for k in range(7)])
    c = phase_agreement(one, 6)
    assert c.coherence > 0.9 and c.n_eff < 1.2 and c.p_value > 0.3
    assert not c.holds(0.8, 0.01) and a.holds(0.8, 0.01)


def test_a_periodic_subject_in_two_samples_of_two_files_is_content():
    # one strong periodic sample in each of two files (as two crops of `coins` are) at phases that happen to
    # agree (coherence 0.98): two samples can agree by chance, the Rayleigh test over the samples that
    # carry the component (n_eff ~ 2) rejects it; the same wave in every sample is still found
    case = healthy_latents(5, n_files=6, size=32)
    names = sorted(case.files)
    for where in ("two samples", "every sample"):
        files = []
        for i, name in enumerate(names):
            x = case.files[name].copy()
            sd = float(x[:, 1].std())
            for b in range(x.shape[0]):
                if where == "every sample" or (i in (0, 3) and b == 0):
                    x[b, 1] += (2.5 if where == "two samples" else 0.6) * sd * _wave(32, 9, 0.5 + 0.2 * (i == 3))
            files.append(LatentFile(name, i, {"latents": x}))
        per = [f for f in analyze(RunData(latents=files), Settings()).findings if f.id == "latent_periodicity"]
        assert [(f.location["channel"], f.location["period"]) for f in per] == \
            ([] if where == "two samples" else [(1, 9)]), where


def test_healthy_latents_with_coins_in_two_files_raise_nothing():
    # benchmarks/sensitivity.py healthy latents #264 (fresh seeds past the table's 200): `coins` in one sample
    # of each of two files, period 9 cells, coherence 0.82 but n_eff 2.6 (Rayleigh p = 0.13)
    from benchmarks.sensitivity import healthy_latents as bench_healthy

    assert _alarms(analyze(bench_healthy(264), Settings())) == []


def test_batch_shift_error_rate_is_split_over_the_arrays_tested():
    case = healthy_latents(8, n_files=8, pre_post=True)
    names = sorted(case.files)
    sd = float(np.concatenate([case.files[n]["post"][:, 2] for n in names]).std())
    case.files[names[5]]["post"][:, 2] += 0.6 * sd
    files = [LatentFile(n, i, dict(case.files[n])) for i, n in enumerate(names)]
    shift = [f for f in analyze(RunData(latents=files), Settings()).findings if f.id == "latent_batch_shift"]
    assert [(f.location["array"], f.location["files"], f.location["channels"]) for f in shift] == \
        [("post", [names[5]], [2])]
    assert shift[0].evidence["alpha"] == pytest.approx(0.005)  # pre and post: two tests at 0.01 / 2
    assert shift[0].evidence["p_value"][names[5]][2] <= 0.005
    plain = [LatentFile(n, i, {"latents": case.files[n]["post"]}) for i, n in enumerate(names)]
    shift = [f for f in analyze(RunData(latents=plain), Settings()).findings if f.id == "latent_batch_shift"]
    assert [f.location["files"] for f in shift] == [[names[5]]] and shift[0].evidence["alpha"] == 0.01
