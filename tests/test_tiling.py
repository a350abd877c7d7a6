"""Tiling: period doubling of an output against its tiled reference, and periodic patterns in lone images."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.scenarios.images import PHOTOS, periodic_image_case, photo, tiling_case
from diffdiag.checks.images import image_findings
from diffdiag.model import ImageInput


def _run(case):
    return image_findings(ImageInput(case.image, "out.png", case.reference,
                                     "ref.png" if case.reference is not None else None))


@pytest.mark.parametrize("period,name,seed,axes,style", [
    ((21, 21), "grass", 1, "yx", "flip"), ((13, 29), "gravel", 2, "x", "crop"),
    ((37, 17), "astronaut", 3, "y", "shift"),
    ((26, 45), "coffee", 4, "yx", "vary"), ((19, 33), "immunohistochemistry", 5, "x", "flip"),
    ((40, 23), "chelsea", 6, "y", "crop")])
def test_period_doubling_detected_with_both_periods(period, name, seed, axes, style):
    case = tiling_case(period, name, seed, axes, style)
    found = [f for f in _run(case) if f.id == "tiling_period_doubling"]
    assert len(found) == 1, [f.id for f in _run(case)]
    f = found[0]
    assert f.severity == "warning"
    assert f.location["period_px"] == list(period)
    assert f.location["doubled_period_px"] == case.truth[0]["doubled_period_px"]
    assert f.location["reference"] == "ref.png" and f.location["image"] == "out.png"
    assert set(f.evidence["axes"]) == set(axes)
    # the spectral signature: power at odd multiples of N/(2P) on the doubled axes only
    snr = f.evidence["odd_harmonic_snr"]
    if style in ("flip", "crop", "shift"):
        assert all(snr[a] >= 8 for a in axes), snr
    assert all(snr[a] < 4 for a in "yx" if a not in axes and a in snr), snr


@pytest.mark.parametrize("period,name,seed,kind", [((24, 24), "gravel", 0, "noise"), ((15, 31), "grass", 1, "jpeg"),
                                                   ((43, 27), "coffee", 2, "blur")])
def test_same_period_is_not_doubling(period, name, seed, kind):
    case = tiling_case(period, name, seed, doubled=False, rerender_kind=kind)
    ids = [f.id for f in _run(case) if f.severity != "info"]
    assert ids == []


@pytest.mark.parametrize("period,name,seed", [((30, 30), "gravel", 0), ((17, 41), "grass", 1), ((55, 22), "coffee", 2)])
def test_lone_tiled_image_is_periodic_pattern(period, name, seed):
    case = periodic_image_case(period, name, seed)
    found = [f for f in _run(case) if f.id == "periodic_pattern"]
    assert len(found) == 1 and found[0].severity == "warning"
    assert found[0].location["period_px"] == list(period)
    assert found[0].evidence["seamless"] is True


@pytest.mark.parametrize("name", PHOTOS)
def test_untiled_photo_is_not_periodic_at_warning(name):
    found = image_findings(ImageInput(photo(name), name))
    assert not [f for f in found if f.id == "periodic_pattern" and f.severity != "info"]


def test_doubling_not_judged_without_tiled_reference():
    rng = np.random.default_rng(0)
    ref = photo("astronaut")[:256, :256]
    out = np.clip(ref + rng.normal(0, 0.01, ref.shape), 0, 1).astype(np.float32)
    assert not [f for f in image_findings(ImageInput(out, "o", ref, "r")) if f.id == "tiling_period_doubling"]


def test_the_repeated_error_of_a_doubled_tile_is_not_a_noise_patch_but_real_noise_on_it_is():
    """A doubled tile's error repeats with the doubled period; "noise patches" that recur a whole number of
    periods apart are that error (info, ``explained_by``), while a noise patch added to one spot stays a warning."""
    case = tiling_case((30, 30), "coffee", 1801, "yx", "flip")  # its error has repeating fine-scale patches
    found = _run(case)
    patches = [f for f in found if f.id == "hf_noise_patch"]
    assert patches and all(f.severity == "info" and f.evidence["explained_by"] == "tiling_period_doubling"
                           for f in patches), [(f.severity, f.location) for f in patches]
    assert any(f.id == "tiling_period_doubling" and f.severity == "warning" for f in found)
    noisy = case.image.copy()
    rng = np.random.default_rng(0)
    noisy[200:280, 100:190] = np.clip(noisy[200:280, 100:190] + rng.normal(0, 0.2, noisy[200:280, 100:190].shape),
                                      0, 1)
    found = image_findings(ImageInput(noisy, "out.png", case.reference, "ref.png"))
    real = [f for f in found if f.id == "hf_noise_patch" and f.severity == "warning"]
    assert len(real) == 1 and real[0].location["bbox"][0] <= 110 and real[0].location["bbox"][2] >= 180, \
        [(f.severity, f.location) for f in found if f.id == "hf_noise_patch"]
