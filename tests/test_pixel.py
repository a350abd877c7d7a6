"""Pixel space: noisy patches (bbox IoU >= 0.3), crop offsets (±1 px, sign as in docs/CONTRACT.md §3),
degenerate samples, heatmaps and anomaly boxes; clean pairs of real photos raise nothing at warning or above."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.scenarios.images import (CLEAN_FORBIDDEN, CLEAN_KINDS, PHOTOS, bbox_iou, clean_pairs, degenerate_case,
                                         hf_patch_case, photo, shift_case)
from diffdiag.analyzers import pixel
from diffdiag.checks.images import image_findings
from diffdiag.model import ImageInput


def _pair(case):
    return image_findings(ImageInput(case.image, "o.png", case.reference, "r.png"))


@pytest.mark.parametrize("name,seed", [("coffee", 0), ("camera", 1), ("astronaut", 2), ("brick", 3), ("rocket", 4),
                                       ("chelsea", 5), ("moon", 6)])
def test_hf_noise_patch_box(name, seed):
    case = hf_patch_case(name, seed)
    found = [f for f in _pair(case) if f.id == "hf_noise_patch" and f.severity == "warning"]
    assert found, case.meta
    # the strongest (largest) patch is the planted one
    assert bbox_iou(found[0].location["bbox"], case.truth[0]["bbox"]) >= 0.3
    assert all(f.location["image"] == "o.png" for f in found)


@pytest.mark.parametrize("shift,name,seed", [((1, 0), "astronaut", 0), ((0, 1), "camera", 1), ((-1, 0), "rocket", 2),
                                             ((0, -1), "coffee", 3), ((1, -1), "brick", 4), ((-1, 1), "chelsea", 5),
                                             ((2, 3), "astronaut", 6)])
def test_crop_offset_sign_convention(shift, name, seed):
    case = shift_case(name, shift, seed, size=(256, 256) if name == "chelsea" else (320, 352))
    # the scenario itself obeys docs/CONTRACT.md §3: output(y, x) = reference(y - dy, x - dx) (before re-rendering)
    found = [f for f in _pair(case) if f.id == "crop_offset"]
    assert len(found) == 1
    assert found[0].location["shift_px"] == list(shift)
    assert found[0].location["reference"] == "r.png"
    assert not [f for f in _pair(case) if f.id == "stripes" and f.severity != "info"]


def test_shift_convention_on_rolled_array():
    ref = photo("camera", gray=True)[100:356, 100:356]
    out = np.roll(ref, (1, -1), axis=(0, 1))  # out(y, x) = ref(y - 1, x + 1)
    off = pixel.crop_offset(out, ref)
    assert [round(v) for v in off.shift_px] == [1, -1]
    assert off.improvement > 0.5


@pytest.mark.parametrize("problem", ["black", "white", "uniform", "nonfinite"])
@pytest.mark.parametrize("with_reference", [False, True])
def test_degenerate(problem, with_reference):
    case = degenerate_case(problem, seed=3, with_reference=with_reference)
    found = image_findings(ImageInput(case.image, "s.png", case.reference, "r.png" if with_reference else None))
    assert [(f.id, f.location["problem"]) for f in found] == [("image_degenerate", problem)]
    assert found[0].severity == ("critical" if problem in ("black", "nonfinite") else "warning")


def test_dark_photo_is_not_degenerate():
    dark = photo("moon") * 0.25  # a dim but real picture
    assert pixel.degenerate_problem(dark)[0] is None
    assert pixel.degenerate_problem(photo("page"))[0] is None


def test_clean_pairs_of_real_photos_raise_nothing():
    """>= 8 distinct real photos against realistic re-renderings (JPEG, noise, blur, combos, 8-bit)."""
    cases = clean_pairs(12, seed=1) + clean_pairs(12, seed=4)
    assert len({c.meta["photo"] for c in cases}) >= 8
    assert {c.meta["kind"] for c in cases} == set(CLEAN_KINDS)
    for case in cases:
        bad = [(f.id, f.location) for f in _pair(case) if f.severity != "info" and f.id in CLEAN_FORBIDDEN]
        assert bad == [], case.name


def test_heatmap_scale_and_anomaly_boxes():
    case = hf_patch_case("coffee", 0, bbox=[100, 120, 180, 200], sigma=0.1)
    h1 = pixel.heatmap(case.image, case.reference, scale=1.0)
    h4 = pixel.heatmap(case.image, case.reference, scale=4.0)
    assert h1.shape == case.image.shape[:2] and h4.max() <= 1.0
    e = pixel.error_map(case.image, case.reference)
    assert np.allclose(h4, np.clip(4 * e, 0, 1))
    boxes = pixel.anomaly_boxes(e)
    assert boxes and max(bbox_iou(b, [100, 120, 180, 200]) for b in boxes) >= 0.3
    assert pixel.anomaly_boxes(np.zeros((64, 64), np.float32)) == []


@pytest.mark.parametrize("name", PHOTOS[:6])
def test_lone_photos_no_warnings(name):
    found = image_findings(ImageInput(photo(name), name))
    assert [f.id for f in found if f.severity != "info"] == []
