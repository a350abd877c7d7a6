"""Hostile and damaged images, latents, datasets, masks and checkpoints through the real CLI (issue 12).

One rule for every source kind: each bad file is exactly one stderr line naming it and the problem
(at most 300 characters, no traceback, no "unexpected ... please report it"), the other inputs are
analysed (their findings, known by construction, are asserted), the report is written, exit 2; no
file outside the report folder changes; nothing a crafted file holds runs; bounded run time. Many bad
files go into one run (one CLI call per source kind keeps the suite fast); files that could block a
reader (FIFOs, devices) run in a subprocess with a timeout.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from . import craft as C
from .conftest import error_lines, no_error, one_error_line
from .craft import crafts

PWNED = Path("/tmp/diffdiag-hostile-pwned")  # what the crafted pickles would write if they ran


@pytest.fixture(autouse=True)
def _nothing_ran():
    PWNED.unlink(missing_ok=True)
    yield
    assert not PWNED.exists(), "a crafted pickle ran"


def _ids(o, fid: str) -> list[dict]:
    return [f for f in (o.diag or {}).get("findings", []) if f["id"] == fid]


# ============================================================================ images

@crafts("images", "bad-file", "trunc", "empty", "text", "fake_jpeg", "broken_link", "folder")
@crafts("images", "integrity", "png_bad_crc")
@crafts("images", "pixel-limit", "bomb_144mp", "dims_2**31")
def test_images_bad_files_each_one_line(analyze, tmp_path):
    """Nine bad --images beside a black image: truncated, empty, text, a 144 MP and a 2**31-wide PNG
    header (refused from the header, nothing decoded), a flipped byte in the image data, a JPEG of
    random bytes, a link to nowhere, a folder. One line each; the black image is still reported."""
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    good = (rng.random((48, 48)) * 255).astype(np.uint8)
    (d / "black.png").write_bytes(C.png_bytes(np.zeros((48, 48), np.uint8)))
    C.truncated(d / "trunc.png", C.png_bytes(good))
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    C.png_header_bomb(d / "bomb.png", 12000, 12000)
    C.png_header_bomb(d / "huge_dims.png", 2**31 - 1, 2**31 - 1)
    C.png_bad_crc(d / "badcrc.png", good)
    (d / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    (d / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (d / "folder.png").mkdir()
    expected = {"trunc.png": "truncated", "empty.png": "not a readable image", "text.png": "not a readable image",
                "bomb.png": "144 megapixels, over the 64 megapixel limit", "huge_dims.png": "over the 64 megapixel",
                "badcrc.png": "corrupt", "fake.jpg": "truncated or corrupt", "gone.png": "does not exist",
                "folder.png": "is a folder"}
    args = ["--images", str(d / "black.png")]
    for name in expected:
        args += ["--images", str(d / name)]
    o = analyze(*args, watch=[d])
    error_lines(o, expected)
    black = _ids(o, "image_degenerate")
    assert [(f["location"]["image"], f["location"]["problem"]) for f in black] == [(str(d / "black.png"), "black")]


@crafts("images", "bad-file", "pair_aspect_ratio")
def test_image_pair_that_cannot_be_matched(analyze, tmp_path):
    """A reference/output pair whose aspect ratios differ: one line naming both files, exit 2."""
    ref = tmp_path / "ref.png"
    out = tmp_path / "wide.png"
    ref.write_bytes(C.png_bytes(np.zeros((64, 64), np.uint8)))
    out.write_bytes(C.png_bytes(np.zeros((10, 200), np.uint8)))
    o = analyze("--images", str(ref), str(out), watch=[tmp_path])
    line = one_error_line(o, "wide.png", expect="aspect ratios")
    assert "ref.png" in line and o.diag is None


# ============================================================================ latents

@crafts("latents", "crash-memory", "npy_claims_16tib", "npy_negative_shape", "npy_beyond_int64", "npz_claims_8gib",
        "safetensors_header_2**63")
@crafts("latents", "bad-file", "npy_objects", "rank2", "empty", "text_dtype", "npz_unknown_names", "pre_post_shapes",
        "npz_cut", "safetensors_garbage", "pickle_runs_code")
def test_latents_bad_files_each_one_line(analyze, tmp_path):
    """Fourteen bad latent files beside latents with a known batch shift: headers claiming 16 TiB,
    a negative shape or a shape beyond int64, Python objects, wrong rank, empty, an .npz whose members
    claim 8 GiB unpacked (refused without unpacking), unknown array names, pre/post of different
    shapes, text dtype, a garbage and a too-large-header safetensors, a pickle that would run code,
    a cut zip. One line each; the batch shift is still found in the good files."""
    from benchmarks.scenarios.latents import shifted_latents, write_latent_case

    case = shifted_latents(6)
    lat = write_latent_case(case, tmp_path / "lat", "npy")
    C.npy_claiming(lat / "claim_step1.npy", (2**20, 4, 2**10, 2**10))
    C.npy_claiming(lat / "negative_step2.npy", (-1, 4, 8, 8))
    C.npy_claiming(lat / "beyond_int64_step3.npy", (2**62, 2**62))
    C.npy_object(lat / "objects_step4.npy")
    np.save(lat / "rank_step5.npy", np.zeros((8, 8), np.float32))
    np.save(lat / "empty_step6.npy", np.zeros((0, 4, 8, 8), np.float32))
    np.save(lat / "text_step7.npy", np.array([["a"]]))
    C.npz_claiming(lat / "bomb_step8.npz")
    np.savez(lat / "names_step9.npz", foo=np.zeros((1, 4, 8, 8)), bar=np.zeros((1, 4, 8, 8)))
    np.savez(lat / "prepost_step10.npz", pre=np.zeros((1, 4, 8, 8)), post=np.zeros((1, 4, 9, 8)))
    (lat / "cut_step11.npz").write_bytes((lat / "bomb_step8.npz").read_bytes()[:100])
    (lat / "garbage_step12.safetensors").write_bytes(b"\0" * 3)
    C.safetensors_raw(lat / "hlen_step13.safetensors", {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                      b"\0" * 4, length=2**63)
    C.evil_pickle(lat / "evil_step14.pt")
    expected = {"claim_step1.npy": "claims shape [1048576, 4, 1024, 1024] float32 (17592186044416 bytes) but the "
                                   "file holds 64",
                "negative_step2.npy": "negative shape", "beyond_int64_step3.npy": "claims shape",
                "objects_step4.npy": "holds Python objects", "rank_step5.npy": "expected [B, C, H, W]",
                "empty_step6.npy": "is empty", "text_step7.npy": "expected numbers",
                "bomb_step8.npz": "8.0 GiB unpacked", "names_step9.npz": "expected one array or 'pre'/'post'",
                "prepost_step10.npz": "differ in shape", "cut_step11.npz": "unreadable",
                "garbage_step12.safetensors": "unreadable", "hlen_step13.safetensors": "unreadable",
                "evil_step14.pt": "would run code when unpickled"}
    o = analyze("--latents", str(lat), watch=[lat])
    error_lines(o, expected)
    shifts = _ids(o, "latent_batch_shift")
    assert len(shifts) == 1 and shifts[0]["location"]["channels"] == case.truth[0]["location"]["channels"]


@crafts("latents", "warnings", "float32_max_and_inf")
def test_latents_extreme_values_are_data(analyze, tmp_path):
    """Values at the float32 limit and infinities are data, not errors: no crash, no library warning,
    a note for the non-finite ones, exit 0."""
    from benchmarks.scenarios.latents import healthy_latents, write_latent_case

    lat = write_latent_case(healthy_latents(2, n_files=4), tmp_path / "lat", "npy")
    extreme = np.full((2, 4, 32, 32), 3.0e38, np.float32)
    extreme[0, 0, :4] = np.inf
    np.save(lat / "latents_step009999.npy", extreme)
    o = analyze("--latents", str(lat), watch=[lat])
    no_error(o)
    assert "non-finite" in o.out


# ============================================================================ datasets and masks

@crafts("dataset", "bad-file", "trunc", "text_jpeg", "empty_webp", "broken_link")
@crafts("dataset", "integrity", "png_bad_crc")
@crafts("dataset", "pixel-limit", "bomb_81mp")
@crafts("masks", "bad-file", "trunc", "garbage")
@crafts("masks", "pixel-limit", "bomb_81mp")
def test_dataset_and_masks_bad_files_each_one_line(analyze, tmp_path):
    """Six bad training images and three bad masks in a dataset that also has a tiled source and a
    mask of the wrong size: one line per bad file (images and masks alike), both findings still made."""
    from benchmarks.scenarios.datasets import mask_problem_dataset, tiled_texture, write_dataset_case

    rng = np.random.default_rng(3)
    case = mask_problem_dataset(seed=3, problem="size_mismatch", n=8, n_bad=1, size=96)
    case.images["tiles/wall.png"] = tiled_texture(rng, 96, (29, 29))
    images, masks = write_dataset_case(case, tmp_path / "data")
    good = next(iter(sorted(images.glob("*.png")))).read_bytes()
    C.truncated(images / "trunc.png", good)
    (images / "text.jpg").write_text("hello")
    C.png_header_bomb(images / "bomb.png", 9000, 9000)
    (images / "empty.webp").write_bytes(b"")
    (images / "gone.png").symlink_to(tmp_path / "nowhere.png")
    C.png_bad_crc(images / "crc.png", (rng.random((32, 32)) * 255).astype(np.uint8))
    bad_mask_file = case.truth[0]["location"]["file"]
    ms = [m for m in sorted(masks.glob("*.png")) if m.name != Path(bad_mask_file).name][:3]
    C.truncated(ms[0], ms[0].read_bytes())
    ms[1].write_text("garbage")
    C.png_header_bomb(ms[2], 9000, 9000)
    expected = {"trunc.png": "truncated", "text.jpg": "not a readable image", "bomb.png": "81 megapixels",
                "empty.webp": "not a readable image", "gone.png": "no such file", "crc.png": "corrupt",
                ms[0].name: "mask skipped: image data is truncated", ms[1].name: "mask skipped: not a readable image",
                ms[2].name: "mask skipped: image is 9000×9000"}
    o = analyze("--dataset", str(images), "--masks", str(masks), watch=[tmp_path / "data"])
    error_lines(o, expected)
    got = {(f["location"]["file"], f["location"].get("problem")) for f in _ids(o, "dataset_invalid_mask")}
    assert (bad_mask_file, "size_mismatch") in got
    tiled = _ids(o, "dataset_tiled_source")
    assert [f["location"]["file"] for f in tiled] == ["tiles/wall.png"]


@crafts("dataset", "bad-file", "no_images")
def test_dataset_without_images_is_one_line(analyze, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt").write_text("no images here")
    o = analyze("--dataset", str(d), watch=[d])
    one_error_line(o, str(d), expect="no images")


# ============================================================================ checkpoints

@crafts("checkpoints", "crash-memory", "header_length_2**64", "shape_overflow", "shape_2**70", "deep_header")
@crafts("checkpoints", "bad-file", "not_object", "negative_shape", "offsets_outside", "not_utf8", "offsets_text",
        "rank0", "empty", "cut", "pickle_runs_code", "garbage_ckpt", "peft_alpha_text", "peft_r0", "peft_alpha_inf")
def test_checkpoints_bad_files_each_one_line(analyze, tmp_path):
    """Seventeen bad checkpoints beside two good ones (the second with a NaN weight): safetensors
    headers whose length, shape (beyond int64, 2**80 elements), sign or offsets are impossible, that
    are no JSON object, nest 100 000 levels, are not UTF-8; a cut file, an empty one, rank-0 factors;
    PEFT adapters whose lora_alpha is text or infinite and whose r is 0; a pickle that would run code
    and random bytes as .ckpt. One line each naming the file; checkpoint_nonfinite still found."""
    from safetensors.numpy import save_file

    root = tmp_path / "in"
    ck = root / "ck"
    ck.mkdir(parents=True)
    save_file(C.lora_tensors(np.random.default_rng(1)), str(ck / "lora-step000100.safetensors"))
    save_file(C.lora_tensors(np.random.default_rng(1), nan=True), str(ck / "lora-step000200.safetensors"))
    bad = root / "bad"
    bad.mkdir()

    def ent(shape, off):
        return {"dtype": "F32", "shape": shape, "data_offsets": off}

    key = "lora_unet_x.lora_down.weight"
    C.safetensors_raw(bad / "hlen.safetensors", {"a": ent([1], [0, 4])}, b"\0" * 4, length=2**64 - 1)
    C.safetensors_raw(bad / "notobj.safetensors", [1, 2, 3])
    C.safetensors_raw(bad / "overflow.safetensors", {key: ent([2**40, 2**40], [0, 4])}, b"\0" * 4)
    C.safetensors_raw(bad / "bigint.safetensors", {key: ent([2**70, 1], [0, 4])}, b"\0" * 4)
    C.safetensors_raw(bad / "negative.safetensors", {key: ent([-1, -4], [0, 16])}, b"\0" * 16)
    C.safetensors_raw(bad / "outside.safetensors", {"a": ent([4], [0, 10**6])}, b"\0" * 16)
    C.safetensors_raw(bad / "deep.safetensors", b"[" * 100_000 + b"]" * 100_000)
    C.safetensors_raw(bad / "utf8.safetensors", b'{"\xff\xfe": 1}')
    C.safetensors_raw(bad / "offsets_text.safetensors",
                      {"a": {"dtype": "F32", "shape": [1], "data_offsets": ["x", "y"]}}, b"\0" * 4)
    save_file({"lora_unet_m.lora_down.weight": np.zeros((0, 32), np.float32),
               "lora_unet_m.lora_up.weight": np.zeros((32, 0), np.float32),
               "lora_unet_m.alpha": np.array(4.0, np.float32)}, str(bad / "rank0.safetensors"))
    (bad / "empty.safetensors").write_bytes(b"")
    C.truncated(bad / "cut.safetensors", (ck / "lora-step000100.safetensors").read_bytes(), 0.7)
    C.evil_pickle(bad / "evil.pt")
    (bad / "garbage.ckpt").write_bytes(bytes(np.random.default_rng(5).integers(0, 256, 300, dtype=np.uint8)))
    rng = np.random.default_rng(2)
    peft = [C.peft_adapter(root / f"peft{i}", rng, cfg) for i, cfg in enumerate((
        {"r": 4, "lora_alpha": "abc", "peft_type": "LORA"}, {"r": 0, "lora_alpha": 4},
        {"r": 4, "lora_alpha": 1e400}))]
    expected = {"hlen.safetensors": "declared header length 18446744073709551615",
                "notobj.safetensors": "not a JSON object", "overflow.safetensors": "has 4 bytes for shape",
                "bigint.safetensors": "shape [1180591620717411303424, 1]", "negative.safetensors": "negative shape",
                "outside.safetensors": "lies outside the file", "deep.safetensors": "nested too deeply",
                "utf8.safetensors": "UnicodeDecodeError", "offsets_text.safetensors": "bad entry for tensor 'a'",
                "rank0.safetensors": "rank-0", "empty.safetensors": "shorter than its 8-byte header",
                "cut.safetensors": "lies outside the file", "evil.pt": "would run code when unpickled",
                "garbage.ckpt": "not a readable torch checkpoint"}
    o = analyze("--checkpoints", str(ck), *sorted(str(p) for p in bad.iterdir()), *map(str, peft),
                watch=[root])
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    peft_lines = [ln for ln in lines if "/adapter_model.safetensors:" in ln]
    assert sorted(ln.split("/")[-2] for ln in peft_lines) == ["peft0", "peft1", "peft2"], o.err
    assert "lora_alpha 'abc' is not a number" in peft_lines[0] and "r 0 is not a positive" in peft_lines[1]
    assert "lora_alpha inf is not a positive finite number" in peft_lines[2]
    o.err = "\n".join(ln for ln in lines if ln not in peft_lines)
    error_lines(o, expected)
    nonfinite = _ids(o, "checkpoint_nonfinite")
    assert len(nonfinite) == 1 and "lora-step000200" in nonfinite[0]["location"]["checkpoint"]


@crafts("checkpoints", "bad-file", "missing", "text_file", "empty_folder")
def test_checkpoint_paths_that_are_not_checkpoints(analyze, tmp_path):
    """A path that does not exist, a text file, a folder without checkpoints beside a good one:
    one line each, the good checkpoint still read."""
    from safetensors.numpy import save_file

    root = tmp_path / "in"
    (root / "nothing").mkdir(parents=True)
    good = root / "lora-step000300.safetensors"
    save_file(C.lora_tensors(np.random.default_rng(4), nan=True), str(good))
    (root / "notes.txt").write_text("x")
    o = analyze("--checkpoints", str(good), str(root / "missing.safetensors"), str(root / "notes.txt"),
                str(root / "nothing"), watch=[root])
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == 2 and len(lines) == 3, o.err
    assert "missing.safetensors: checkpoint path does not exist" in lines[0]
    assert "notes.txt: not a checkpoint file" in lines[1] and "nothing: no checkpoint files" in lines[2]
    assert len(_ids(o, "checkpoint_nonfinite")) == 1


# ============================================================================ not regular files, every kind

@crafts("images", "deadline", "fifo", "dev_zero")
@crafts("latents", "deadline", "fifo", "socket")
@crafts("dataset", "deadline", "fifo")
@crafts("checkpoints", "deadline", "fifo")
def test_pipes_devices_and_sockets_of_every_kind_are_refused_unopened(analyze_subprocess, tmp_path):
    """A named pipe as an image, a latent file, a dataset image and a checkpoint, /dev/zero as an
    image, a socket in the latents folder: refused from os.stat, never opened (a pipe would block
    forever), one line each; the good inputs beside them analysed."""
    from safetensors.numpy import save_file

    from benchmarks.scenarios.datasets import tiled_dataset, write_dataset_case
    from benchmarks.scenarios.latents import shifted_latents, write_latent_case

    tmp_path = tmp_path / "in"  # the inputs; the report goes beside them
    tmp_path.mkdir()
    img = C.make_fifo(tmp_path / "pipe.png")
    black = tmp_path / "black.png"
    black.write_bytes(C.png_bytes(np.zeros((32, 32), np.uint8)))
    lat = write_latent_case(shifted_latents(6), tmp_path / "lat", "npy")
    C.make_fifo(lat / "pipe_step7.npy")
    images, _ = write_dataset_case(tiled_dataset(1, n=6, n_tiled=1, size=96), tmp_path / "data")
    C.make_fifo(images / "pipe.jpg")
    ck = tmp_path / "ck"
    ck.mkdir()
    save_file(C.lora_tensors(np.random.default_rng(1), nan=True), str(ck / "lora-step000100.safetensors"))
    ck_pipe = C.make_fifo(tmp_path / "pipe.safetensors")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(lat / "sock_step8.npy"))
    args = ["--images", str(black), "--images", str(img), "--latents", str(lat), "--dataset", str(images),
            "--checkpoints", str(ck), str(ck_pipe)]
    if os.path.exists("/dev/zero"):
        args += ["--images", "/dev/zero"]
    try:
        o = analyze_subprocess(*args, watch=[tmp_path], timeout=150)
    finally:
        sock.close()
    expected = {"pipe.png": "named pipe", "pipe_step7.npy": "named pipe", "sock_step8.npy": "is a socket",
                "pipe.jpg": "named pipe", "pipe.safetensors": "named pipe"}
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    if os.path.exists("/dev/zero"):
        zero = [ln for ln in lines if "/dev/zero:" in ln]
        assert len(zero) == 1 and "character device" in zero[0], o.err
        o.err = "\n".join(ln for ln in lines if ln not in zero)
    error_lines(o, expected)
    found = {f["id"] for f in o.diag["findings"]}
    assert {"image_degenerate", "latent_batch_shift", "dataset_tiled_source", "checkpoint_nonfinite"} <= found


@crafts("samples", "bad-file", "cut")
@crafts("samples", "pixel-limit", "bomb_144mp")
def test_bad_sample_images_beside_checkpoints(analyze, tmp_path):
    """A samples/ folder beside the checkpoints holding a cut image and a 144 MP header among good
    samples: one line each, the checkpoint still analysed."""
    from safetensors.numpy import save_file

    root = tmp_path / "in"
    (root / "samples").mkdir(parents=True)
    save_file(C.lora_tensors(np.random.default_rng(1), nan=True), str(root / "lora-step000200.safetensors"))
    img = (np.random.default_rng(2).random((32, 32)) * 255).astype(np.uint8)
    for step in (100, 200):
        (root / "samples" / f"lora_{step:06d}_cat.png").write_bytes(C.png_bytes(img))
    C.truncated(root / "samples" / "lora_000300_cat.png", C.png_bytes(img))
    C.png_header_bomb(root / "samples" / "lora_000400_cat.png", 12000, 12000)
    o = analyze("--checkpoints", str(root / "lora-step000200.safetensors"), watch=[root])
    error_lines(o, {"lora_000300_cat.png": "truncated", "lora_000400_cat.png": "144 megapixels"})
    assert len(_ids(o, "checkpoint_nonfinite")) == 1
