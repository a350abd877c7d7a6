"""Brightness/contrast skew is judged over the set (``separated_subgroup``): a darkened or washed-out
subset of a few images is named file by file, while every scikit-image photo and texture as a clean set
raises nothing at all (no skew, no tiled-source note, no garbage), and a single naturally dark photo among
others is no skew."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks.scenarios.datasets import ALL_PHOTOS, DatasetCase, healthy_dataset, write_dataset_case
from diffdiag.checks.dataset import check_dataset
from diffdiag.model import Settings
from diffdiag.sources import load_run
from diffdiag.sources.spec import SourceSpec

SKEW = ("dataset_brightness_skew", "dataset_contrast_skew")


def _photo(name: str) -> np.ndarray:
    import skimage.data
    from skimage.util import img_as_ubyte

    a = getattr(skimage.data, name)()
    a = img_as_ubyte(a[0] if isinstance(a, tuple) else a)
    return np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3]


def _crop(a: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    side = int(min(h, w) * rng.uniform(0.5, 1.0))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return np.asarray(Image.fromarray(np.ascontiguousarray(a[y0:y0 + side, x0:x0 + side])).resize(
        (size, size), Image.BILINEAR))


def _findings(tmp_path, images: dict[str, np.ndarray]):
    folder, _ = write_dataset_case(DatasetCase("t", images), tmp_path)
    settings = Settings()
    return check_dataset(load_run(SourceSpec(dataset=folder), settings), settings).findings


@pytest.mark.parametrize("seed,sizes", [(0, (96, 128)), (1, (160, 256))])
def test_every_photo_and_texture_as_a_clean_set_raises_nothing(tmp_path, seed, sizes):
    rng = np.random.default_rng(seed)
    images = {f"{n}_{k}.{'png' if k % 2 else 'jpg'}": _crop(_photo(n), rng, s)
              for n in ALL_PHOTOS for k, s in enumerate(sizes)}
    findings = _findings(tmp_path, images)
    assert [(f.id, f.severity, f.message) for f in findings] == []  # not even a note (skew, tiling, garbage)


def _darken(a: np.ndarray, f: float) -> np.ndarray:
    return np.clip(a.astype(np.float32) * f, 0, 255).astype(np.uint8)


def _wash(a: np.ndarray, f: float) -> np.ndarray:
    a = a.astype(np.float32)
    return np.clip(a.mean() + (a - a.mean()) * f, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("which,seed", [("brightness", 11), ("contrast", 12)])
def test_a_moved_subgroup_is_named_at_set_level(tmp_path, which, seed):
    case = healthy_dataset(seed, 30)
    names = sorted(case.images)
    pick = sorted(np.random.default_rng(seed).choice(len(names), 4, replace=False).tolist())
    for i in pick:
        case.images[names[i]] = _darken(case.images[names[i]], 0.4) if which == "brightness" else \
            _wash(case.images[names[i]], 0.12)
    findings = _findings(tmp_path, case.images)
    skew = [f for f in findings if f.id in SKEW]
    assert [f.id for f in skew] == [f"dataset_{which}_skew"] and skew[0].severity == "warning"
    named, moved = skew[0].location["files"], {names[i] for i in pick}
    ev = skew[0].evidence
    assert moved <= set(named) and sorted(ev["per_file"]) == sorted(named)
    assert ev["direction"] == "below" and ev["gap"] >= ev["thresholds"]["min_gap"]
    # anything else named is a natural image that is itself as far out (a crop of a dark corner)
    extra = set(named) - moved
    assert len(extra) <= 1
    assert all(ev["per_file"][f]["feature"] <= ev["rest_median"] - ev["thresholds"]["min_effect"] for f in extra)
    assert ("darker" if which == "brightness" else "washed-out") in skew[0].message


def test_single_dark_images_are_not_a_skew(tmp_path):
    """One naturally dark photo (a night sky crop) and one image darkened to a third: not a subset."""
    case = healthy_dataset(13, 30)
    names = sorted(case.images)
    hubble = _photo("hubble_deep_field")
    case.images[names[3]] = _crop(hubble, np.random.default_rng(0), 160)
    case.images[names[7]] = _darken(case.images[names[7]], 0.33)
    findings = _findings(tmp_path, case.images)
    assert [f for f in findings if f.id in SKEW] == []
    assert [f for f in findings if f.severity != "info"] == []
