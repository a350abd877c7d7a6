"""Garbage images in a training set (``dataset_garbage_image``): pure noise, constant (all black) and
heavily clipped images are warnings naming the file; real scikit-image photos and textures raise nothing
at warning+ (as a clean set, and one by one at full resolution)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffdiag.analyzers.dataset import classify_garbage, garbage_stats, luminance, luminance_stats
from diffdiag.checks.dataset import check_dataset
from diffdiag.model import Settings
from diffdiag.sources import load_run
from diffdiag.sources.spec import SourceSpec

#: scikit-image photos and natural textures (no two-level graphics: those count as clipped)
PHOTOS = ["astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "coins", "moon",
          "text", "page", "cat", "clock", "hubble_deep_field", "immunohistochemistry", "retina"]
SIZE = 128


def _photo(name: str, size: int | None = SIZE) -> np.ndarray:
    import skimage.data

    a = np.asarray(getattr(skimage.data, name)())
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if size is not None:
        a = np.asarray(Image.fromarray(a).resize((size, size), Image.LANCZOS))
    return a


def _write(folder, images: dict[str, np.ndarray]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in images.items():
        Image.fromarray(a).save(folder / name)
    return folder


def _findings(folder):
    settings = Settings()
    run = load_run(SourceSpec(dataset=folder), settings)
    return check_dataset(run, settings).findings


def _clean() -> dict[str, np.ndarray]:
    return {f"{n}.png": _photo(n) for n in PHOTOS}


def test_clean_photo_set_raises_nothing(tmp_path):
    findings = _findings(_write(tmp_path / "clean", _clean()))
    assert [(f.id, f.severity, f.message) for f in findings] == []  # not even a note


def test_near_constant_and_jpeg_noise_are_named(tmp_path):
    """Garbage as it comes: a grey frame within +-1 level (JPEG-saved) and JPEG-compressed Gaussian noise."""
    rng = np.random.default_rng(8)
    folder = _write(tmp_path / "set", _clean())
    grey = (128 + rng.integers(-1, 2, (SIZE, SIZE, 1))).repeat(3, axis=2).astype(np.uint8)
    Image.fromarray(grey).save(folder / "zz_grey.jpg", quality=90)
    noise = np.clip(rng.normal(128, 60, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(noise).save(folder / "zz_noise.jpg", quality=75)
    findings = _findings(folder)
    assert sorted((f.location["file"], f.location["problem"]) for f in findings if f.severity != "info") == [
        ("zz_grey.jpg", "constant"), ("zz_noise.jpg", "noise")]


def test_noise_constant_and_clipped_images_are_named(tmp_path):
    rng = np.random.default_rng(3)
    cam = _photo("camera").astype(np.float64)
    ast = _photo("astronaut").astype(np.float64)
    images = {**_clean(),
              "zz_noise.png": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
              "zz_black.png": np.zeros((SIZE, SIZE, 3), np.uint8),
              "zz_clipped.png": ((cam - cam.mean()) * 8 + 128).clip(0, 255).round().astype(np.uint8),
              # a colour photo blown up per channel: saturated primaries, its luminance mostly mid-grey
              "zz_primaries.png": ((ast - ast.mean()) * 10 + 128).clip(0, 255).round().astype(np.uint8)}
    findings = _findings(_write(tmp_path / "set", images))
    garbage = {f.location["file"]: f for f in findings if f.id == "dataset_garbage_image"}
    assert {k: f.location["problem"] for k, f in garbage.items()} == {
        "zz_noise.png": "noise", "zz_black.png": "constant", "zz_clipped.png": "clipped",
        "zz_primaries.png": "clipped"}
    ev = garbage["zz_primaries.png"].evidence
    assert ev["clip_lo"] >= 0.1 and ev["clip_hi"] >= 0.1 and ev["clip_lo"] + ev["clip_hi"] >= 0.5
    assert all(f.severity == "warning" and f.location["file"] in f.message for f in garbage.values())
    # nothing else is loud: the garbage images are not also reported as a skewed subset
    assert [f.id for f in findings if f.severity != "info" and f.id != "dataset_garbage_image"] == []
    assert garbage["zz_black.png"].evidence["std"] == 0.0
    assert abs(garbage["zz_noise.png"].evidence["corr"]) < 0.05


@pytest.mark.parametrize("name", PHOTOS)
def test_full_resolution_photo_is_usable(name):
    lum = luminance(_photo(name, None))
    s, g = luminance_stats(lum), garbage_stats(lum)
    assert g["corr"] > 0.5
    assert classify_garbage(s["std"], g["clip_lo"], g["clip_hi"], g["corr"]) is None


def test_garbage_stats_known_values():
    a = np.zeros((10, 10))
    a[:, 5:] = 1.0  # half black, half white: two-level
    g = garbage_stats(a)
    assert g["clip_lo"] == 0.5 and g["clip_hi"] == 0.5
    assert classify_garbage(0.5, g["clip_lo"], g["clip_hi"], g["corr"]) == "clipped"
    assert classify_garbage(0.0, 1.0, 0.0, float("nan")) == "constant"
    assert classify_garbage(0.3, 0.0, 0.0, 0.01) == "noise"
    ramp = np.tile(np.linspace(0.1, 0.9, 64), (64, 1))
    assert garbage_stats(ramp)["corr"] > 0.9
    # clipping is counted per channel value: pure red | pure green has a mid-grey luminance (0.299 / 0.587)
    prim = np.zeros((8, 8, 3), np.float32)
    prim[:, :4, 0] = 1.0
    prim[:, 4:, 1] = 1.0
    lum = luminance(prim)
    assert garbage_stats(lum)["clip_lo"] == 0.0 and garbage_stats(lum)["clip_hi"] == 0.0
    g = garbage_stats(lum, prim)
    assert g["clip_lo"] == pytest.approx(2 / 3) and g["clip_hi"] == pytest.approx(1 / 3)
    assert classify_garbage(float(lum.std()), g["clip_lo"], g["clip_hi"], g["corr"]) == "clipped"
