"""Mask validity and alignment on composites of real photos (an object from one
scikit-image photo pasted into another, the mask being the object's shape)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.scenarios.datasets import (MASK_PROBLEMS, _composite, corrupt_mask, mask_problem_dataset,
                                           write_dataset_case)
from diffdiag.analyzers.masks import check_mask, mask_alignment, mask_levels
from diffdiag.model import RunData, Settings


@pytest.mark.parametrize("seed", range(6))
def test_valid_masks_have_no_problem(seed):
    rng = np.random.default_rng(seed)
    img, m = _composite(rng, int(rng.integers(120, 260)))
    problem, ev = check_mask(m, img.shape[:2], img.astype(np.float32))
    assert problem is None, ev
    assert 0.0 < ev["coverage"] < 1.0


def test_valid_mask_encodings():
    rng = np.random.default_rng(3)
    img, m = _composite(rng, 128)
    for variant in (m // 255, np.stack([m] * 3, -1), (m > 0), m.astype(np.uint16) * 257,
                    np.dstack([m, m, m, np.full_like(m, 255)])):
        assert check_mask(variant, img.shape[:2])[0] is None


@pytest.mark.parametrize("problem", ["non_binary", "empty", "full", "size_mismatch"])
@pytest.mark.parametrize("seed", [0, 7])
def test_each_structural_problem(problem, seed):
    rng = np.random.default_rng(seed)
    img, m = _composite(rng, 144)
    bad = corrupt_mask(rng, m, problem)
    assert check_mask(bad, img.shape[:2], img.astype(np.float32))[0] == problem


def test_levels_details():
    assert mask_levels(np.array([[0, 128], [255, 0]], np.uint8))[1] == "non_binary"
    assert mask_levels(np.array([[10, 255], [255, 10]], np.uint8))[1] == "non_binary"  # two levels, no 0
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 1] = [255, 0, 0]
    assert mask_levels(rgb)[1] == "non_binary"  # unequal channels
    assert mask_levels(np.zeros((4, 4), np.uint8))[1] == "empty"
    assert mask_levels(np.ones((4, 4), np.uint8))[1] == "full"


@pytest.mark.parametrize("seed,dy,dx", [(1, 10, 0), (6, 0, -12), (4, -8, 9), (5, 16, -16)])
def test_shifted_mask_is_misaligned_and_the_shift_is_recovered(seed, dy, dx):
    rng = np.random.default_rng(seed)
    img, m = _composite(rng, 160)
    shifted = np.roll(m, (dy, dx), axis=(0, 1))
    problem, ev = check_mask(shifted, img.shape[:2], img.astype(np.float32))
    assert problem == "misaligned"
    # shifting the mask by best_shift puts it back on the image's edges
    assert ev["alignment"]["best_shift"] == pytest.approx([-dy, -dx], abs=1)


@pytest.mark.parametrize("seed", [3, 8])
def test_flipped_mask_is_misaligned(seed):
    rng = np.random.default_rng(seed)
    img, m = _composite(rng, 180)
    problem, ev = check_mask(np.ascontiguousarray(m[:, ::-1]), img.shape[:2], img.astype(np.float32))
    assert problem == "misaligned"
    assert ev["alignment"]["flip"] == "lr" or ev["alignment"]["best_shift"] != [0, 0]


def test_boundary_on_no_edge_is_not_called_misaligned():
    """An inpainting box drawn on a plain gradient has no image edge to align with."""
    h = w = 128
    img = np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))
    box = np.zeros((h, w), bool)
    box[30:70, 40:90] = True
    al = mask_alignment(img, box)
    assert not al["misaligned"]


@pytest.mark.parametrize("problem", MASK_PROBLEMS)
def test_dataset_check_reports_each_problem_exactly(tmp_path, problem):
    from diffdiag.checks.dataset import check_dataset
    from diffdiag.sources.dataset import load_dataset

    case = mask_problem_dataset(seed=len(problem), problem=problem, n=10, n_bad=2, size=128)
    images, masks = write_dataset_case(case, tmp_path)
    run = RunData(dataset_dir=images, masks_dir=masks, dataset=load_dataset(images, masks, progress=False))
    found = [f for f in check_dataset(run, Settings()).findings if f.id == "dataset_invalid_mask"]
    got = sorted((f.location["file"], f.location["problem"]) for f in found)
    want = sorted((t["location"]["file"], t["location"]["problem"]) for t in case.truth)
    assert got == want
    assert all(f.severity == "warning" for f in found)


def test_missing_masks_are_noted(tmp_path):
    from diffdiag.checks.dataset import check_dataset
    from diffdiag.sources.dataset import load_dataset

    case = mask_problem_dataset(seed=2, problem="empty", n=8, n_bad=1, size=96)
    images, masks = write_dataset_case(case, tmp_path)
    victim = sorted(Path(masks).iterdir())[0]
    victim.unlink()
    run = RunData(dataset_dir=images, masks_dir=masks, dataset=load_dataset(images, masks, progress=False))
    assert any("1 of 8 images have no mask" in w for w in check_dataset(run, Settings()).notes)


@pytest.mark.parametrize("name", ["camera", "coffee", "brick", "astronaut"])
def test_threshold_masks_of_blurred_images_are_not_misaligned(name):
    """Masks traced on a blurred copy (brighter half), as tiny training sets make them, follow the
    image only roughly: that is tolerance, not a misalignment."""
    import skimage.data
    from scipy.ndimage import gaussian_filter
    from skimage.transform import resize

    img = np.asarray(getattr(skimage.data, name)(), np.float32) / 255
    img = img.mean(axis=-1) if img.ndim == 3 else img
    rng = np.random.default_rng(len(name))
    bad = 0
    for _ in range(12):
        s = int(rng.integers(64, min(img.shape)))
        y, x = int(rng.integers(0, img.shape[0] - s + 1)), int(rng.integers(0, img.shape[1] - s + 1))
        crop = resize(img[y:y + s, x:x + s], (64, 64), anti_aliasing=True).astype(np.float32)
        sm = gaussian_filter(crop, 3.0)
        bad += check_mask((sm > np.median(sm)).astype(np.uint8) * 255, (64, 64), crop)[0] is not None
    assert bad <= 1
