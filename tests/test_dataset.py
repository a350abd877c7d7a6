"""Dataset health on labelled folders built from real photos (scikit-image):
tiled sources, brightness/contrast skew, streaming with worker processes,
bad files, and the CLI end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.scenarios.datasets import (ALL_PHOTOS, darkened_dataset, healthy_dataset, low_contrast_dataset,
                                           mask_problem_dataset, photo_crop, tiled_dataset, tiled_texture,
                                           write_dataset_case)
from diffdiag.analyzers.dataset import classify_tiling, separated_subgroup, tiling_features
from diffdiag.checks.dataset import check_dataset
from diffdiag.model import RunData, Settings
from diffdiag.sources import load_run
from diffdiag.sources.dataset import analyze_image, load_dataset, scan_dataset
from diffdiag.sources.spec import SourceSpec


def _check(tmp_path, case, **kw):
    """The dataset read by the sources, then the (pure) check: (every note, findings)."""
    images, masks = write_dataset_case(case, tmp_path)
    settings = Settings(**kw)
    run = load_run(SourceSpec(dataset=images, masks=masks), settings)
    res = check_dataset(run, settings)
    assert res.data is run.dataset
    return [*run.warnings, *res.notes], res.findings


def _loud(findings):
    return [f for f in findings if f.severity != "info"]


@pytest.mark.parametrize("seed,periods", [(0, None), (4, [(24, 24), (37, 53)]), (9, [(61, 29), (45, 45)])])
def test_tiled_sources_exact_files_and_periods(tmp_path, seed, periods):
    case = tiled_dataset(seed, n=12, n_tiled=2 if periods else 3, periods=periods)
    _, findings = _check(tmp_path, case)
    tiled = [f for f in findings if f.id == "dataset_tiled_source" and f.severity == "warning"]
    got = sorted((f.location["file"], tuple(f.location["period_px"])) for f in tiled)
    want = sorted((t["location"]["file"], tuple(t["location"]["period_px"])) for t in case.truth)
    assert got == want
    assert all(f.evidence["seamless"] for f in tiled)




@pytest.mark.parametrize("name", ALL_PHOTOS)
def test_natural_photos_and_textures_are_not_tiled_sources(name):
    """Every scikit-image photo and texture, whole and as crops rescaled to 96 / 160 px: no tiling
    class at all (brick courses, rows of coins and text lines are natural periodic subjects)."""
    import skimage.data
    from skimage.util import img_as_float32

    a = getattr(skimage.data, name)()
    a = img_as_float32(a[0] if isinstance(a, tuple) else a)
    lum = a if a.ndim == 2 else a[..., :3] @ np.float32([0.299, 0.587, 0.114])
    rng = np.random.default_rng(len(name))
    views = [lum]
    for size in (96, 160):
        h, w = lum.shape
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        img = Image.fromarray(lum[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.BILINEAR)
        views.append(np.asarray(img, np.float32))
    for v in views:
        feats = tiling_features(v)
        assert classify_tiling(feats) == (None, 0.0), (v.shape, feats)


def test_tiling_survives_jpeg(tmp_path):
    rng = np.random.default_rng(5)
    img = tiled_texture(rng, 256, (40, 56))
    p = tmp_path / "t.jpg"
    Image.fromarray(img).save(p, quality=90)
    rec = analyze_image(str(p), None, None)
    assert rec["tiling"]["period"] == [40, 56]
    assert classify_tiling(rec["tiling"])[0] == "seamless"


@pytest.mark.parametrize("seed", [0, 3, 6])
def test_darkened_subset_found_exactly(tmp_path, seed):
    case = darkened_dataset(seed, factor=0.3)
    _, findings = _check(tmp_path, case)
    skew = [f for f in findings if f.id == "dataset_brightness_skew"]
    assert len(skew) == 1 and skew[0].severity == "warning"
    assert sorted(skew[0].location["files"]) == case.truth[0]["location"]["files"]
    assert "darker" in skew[0].message
    assert not [f for f in findings if f.id == "dataset_contrast_skew" and f.severity != "info"]


@pytest.mark.parametrize("seed", [1, 3, 7])
def test_washed_out_subset_found_exactly(tmp_path, seed):
    case = low_contrast_dataset(seed, factor=0.15)
    _, findings = _check(tmp_path, case)
    skew = [f for f in findings if f.id == "dataset_contrast_skew"]
    assert len(skew) == 1 and skew[0].severity == "warning"
    assert sorted(skew[0].location["files"]) == case.truth[0]["location"]["files"]
    assert not [f for f in findings if f.id == "dataset_brightness_skew" and f.severity != "info"]


@pytest.mark.parametrize("seed", [2, 5, 10, 21])
def test_healthy_photo_sets_raise_no_warning(tmp_path, seed):
    notes, findings = _check(tmp_path, healthy_dataset(seed, n=30))
    assert _loud(findings) == []
    assert notes == []


def test_separated_subgroup_known_values():
    rest = np.linspace(-0.3, 0.0, 26)                      # a continuous spread, robust sd ~0.11
    grp = np.array([-1.0, -0.95, -0.9, -0.85])             # moved together: an empty interval of 0.55
    v = np.r_[rest[:10], grp, rest[10:]]
    res = separated_subgroup(v, min_gap=0.2, min_separation=1.5, min_effect=0.47)
    assert res.index.tolist() == [10, 11, 12, 13] and res.direction == -1
    assert res.gap == pytest.approx(0.55) and res.group_median == pytest.approx(-0.925)
    assert res.rest_median == pytest.approx(np.median(rest))
    assert separated_subgroup(-v, min_gap=0.2, min_separation=1.5, min_effect=0.47).direction == 1
    # one odd value is not a group; a continuous tail has no gap; too few values are not judged
    odd = np.r_[rest, -1.5]
    assert separated_subgroup(odd, min_gap=0.2, min_separation=1.5, min_effect=0.47).index.size == 0
    tail = np.r_[rest, np.linspace(-0.9, -0.35, 6)]
    assert separated_subgroup(tail, min_gap=0.2, min_separation=1.5, min_effect=0.47).index.size == 0
    assert separated_subgroup(v[6:13], min_gap=0.2, min_separation=1.5, min_effect=0.47).index.size == 0
    # the minority only: 40 % at most
    half = np.r_[np.zeros(10), np.ones(10)]
    assert separated_subgroup(half, min_gap=0.2, min_separation=1.5, min_effect=0.47).index.size == 0


def test_worker_pool_matches_in_process(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "ds"
    folder.mkdir()
    for i in range(60):
        img = tiled_texture(rng, 96, (23, 31)) if i % 20 == 0 else photo_crop(rng, 96)
        Image.fromarray(img).save(folder / f"im{i:03d}.png")
    seen = []
    pooled = scan_dataset(folder, workers=2, progress=False, max_in_flight=2, on_chunk=seen.append)
    local = scan_dataset(folder, workers=1, progress=False)
    assert pooled.files == local.files and len(local.files) == 60
    np.testing.assert_array_equal(pooled.mean, local.mean)
    np.testing.assert_array_equal(pooled.p99, local.p99)
    assert sorted(pooled.tiling) == sorted(local.tiling)
    assert {pooled.files[i] for i, f in pooled.tiling.items() if classify_tiling(f)[0] == "seamless"} == {
        "im000.png", "im020.png", "im040.png"}
    assert sum(seen) == 60


def test_bad_images_are_skipped_with_a_note(tmp_path, monkeypatch):
    case = healthy_dataset(1, n=10, size=96)
    images, _ = write_dataset_case(case, tmp_path)
    good = sorted(images.rglob("*.png"))[0].read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    (images / "not_an_image.jpg").write_bytes(b"hello")
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 65535).astype(np.uint16)).save(images / "deep.png")
    rgba = np.dstack([photo_crop(np.random.default_rng(1), 64), np.full((64, 64), 128, np.uint8)])
    Image.fromarray(rgba).save(images / "alpha.png")
    Image.fromarray(photo_crop(np.random.default_rng(2), 300)).save(images / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)  # 300x300 = 90k > 2x limit -> refused
    scan = load_dataset(images, progress=False)
    res = check_dataset(RunData(dataset_dir=images, dataset=scan), Settings())
    findings = res.findings
    assert "deep.png" in scan.files and "alpha.png" in scan.files
    assert len(scan.files) == 12
    from diffdiag.sources import dataset_errors

    notes = "\n".join(dataset_errors(scan))  # one input-error line per unreadable file (exit 2 in the CLI)
    assert "truncated.png: image data is truncated" in notes
    assert "not_an_image.jpg" in notes
    assert "huge.png" in notes and "decompression bomb" in notes
    assert 0.3 < scan.mean[scan.files.index("deep.png")] < 0.7  # 16-bit scaled to [0, 1]
    # deep.png is uniform noise: a garbage image, the only loud finding
    assert [(f.id, f.location["file"], f.location["problem"]) for f in _loud(findings)] == [
        ("dataset_garbage_image", "deep.png", "noise")]


def test_cli_dataset_and_masks_end_to_end(run_cli, tmp_path):
    case = mask_problem_dataset(seed=3, problem="size_mismatch", n=8, n_bad=1, size=128)
    rng = np.random.default_rng(3)
    case.images["tiles/wall.png"] = tiled_texture(rng, 128, (29, 29))
    images, masks = write_dataset_case(case, tmp_path / "data")
    (images / "broken.webp").write_bytes(b"RIFF....WEBPVP8 ")
    code, out, err, diag = run_cli("analyze", "--dataset", str(images), "--masks", str(masks),
                                   "--fail-on", "warning")
    # the unreadable image is a bad file: one line naming it, the rest analysed, exit 2 (before --fail-on)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "broken.webp: " in err, err
    got = sorted((f["id"], f["location"].get("file"), f["location"].get("problem"))
                 for f in diag["findings"] if f["severity"] != "info")
    assert got == sorted([("dataset_invalid_mask", case.truth[0]["location"]["file"], "size_mismatch"),
                          ("dataset_tiled_source", "tiles/wall.png", None)])
    tiled = next(f for f in diag["findings"] if f["id"] == "dataset_tiled_source")
    assert tiled["location"]["period_px"] == [29, 29]
    assert "broken.webp" in out
    assert diag["inputs"]["dataset"] == str(images) and diag["inputs"]["dataset_images"] == 9
    assert "Traceback" not in err


def test_cli_dataset_input_errors(run_cli, tmp_path):
    code, out, err, diag = run_cli("analyze", "--dataset", str(tmp_path / "nope"))
    assert code == 2 and "dataset directory does not exist" in err
    (tmp_path / "empty").mkdir()
    code, out, err, diag = run_cli("analyze", "--masks", str(tmp_path), "--latents", str(tmp_path / "x"))
    assert code == 2
    code, out, err, diag = run_cli("analyze", "--dataset", str(tmp_path / "empty"))
    assert code == 2 and "no images" in err and len(err.strip().splitlines()) == 1  # one line; a report is written
    assert diag is not None


@pytest.mark.parametrize("period", [14, 24, 32])
def test_striped_overlay_is_reported_as_info_stripes(period):
    """A square-wave stripe overlay (augmentation pattern) on a photo: not a tile, but worth a note."""
    rng = np.random.default_rng(period)
    img = photo_crop(rng, 256).mean(axis=-1) / 255
    x = np.arange(256)
    a = np.clip(img + np.where((x % period) < period / 2, 0.12, -0.12)[None, :], 0, 1).astype(np.float32)
    feats = tiling_features(a)
    assert feats["period"] == [None, period]
    assert feats["consistency"][0] is None and feats["consistency"][1] > 0.88  # the same in every strip
    assert classify_tiling(feats)[0] == "periodic"
