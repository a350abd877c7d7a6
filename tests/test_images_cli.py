"""``diffdiag analyze --images`` end to end with real files: formats (8/16-bit, RGBA, float TIFF),
pair size policy, bad input (unreadable, truncated, decompression bomb) — one clear line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.scenarios.images import bbox_iou, degenerate_case, photo, stripes_case, tiling_case
from diffdiag.checks.images import check_images
from diffdiag.model import ImageInput, RunData, Settings
from diffdiag.sources.images import load_image_input, read_image


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)


def _save(a: np.ndarray, path: Path, bits: int = 8) -> Path:
    if bits == 16:
        Image.fromarray(np.clip(np.round(a * 65535), 0, 65535).astype(np.uint16)).save(path)
    else:
        Image.fromarray(_u8(a)).save(path)
    return path


@pytest.fixture(scope="module")
def stripe_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stripes")
    case = stripes_case("horizontal", 9, "coffee", seed=11, amplitude=0.06, rerender_kind="noise")
    return _save(case.reference, d / "ref.png"), _save(case.image, d / "out.png"), case


def test_pair_with_stripes_end_to_end(run_cli, stripe_files, tmp_path):
    ref, out, case = stripe_files
    code, stdout, err, diag = run_cli("analyze", "--images", str(ref), str(out), "--fail-on", "warning",
                                      "--format", "json")
    assert code == 1, err
    st = [f for f in diag["findings"] if f["id"] == "stripes" and f["severity"] == "warning"]
    assert len(st) == 1
    loc = st[0]["location"]
    assert loc["image"] == str(out) and loc["axis"] == "horizontal" and loc["period_px"] == 9
    assert bbox_iou(loc["bbox"], case.truth[0]["bbox"]) >= 0.5
    assert diag["inputs"]["images"] == [[str(ref), str(out)]]
    assert (tmp_path / "report" / "figures" / "image_00.png").exists()
    assert any(c["symptom"] == "stripes" for c in diag["causes"])


def test_lone_image_and_max_images(run_cli, stripe_files):
    ref, out, _ = stripe_files
    code, stdout, err, diag = run_cli("analyze", "--images", str(ref), "--images", str(ref), str(out),
                                      "--max-images", "1")
    assert code == 0, err
    assert not [f for f in diag["findings"] if f["severity"] != "info"]  # only the lone photo was analysed
    assert "1 more skipped (--max-images 1)" in stdout


def test_16bit_grey_pair_reads_full_precision_and_finds_doubling(run_cli, tmp_path):
    case = tiling_case((23, 31), "gravel", seed=4, axes="x", style="flip")
    assert case.reference.ndim == 2  # gravel is a grey texture
    ref = _save(case.reference, tmp_path / "ref16.png", bits=16)
    out = _save(case.image, tmp_path / "out16.png", bits=16)
    a, notes = read_image(ref)
    assert a.dtype == np.float32 and a.ndim == 2 and "16-bit grey" in notes
    assert np.abs(a - case.reference).max() < 1e-4  # finer than 8 bits
    code, _, err, diag = run_cli("analyze", "--images", str(ref), str(out), "--format", "json")
    assert code == 0, err
    f = [f for f in diag["findings"] if f["id"] == "tiling_period_doubling"]
    assert len(f) == 1
    assert f[0]["location"]["period_px"] == [23, 31] and f[0]["location"]["doubled_period_px"] == [23, 62]


def test_rgba_alpha_policy(tmp_path):
    rgb = _u8(photo("astronaut")[:64, :64])
    opaque = np.dstack([rgb, np.full((64, 64), 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    a, notes = read_image(tmp_path / "opaque.png")
    assert a.shape == (64, 64, 3) and np.allclose(a, rgb / 255.0) and "alpha channel dropped" in notes[0]
    half = opaque.copy()
    half[..., 3] = 0
    Image.fromarray(half, "RGBA").save(tmp_path / "clear.png")
    b, notes = read_image(tmp_path / "clear.png")
    assert np.allclose(b, 1.0) and "composited over white" in notes[0]


def test_resize_policy_same_aspect_noted_in_findings(run_cli, tmp_path):
    case = stripes_case("vertical", 8, "camera", seed=2, amplitude=0.07, bbox=[40, 60, 400, 460],
                        rerender_kind="noise")
    ref = _save(case.reference, tmp_path / "ref.png")
    big = np.asarray(Image.fromarray(_u8(case.image)).resize((1024, 1024), Image.NEAREST))
    Image.fromarray(big).save(tmp_path / "out_big.png")
    item = load_image_input(ref, tmp_path / "out_big.png")
    assert item.image.shape == item.reference.shape == (512, 512)
    assert any("resized from 1024x1024 to 512x512" in n for n in item.notes)
    code, _, err, diag = run_cli("analyze", "--images", str(ref), str(tmp_path / "out_big.png"), "--format", "json")
    st = [f for f in diag["findings"] if f["id"] == "stripes" and f["severity"] == "warning"]
    assert st and st[0]["location"]["axis"] == "vertical" and st[0]["location"]["period_px"] == 8
    assert any("resized" in n for n in st[0]["evidence"]["notes"])


def test_nonfinite_float_tiff_is_degenerate(run_cli, tmp_path):
    case = degenerate_case("nonfinite", seed=1)
    g = case.image.mean(axis=2).astype(np.float32)
    Image.fromarray(g, "F").save(tmp_path / "nan.tif")
    code, _, err, diag = run_cli("analyze", "--images", str(tmp_path / "nan.tif"), "--fail-on", "critical",
                                 "--format", "json")
    assert code == 1, err
    assert [(f["id"], f["location"]["problem"], f["severity"]) for f in diag["findings"]] == \
        [("image_degenerate", "nonfinite", "critical")]


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = _save(photo("coffee")[:128, :128], tmp_path / "good.png")
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notimage.png").write_text("this is not a picture\n")
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 MP, a few kB on disk
    _save(photo("coffee")[:100, :160], tmp_path / "wide.png")
    return {"good": good, "truncated": tmp_path / "truncated.png", "notimage": tmp_path / "notimage.png",
            "bomb": tmp_path / "bomb.png", "wide": tmp_path / "wide.png"}


@pytest.mark.parametrize("which,words", [("truncated", "truncated or corrupt"), ("notimage", "not a readable image"),
                                         ("bomb", "megapixel limit"), ("wide", "aspect ratios")])
def test_bad_input_one_clear_line(run_cli, tmp_path, which, words):
    files = _bad_files(tmp_path)
    args = ["--images", str(files["good"]), str(files["wide"])] if which == "wide" else ["--images", str(files[which])]
    code, out, err, diag = run_cli("analyze", *args)
    assert code == 2 and diag is None
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert words in err and (str(files[which]) in err)


def test_bad_input_subprocess_no_traceback(tmp_path):
    """As a user runs it (no DIFFDIAG_STRICT): exit 2, one line naming the file."""
    files = _bad_files(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DIFFDIAG_STRICT"}
    p = subprocess.run([sys.executable, "-m", "diffdiag", "analyze", "--images", str(files["truncated"]),
                        "--report", str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr and "truncated.png" in p.stderr


def test_one_bad_image_does_not_stop_the_others():
    good = stripes_case("vertical", 6, "rocket", seed=1)
    weird = np.random.default_rng(0).random((2, 3, 4, 5)).astype(np.float32)  # 4-D: not an image
    run = RunData(images=[ImageInput(weird, "weird.npy"),
                          ImageInput(good.image, "o.png", good.reference, "r.png")])
    res = check_images(run, Settings())
    assert [f.id for f in res.findings if f.severity == "warning"] == ["stripes"]
    assert any("weird.npy" in w for w in res.notes) and run.warnings == []


def test_fft_threshold_flag_sets_sensitivity(run_cli, tmp_path):
    from benchmarks.scenarios.images import periodic_image_case

    case = periodic_image_case((27, 35), "gravel", seed=9, size=(300, 320))
    img = _save(case.image, tmp_path / "tiled.png")
    code, _, err, diag = run_cli("analyze", "--images", str(img), "--format", "json")
    per = [f for f in diag["findings"] if f["id"] == "periodic_pattern"]
    assert len(per) == 1 and per[0]["location"]["period_px"] == [27, 35] and per[0]["severity"] == "warning"
    assert diag["settings"]["fft_threshold"] is None
    code, _, err, diag = run_cli("analyze", "--images", str(img), "--fft-threshold", "1e9", "--format", "json",
                                 report=tmp_path / "strict")
    assert diag["settings"]["fft_threshold"] == 1e9
    assert not [f for f in diag["findings"] if f["id"] == "periodic_pattern"]
