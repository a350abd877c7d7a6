"""The one image decoder (diffdiag.sources.decode) on real photos (scikit-image data) saved in every
mode: 8-bit, 16-bit grey, 16-bit RGB/RGBA/grey+alpha PNG (values kept to 1/65535), RGBA, palette,
float TIFF; the pixel limit refused before decoding; FIFOs, devices, sockets and folders refused
without blocking; every image reader of diffdiag going through it."""

from __future__ import annotations

import os
import socket
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from diffdiag.errors import InputError
from diffdiag.sources.decode import MAX_PIXELS, decode_image


def _png16(a: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count) written from the format's
    definition, cycling through all five row filters (PIL cannot write 16-bit colour)."""
    a = np.asarray(a, np.uint16)
    a = a[..., None] if a.ndim == 2 else a
    h, w, c = a.shape
    bpp = 2 * c
    rows = a.astype(">u2").reshape(h, w * c).view(np.uint8).reshape(h, w * bpp).astype(np.int16)
    prev = np.zeros(w * bpp, np.int16)
    out = []
    for y in range(h):
        x, f = rows[y], y % 5
        left = np.concatenate([np.zeros(bpp, np.int16), x[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int16), prev[:-bpp]])
        if f == 4:  # Paeth
            p = left + prev - ul
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, ul))
        else:
            pred = [np.zeros_like(x), left, prev, (left + prev) // 2][f]
        out.append(bytes([f]) + ((x - pred) % 256).astype(np.uint8).tobytes())
        prev = x

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(out)))
            + chunk(b"IEND", b""))


def _deep(photo: np.ndarray, seed: int) -> np.ndarray:
    """A 16-bit version of an 8-bit photo whose low bytes are not zero (sub-8-bit detail)."""
    rng = np.random.default_rng(seed)
    return (photo.astype(np.uint16) * 257 ^ rng.integers(0, 256, photo.shape, dtype=np.uint16)).astype(np.uint16)


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return data.astronaut()[::4, ::4].copy()  # 128x128x3 uint8


def test_8bit_rgb_and_grey(tmp_path, astro):
    Image.fromarray(astro).save(tmp_path / "a.png")
    cam = data.camera()[::4, ::4]
    Image.fromarray(cam).save(tmp_path / "c.png")
    a, c = decode_image(tmp_path / "a.png"), decode_image(str(tmp_path / "c.png"))
    assert a.dtype == c.dtype == np.float32 and a.shape == (128, 128, 3) and c.shape == (128, 128)
    assert np.array_equal(a, astro / np.float32(255)) and np.array_equal(c, cam / np.float32(255))
    assert np.array_equal(decode_image((tmp_path / "a.png").read_bytes()), a)  # bytes decode the same


def test_16bit_grey_png(tmp_path):
    g = _deep(data.camera()[::4, ::4], 1)
    Image.fromarray(g).save(tmp_path / "g16.png")
    notes: list[str] = []
    a = decode_image(tmp_path / "g16.png", notes=notes)
    assert a.shape == g.shape and notes == ["16-bit grey"]
    assert np.array_equal(np.round(a * 65535).astype(np.uint16), g)
    assert np.array_equal(decode_image(tmp_path / "g16.png", raw=True), g)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_colour_png_keeps_every_bit(tmp_path, astro, channels):
    rgb = _deep(astro, channels)
    alpha = np.full(astro.shape[:2] + (1,), 65535, np.uint16)
    stored = {2: np.dstack([rgb[..., 0], alpha[..., 0]]), 3: rgb, 4: np.dstack([rgb, alpha])}[channels]
    p = tmp_path / "deep.png"
    p.write_bytes(_png16(stored))
    assert Image.open(p).mode in ("RGB", "RGBA")  # PIL alone would keep only the high bytes
    notes: list[str] = []
    a = decode_image(p, notes=notes)
    want = (rgb[..., 0] if channels == 2 else rgb).astype(np.float64) / 65535
    assert np.abs(a - want).max() < 0.5 / 65535
    assert notes[0] == "16-bit colour" and (channels == 3 or "alpha channel dropped" in notes[1])
    assert np.array_equal(decode_image(p, raw=True), stored)
    # half transparent: composited over white with the 16-bit alpha
    if channels == 4:
        stored[..., 3] = 32768
        p.write_bytes(_png16(stored))
        t = 32768 / 65535
        assert np.abs(decode_image(p) - (want * t + (1 - t))).max() < 1e-6


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_16bit_rgb_tiff(tmp_path, astro, compression):
    import tifffile

    rgb = _deep(astro, 7)
    tifffile.imwrite(tmp_path / "deep.tif", rgb, compression=compression)
    assert np.array_equal(decode_image(tmp_path / "deep.tif", raw=True), rgb)
    assert np.abs(decode_image(tmp_path / "deep.tif") - rgb / 65535).max() < 0.5 / 65535


def test_rgba_alpha_policy(tmp_path, astro):
    opaque = np.dstack([astro, np.full(astro.shape[:2], 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "o.png")
    notes: list[str] = []
    assert np.array_equal(decode_image(tmp_path / "o.png", notes=notes), astro / np.float32(255))
    assert notes == ["alpha channel dropped (fully opaque)"]
    half = opaque.copy()
    half[..., 3] = 51  # 20 % opaque
    Image.fromarray(half, "RGBA").save(tmp_path / "h.png")
    want = astro / 255 * 0.2 + 0.8
    assert np.abs(decode_image(tmp_path / "h.png") - want).max() < 1e-6
    assert np.array_equal(decode_image(tmp_path / "h.png", raw=True), half)
    notes = []
    assert np.array_equal(decode_image(tmp_path / "h.png", alpha="drop", notes=notes), astro / np.float32(255))
    assert notes == ["alpha channel ignored (not fully opaque; colour kept as stored)"]  # what a trainer sees


def test_palette_and_transparent_palette(tmp_path, astro):
    pal = Image.fromarray(astro).quantize(64)
    pal.save(tmp_path / "p.png")
    want = np.asarray(pal.convert("RGB")) / np.float32(255)
    assert np.array_equal(decode_image(tmp_path / "p.png"), want)
    assert np.array_equal(decode_image(tmp_path / "p.png", raw=True), np.asarray(pal))  # the indices
    idx = np.asarray(pal)
    pal.save(tmp_path / "pt.png", transparency=int(idx[0, 0]))  # one index fully transparent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no library warning escapes
        a = decode_image(tmp_path / "pt.png")
    clear = idx == idx[0, 0]
    assert np.array_equal(a[clear], np.ones((clear.sum(), 3), np.float32))
    assert np.array_equal(a[~clear], want[~clear])


def test_float_tiff_kept_as_stored_nan_included(tmp_path, astro):
    import tifffile

    g = data.camera()[::4, ::4].astype(np.float32) / 128  # values up to ~2: kept, not clipped
    g[3, 5] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", g)
    notes: list[str] = []
    a = decode_image(tmp_path / "f.tif", notes=notes)
    assert np.array_equal(a, g, equal_nan=True) and "values kept as stored" in notes[0]
    rgb = (astro / 255).astype(np.float32)
    rgb[0, 0, 1] = np.nan
    tifffile.imwrite(tmp_path / "f3.tif", rgb)  # PIL cannot read float RGB: tifffile does
    assert np.array_equal(decode_image(tmp_path / "f3.tif"), rgb, equal_nan=True)


def test_32bit_integer_grey(tmp_path):
    g = _deep(data.camera()[::4, ::4], 3).astype(np.int32)
    Image.fromarray(g, "I").save(tmp_path / "i.tif")
    assert np.abs(decode_image(tmp_path / "i.tif") - g / 65535).max() < 1e-6


def test_pixel_limit_refused_before_decoding(tmp_path, monkeypatch, astro):
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 MP, a few kB on disk
    assert 9000 * 9000 > MAX_PIXELS
    Image.fromarray(astro).save(tmp_path / "small.png")
    from PIL import ImageFile

    loads = []
    real_load = ImageFile.ImageFile.load

    def spy(self, *a, **k):
        loads.append(self.size)
        return real_load(self, *a, **k)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.raises(InputError, match="81 megapixels, over the 64 megapixel limit") as e:
        decode_image(tmp_path / "bomb.png")
    assert e.value.path == str(tmp_path / "bomb.png")
    with pytest.raises(InputError, match="128×128 = 0.0164 megapixels, over the 0.0163 megapixel limit"):
        decode_image((tmp_path / "small.png").read_bytes(), max_pixels=128 * 127)
    assert loads == []  # neither was decoded
    assert decode_image(tmp_path / "small.png", max_pixels=128 * 128).shape == (128, 128, 3)
    # PIL's own bomb warning (its global limit is lower than ours here) does not reach the user
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(tmp_path / "small.png").shape == (128, 128, 3)


@pytest.mark.timeout(10)
def test_non_regular_files_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "link.png").symlink_to(fifo)
    sock_path = tmp_path / "s.png"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    try:
        t0 = time.monotonic()
        for p, kind in ((fifo, "named pipe"), (tmp_path / "link.png", "named pipe"), (sock_path, "socket"),
                        (Path("/dev/zero"), "character device"), (tmp_path, "folder")):
            with pytest.raises(InputError, match=f"is a.* {kind}.*not a regular file") as e:
                decode_image(p)
            assert e.value.path == str(p)
        assert time.monotonic() - t0 < 2.0
    finally:
        sock.close()
    # nobody opened the FIFO for reading: a non-blocking writer finds no reader
    with pytest.raises(OSError):
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)


def test_bad_files_name_the_file(tmp_path, astro):
    Image.fromarray(astro).save(tmp_path / "good.png")
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.png").write_text("not a picture\n")
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {"trunc.png": "truncated or corrupt", "text.png": "not a readable image",
             "empty.png": "not a readable image", "missing.png": "no such file"}
    for name, words in cases.items():
        with pytest.raises(InputError, match=words) as e:
            decode_image(tmp_path / name)
        assert str(e.value).startswith(f"{tmp_path / name}: ") and "\n" not in str(e.value)
    with pytest.raises(InputError, match="^wandb:samples@3: not a readable image"):
        decode_image(b"\x89PNG garbage", name="wandb:samples@3")


def test_every_reader_uses_the_decoder(tmp_path, astro):
    """--images, sample folders, datasets, masks, W&B and MLflow media: the same pixels, the same refusals."""
    from diffdiag.analyzers.spectral import to_gray
    from diffdiag.sources import dataset, images, samples
    from integrations import mlflow_source, wandb_source

    rgb = _deep(astro, 11)
    p = tmp_path / "deep.png"
    p.write_bytes(_png16(rgb))
    want = decode_image(p)
    assert np.abs(want - rgb / 65535).max() < 0.5 / 65535
    lum, color = dataset.decode_luminance(p, need_color=True)
    readers = {"images": images.read_image(p)[0], "samples": samples._read_image(p), "dataset": color,
               "wandb": wandb_source.load_image_file(p), "mlflow": mlflow_source._load_image(p, "k", 1).image}
    for name, got in readers.items():
        assert np.array_equal(got, want), name
    assert np.array_equal(lum, to_gray(want))
    assert np.array_equal(dataset.read_mask_array(p), rgb)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    for call in (lambda: images.read_image(fifo), lambda: wandb_source.load_image_file(fifo),
                 lambda: mlflow_source._load_image(fifo, "k", 1)):
        with pytest.raises(InputError, match="named pipe"):
            call()
    assert "named pipe" in samples._read_image(fifo)
    for call in (lambda: dataset.decode_luminance(fifo), lambda: dataset.read_mask_array(fifo)):
        with pytest.raises(Exception, match="named pipe"):
            call()
    assert time.monotonic() - t0 < 2.0
