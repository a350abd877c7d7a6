"""Stripes: periodic and aperiodic banding over part of the frame, on both axes; none on clean pairs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.scenarios.images import CLEAN_KINDS, PHOTOS, bbox_iou, clean_pair, photo, stripes_case
from diffdiag.analyzers import stripes
from diffdiag.checks.images import _stripe_finding, image_findings
from diffdiag.model import ImageInput

CASES = [("vertical", 6, "camera", 0, "square"), ("horizontal", 11, "rocket", 1, "sine"),
         ("vertical", 17, "brick", 2, "saw"), ("horizontal", 4, "astronaut", 3, "square"),
         ("vertical", 25, "coffee", 4, "sine"), ("horizontal", 9, "chelsea", 5, "saw"),
         ("vertical", None, "rocket", 6, "bands"), ("horizontal", None, "camera", 7, "walk"),
         ("vertical", None, "grass", 8, "walk"), ("horizontal", None, "coins", 9, "bands")]


@pytest.mark.parametrize("axis,period,name,seed,profile", CASES)
def test_stripes_found_with_axis_period_bbox(axis, period, name, seed, profile):
    rng = np.random.default_rng(seed)
    case = stripes_case(axis, period, name, seed, amplitude=float(rng.uniform(0.035, 0.07)),
                        rerender_kind=CLEAN_KINDS[seed % len(CLEAN_KINDS)], profile=profile)
    found = [f for f in image_findings(ImageInput(case.image, "o.png", case.reference, "r.png"))
             if f.id == "stripes" and f.severity == "warning"]
    assert len(found) == 1, [(f.location, f.severity) for f in found]
    loc = found[0].location
    assert loc["axis"] == axis
    assert loc["period_px"] == period
    assert bbox_iou(loc["bbox"], case.truth[0]["bbox"]) >= 0.5, (loc["bbox"], case.truth[0]["bbox"])


@pytest.mark.parametrize("name", ["camera", "rocket", "brick", "astronaut", "coffee", "chelsea", "grass", "gravel",
                                  "coins", "moon", "page", "text"])
def test_clean_pairs_with_vertical_structure_have_no_stripes(name):
    for i, kind in enumerate(CLEAN_KINDS):
        case = clean_pair(name, kind, seed=17 * i + len(name))
        item = ImageInput(case.image, "o", case.reference, "r")
        found = [_stripe_finding(item, s, {}, pair=True) for s in stripes.pair_stripes(case.image, case.reference)]
        assert not [f for f in found if f.severity != "info"], (kind, found)


def test_lone_image_periodic_banding_and_photo_without():
    rng = np.random.default_rng(4)
    img = np.clip(photo("camera", gray=True) + 0.08 * np.sign(np.sin(2 * np.pi * np.arange(512) / 8))[None, :], 0, 1)
    found = stripes.image_stripes(img.astype(np.float32))
    assert found and found[0].axis == "vertical" and found[0].period_px == 8
    for name in PHOTOS:
        assert stripes.image_stripes(photo(name)) == []
    del rng


def test_latent_channel_stripes_generic_api():
    """find_stripes works on a small latent-like map (64x64 cells) with its own units."""
    rng = np.random.default_rng(1)
    lat = rng.normal(0, 1, (64, 64)).astype(np.float32)
    lat[:, 10:50] += 1.5 * np.sign(np.sin(2 * np.pi * np.arange(40) / 6))[None, :]
    s = stripes.find_stripes(lat)
    assert s and s[0].axis == "vertical" and s[0].period_px == 6
    assert bbox_iou(s[0].bbox, [10, 0, 50, 64]) >= 0.6
    assert stripes.find_stripes(rng.normal(0, 1, (64, 64)).astype(np.float32)) == []
