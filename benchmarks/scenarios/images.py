"""Labelled image cases: real pictures (scikit-image photos and textures) plus controlled artifacts.

Every generator returns an :class:`ImageCase` with the ground truth: the
findings an analysis must produce (``truth``) and the finding ids it must NOT
produce at warning or above (``forbidden``). Shared by ``tests/`` and
``benchmarks/`` (and the causes engineer's scenarios).

Conventions (docs/CONTRACT.md §3): bboxes are ``[x0, y0, x1, y1]`` (x1/y1 exclusive),
``period_px`` is ``[py, px]`` (None for an axis without a period) for
tiling, a single int (or None) for stripes; "vertical" stripes vary along x;
``shift_px = [dy, dx]`` means ``output(y, x) ≈ reference(y - dy, x - dx)``.

Example
-------
>>> case = stripes_case(axis="vertical", period=6, seed=3)
>>> case.truth[0]["id"], case.truth[0]["axis"]
('stripes', 'vertical')
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

#: photos with real structure (vertical edges included: camera, rocket, brick)
PHOTOS = ["camera", "astronaut", "rocket", "brick", "coffee", "chelsea", "grass", "gravel",
          "coins", "moon", "page", "immunohistochemistry", "clock", "cell", "text"]
#: photos with texture everywhere (good tile sources)
TEXTURED = ["astronaut", "grass", "gravel", "coffee", "brick", "immunohistochemistry", "chelsea"]
#: ids an image analysis can raise
IMAGE_IDS = ("periodic_pattern", "tiling_period_doubling", "stripes", "hf_noise_patch",
             "image_degenerate", "crop_offset")
CLEAN_FORBIDDEN = ("stripes", "tiling_period_doubling", "hf_noise_patch", "crop_offset",
                   "periodic_pattern", "image_degenerate")


@dataclass
class ImageCase:
    """One labelled case.

    Attributes
    ----------
    name : str
    image : ndarray of float32, shape (H, W) or (H, W, 3), in [0, 1]
        The output (or the lone image).
    reference : ndarray or None
        The reference of a pair, same shape.
    truth : list of dict
        Expected findings: ``{"id": ..., <location keys>...}``.
    forbidden : tuple of str
        Ids that must not appear at warning or above.
    meta : dict
        Generator parameters.
    """

    name: str
    image: np.ndarray
    reference: np.ndarray | None = None
    truth: list[dict[str, Any]] = field(default_factory=list)
    forbidden: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=32)
def _photo(name: str) -> np.ndarray:
    import skimage.data
    from skimage.util import img_as_float32

    a = img_as_float32(getattr(skimage.data, name)())
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    a.setflags(write=False)
    return a


def photo(name: str, gray: bool = False) -> np.ndarray:
    """A scikit-image picture as float32 in [0, 1] (a fresh copy)."""
    a = _photo(name).copy()
    if gray and a.ndim == 3:
        a = (0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]).astype(np.float32)
    return a


def _crop(a: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random h×w crop (the picture is tiled by reflection if smaller)."""
    while a.shape[0] < h or a.shape[1] < w:
        a = np.concatenate([a, a[::-1]], axis=0) if a.shape[0] < h else a
        a = np.concatenate([a, a[:, ::-1]], axis=1) if a.shape[1] < w else a
    y0 = int(rng.integers(0, a.shape[0] - h + 1))
    x0 = int(rng.integers(0, a.shape[1] - w + 1))
    return a[y0:y0 + h, x0:x0 + w].copy()


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip through PIL (8-bit), returned as float32 in [0, 1]."""
    from PIL import Image

    u8 = np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.float32) / 255.0


def rerender(a: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A realistic, artifact-free re-rendering of ``a`` (what a clean pair's output looks like).

    kind : "jpeg" (quality 80–95), "noise" (gaussian σ 0.004–0.012), "blur"
    (gaussian σ 0.5–0.9), "quant" (8-bit quantisation only), "resample"
    (down to 70–90 % and back), "tone" (gamma 0.9–1.1, gain ±4 %), or
    several joined with "+" ("jpeg+noise", "blur+jpeg", "tone+jpeg").
    """
    from scipy.ndimage import gaussian_filter

    out = a.astype(np.float32)
    for part in kind.split("+"):
        if part == "jpeg":
            out = jpeg(out, int(rng.integers(80, 96)))
        elif part == "noise":
            out = out + rng.normal(0, rng.uniform(0.004, 0.012), out.shape).astype(np.float32)
        elif part == "blur":
            s = float(rng.uniform(0.5, 0.9))
            sig = (s, s, 0) if out.ndim == 3 else s
            out = gaussian_filter(out, sig).astype(np.float32)
        elif part == "quant":
            out = np.round(out * 255) / 255
        elif part == "resample":  # down to 70-90 % and back (bilinear, anti-aliased)
            from skimage.transform import resize

            f = float(rng.uniform(0.7, 0.9))
            small = resize(out, (int(out.shape[0] * f), int(out.shape[1] * f)) + out.shape[2:], order=1,
                           anti_aliasing=True)
            out = resize(small, out.shape, order=1).astype(np.float32)
        elif part == "tone":  # slight exposure / gamma change
            out = np.clip(out, 0, 1) ** float(rng.uniform(0.9, 1.1)) * float(rng.uniform(0.96, 1.04))
        else:
            raise ValueError(f"unknown re-rendering {part!r}")
    return np.clip(out, 0, 1).astype(np.float32)


CLEAN_KINDS = ("jpeg", "noise", "blur", "jpeg+noise", "blur+jpeg", "quant", "resample", "tone+jpeg")


def clean_pair(name: str, kind: str = "jpeg", seed: int = 0, size: tuple[int, int] | None = None
               ) -> ImageCase:
    """Reference photo vs a realistic re-rendering: no finding at warning or above."""
    rng = np.random.default_rng(seed)
    ref = photo(name)
    if size is not None:
        ref = _crop(ref, size[0], size[1], rng)
    out = rerender(ref, kind, rng)
    return ImageCase(f"clean:{name}:{kind}:{seed}", out, ref, [], CLEAN_FORBIDDEN,
                     {"photo": name, "kind": kind, "seed": seed})


def clean_pairs(n: int = 10, seed: int = 0) -> list[ImageCase]:
    """``n`` clean pairs over distinct photos (n ≤ len(PHOTOS)), re-renderings cycling."""
    return [clean_pair(PHOTOS[i % len(PHOTOS)], CLEAN_KINDS[(i + seed) % len(CLEAN_KINDS)], seed * 100 + i)
            for i in range(n)]


def _tile(t: np.ndarray, h: int, w: int) -> np.ndarray:
    reps = (h // t.shape[0] + 2, w // t.shape[1] + 2) + ((1,) if t.ndim == 3 else ())
    return np.tile(t, reps)[:h, :w].copy()


def _tile_source(name: str, py: int, px: int, rng: np.random.Generator) -> np.ndarray:
    """A textured py×px crop (retry a few times for a crop with structure)."""
    a = photo(name)
    best, best_std = None, -1.0
    for _ in range(6):
        c = _crop(a, py, px, rng)
        s = float(np.std(c))
        if s > best_std:
            best, best_std = c, s
        if s > 0.08:
            break
    return best


def doubled_tile(t: np.ndarray, axes: str, style: str, rng: np.random.Generator, src: np.ndarray | None = None
                 ) -> np.ndarray:
    """Build a tile of twice the period along ``axes`` ("y", "x" or "yx") from tile ``t``.

    style : "flip" (the repeat is mirrored), "shift" (the repeat is a circular
    shift of the tile by half its size), "vary" (the repeat gets a smooth
    brightness/contrast change and fresh detail), "crop" (a 2P crop of the source).
    """
    py, px = t.shape[:2]
    if style == "crop" and src is not None:
        return _crop(src, py * (2 if "y" in axes else 1), px * (2 if "x" in axes else 1), rng)

    def variant(a: np.ndarray, ax: int) -> np.ndarray:
        if style == "flip":
            return a[::-1] if ax == 0 else a[:, ::-1]
        if style == "shift":
            return np.roll(a, a.shape[ax] // 2, axis=ax)
        g = float(rng.uniform(0.75, 0.9))
        return np.clip(a * g + (1 - g) * a.mean() + rng.normal(0, 0.03, a.shape), 0, 1).astype(np.float32)

    out = t
    if "x" in axes:
        out = np.concatenate([out, variant(out, 1)], axis=1)
    if "y" in axes:
        out = np.concatenate([out, variant(out, 0)], axis=0)
    return out


def tiling_case(period: tuple[int, int] = (24, 24), name: str = "grass", seed: int = 0,
                axes: str = "yx", style: str = "flip", size: tuple[int, int] = (384, 416),
                doubled: bool = True, rerender_kind: str = "noise") -> ImageCase:
    """Reference tiled with period ``(py, px)``; output tiled with the period doubled along ``axes``.

    With ``doubled=False`` the output is a clean re-rendering of the reference
    (no doubling: the tiling must not be reported as doubled).
    """
    rng = np.random.default_rng(seed)
    py, px = period
    t = _tile_source(name, py, px, rng)
    ref = _tile(t, *size)
    if doubled:
        t2 = doubled_tile(t, axes, style, rng, photo(name))
        out = rerender(_tile(t2, *size), rerender_kind, rng)
        dpy = 2 * py if "y" in axes else py
        dpx = 2 * px if "x" in axes else px
        truth = [{"id": "tiling_period_doubling", "period_px": [py, px], "doubled_period_px": [dpy, dpx]}]
        forbidden: tuple[str, ...] = ("crop_offset", "image_degenerate", "stripes")
    else:
        out = rerender(ref, rerender_kind, rng)
        truth, forbidden = [], ("tiling_period_doubling", "stripes", "crop_offset", "hf_noise_patch",
                                "image_degenerate")
    return ImageCase(f"tiling:{name}:{py}x{px}:{axes}:{style}:{doubled}:{seed}", out, ref, truth, forbidden,
                     {"period": [py, px], "axes": axes, "style": style, "seed": seed})


def periodic_image_case(period: tuple[int, int] = (30, 30), name: str = "gravel", seed: int = 0,
                        size: tuple[int, int] = (400, 400)) -> ImageCase:
    """A lone image made of a seamlessly repeated photo tile (``periodic_pattern`` at warning)."""
    rng = np.random.default_rng(seed)
    t = _tile_source(name, period[0], period[1], rng)
    img = rerender(_tile(t, *size), "noise", rng)
    return ImageCase(f"periodic:{name}:{period}:{seed}", img, None,
                     [{"id": "periodic_pattern", "period_px": list(period)}], ("crop_offset",),
                     {"period": list(period), "seed": seed})


def stripe_pattern(n: int, periodic: bool, period: int | None, amplitude: float,
                   rng: np.random.Generator, profile: str | None = None) -> np.ndarray:
    """A 1-D banding profile of length n (added along the stripes' varying axis).

    Periodic: square wave, sine or sawtooth of ``period``; aperiodic: a few
    random bands (widths 2–10 px) of random sign, or a smoothed random walk.
    """
    x = np.arange(n, dtype=np.float32)
    if periodic:
        assert period is not None
        phase = float(rng.uniform(0, 2 * np.pi))
        kind = profile or ["square", "sine", "saw"][int(rng.integers(0, 3))]
        if kind == "square":
            p = np.sign(np.sin(2 * np.pi * x / period + phase))
        elif kind == "sine":
            p = np.sin(2 * np.pi * x / period + phase)
        else:
            p = 2 * (((x / period) + phase / (2 * np.pi)) % 1.0) - 1
        return (amplitude * p).astype(np.float32)
    kind = profile or ["bands", "walk"][int(rng.integers(0, 2))]
    p = np.zeros(n, np.float32)
    if kind == "bands":
        k = int(rng.integers(3, 7))
        for _ in range(k):
            w = int(rng.integers(2, 11))
            x0 = int(rng.integers(0, max(1, n - w)))
            p[x0:x0 + w] += float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.0))
    else:
        from scipy.ndimage import gaussian_filter1d

        p = gaussian_filter1d(rng.normal(0, 1, n), float(rng.uniform(1.0, 3.0))).astype(np.float32)
        p /= max(1e-6, float(np.abs(p).max()))
    return (amplitude * p).astype(np.float32)


def stripes_case(axis: str = "vertical", period: int | None = 6, name: str = "camera", seed: int = 0,
                 amplitude: float = 0.06, bbox: list[int] | None = None, size: tuple[int, int] | None = None,
                 rerender_kind: str = "jpeg", profile: str | None = None) -> ImageCase:
    """Banding added to a re-rendered photo over part of the frame (``stripes`` with axis, period, bbox).

    ``axis="vertical"``: the pattern varies along x (column bands); ``period``
    None gives aperiodic bands. ``bbox`` [x0, y0, x1, y1] defaults to a random
    box covering 35–80 % of each side.
    """
    rng = np.random.default_rng(seed)
    ref = photo(name)
    if size is not None:
        ref = _crop(ref, size[0], size[1], rng)
    h, w = ref.shape[:2]
    if bbox is None:
        bw, bh = int(w * rng.uniform(0.35, 0.8)), int(h * rng.uniform(0.35, 0.8))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        bbox = [x0, y0, x0 + bw, y0 + bh]
    x0, y0, x1, y1 = bbox
    out = rerender(ref, rerender_kind, rng)
    if axis == "vertical":
        p = stripe_pattern(x1 - x0, period is not None, period, amplitude, rng, profile)
        add = np.broadcast_to(p[None, :], (y1 - y0, x1 - x0))
    else:
        p = stripe_pattern(y1 - y0, period is not None, period, amplitude, rng, profile)
        add = np.broadcast_to(p[:, None], (y1 - y0, x1 - x0))
    if out.ndim == 3:
        add = add[..., None]
    out[y0:y1, x0:x1] = np.clip(out[y0:y1, x0:x1] + add, 0, 1)
    # the truth box is where the pattern actually is (aperiodic bands may not fill the region)
    on = np.flatnonzero(np.abs(p) > 0.2 * amplitude)
    if len(on):
        if axis == "vertical":
            bbox = [x0 + int(on.min()), y0, x0 + int(on.max()) + 1, y1]
        else:
            bbox = [x0, y0 + int(on.min()), x1, y0 + int(on.max()) + 1]
    truth = [{"id": "stripes", "axis": axis, "period_px": period, "bbox": list(bbox)}]
    return ImageCase(f"stripes:{name}:{axis}:{period}:{seed}", out.astype(np.float32), ref, truth,
                     ("crop_offset", "tiling_period_doubling", "image_degenerate", "hf_noise_patch"),
                     {"amplitude": amplitude, "seed": seed})


def hf_patch_case(name: str = "coffee", seed: int = 0, bbox: list[int] | None = None, sigma: float | None = None,
                  rerender_kind: str = "jpeg") -> ImageCase:
    """A patch of high-frequency noise (σ 0.05–0.12) over a random 40–120 px box."""
    rng = np.random.default_rng(seed)
    ref = photo(name)
    h, w = ref.shape[:2]
    if bbox is None:
        bw, bh = int(rng.integers(40, 121)), int(rng.integers(40, 121))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        bbox = [x0, y0, x0 + bw, y0 + bh]
    sigma = float(rng.uniform(0.05, 0.12)) if sigma is None else sigma
    x0, y0, x1, y1 = bbox
    out = rerender(ref, rerender_kind, rng)
    noise = rng.normal(0, sigma, out[y0:y1, x0:x1].shape).astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(out[y0:y1, x0:x1] + noise, 0, 1)
    return ImageCase(f"hfpatch:{name}:{seed}", out, ref, [{"id": "hf_noise_patch", "bbox": list(bbox)}],
                     ("crop_offset", "tiling_period_doubling", "image_degenerate"),
                     {"sigma": sigma, "seed": seed})


def shift_case(name: str = "astronaut", shift: tuple[int, int] = (1, 0), seed: int = 0,
               size: tuple[int, int] = (320, 352), rerender_kind: str = "jpeg") -> ImageCase:
    """Output cropped from the same photo ``shift`` px away: output(y, x) = reference(y - dy, x - dx)."""
    rng = np.random.default_rng(seed)
    a = photo(name)
    h, w = size
    dy, dx = shift
    m = 8
    y0 = int(rng.integers(m, a.shape[0] - h - m))
    x0 = int(rng.integers(m, a.shape[1] - w - m))
    ref = a[y0:y0 + h, x0:x0 + w].copy()
    out = a[y0 - dy:y0 - dy + h, x0 - dx:x0 - dx + w].copy()
    out = rerender(out, rerender_kind, rng)
    return ImageCase(f"shift:{name}:{dy},{dx}:{seed}", out, ref,
                     [{"id": "crop_offset", "shift_px": [dy, dx]}],
                     ("tiling_period_doubling", "stripes", "image_degenerate"), {"seed": seed})


def degenerate_case(problem: str = "black", seed: int = 0, size: tuple[int, int] = (256, 256),
                    with_reference: bool = False) -> ImageCase:
    """A degenerate sample: ``black``, ``white``, ``uniform`` (flat mid-grey/colour) or ``nonfinite`` (NaNs)."""
    rng = np.random.default_rng(seed)
    h, w = size
    if problem == "black":
        img = np.abs(rng.normal(0, 0.002, (h, w, 3))).astype(np.float32)
    elif problem == "white":
        img = (1 - np.abs(rng.normal(0, 0.002, (h, w, 3)))).astype(np.float32)
    elif problem == "uniform":
        img = np.ones((h, w, 3), np.float32) * rng.uniform(0.2, 0.8, 3).astype(np.float32)
    elif problem == "nonfinite":
        img = _crop(photo("astronaut"), h, w, rng)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        img[y0:y0 + h // 3, x0:x0 + w // 3] = np.nan
    else:
        raise ValueError(problem)
    ref = _crop(photo("astronaut"), h, w, rng) if with_reference else None
    return ImageCase(f"degenerate:{problem}:{seed}", img, ref, [{"id": "image_degenerate", "problem": problem}],
                     (), {"seed": seed})


def bbox_iou(a: list[int], b: list[int]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def all_cases(seed: int = 0) -> list[ImageCase]:
    """A varied labelled set (periods, positions, photos, axes drawn from ``seed``)."""
    rng = np.random.default_rng(seed)
    cases: list[ImageCase] = list(clean_pairs(10, seed))
    for i in range(4):
        p = (int(rng.integers(9, 60)), int(rng.integers(9, 60)))
        cases.append(tiling_case(p, TEXTURED[int(rng.integers(len(TEXTURED)))], seed * 10 + i,
                                 ["yx", "x", "y"][i % 3], ["flip", "shift", "vary", "crop"][i % 4]))
    cases.append(tiling_case((int(rng.integers(9, 50)),) * 2, "gravel", seed, doubled=False))
    cases.append(periodic_image_case((int(rng.integers(11, 60)), int(rng.integers(11, 60))),
                                     TEXTURED[int(rng.integers(len(TEXTURED)))], seed))
    for i, axis in enumerate(["vertical", "horizontal", "vertical", "horizontal"]):
        per = int(rng.integers(3, 24)) if i < 2 else None
        cases.append(stripes_case(axis, per, PHOTOS[int(rng.integers(0, 8))], seed * 10 + i))
    for i in range(2):
        cases.append(hf_patch_case(PHOTOS[int(rng.integers(0, 8))], seed * 10 + i))
    for s in [(1, 0), (0, -1), (-1, 1)]:
        cases.append(shift_case(PHOTOS[int(rng.integers(0, 3))], s, seed))
    for prob in ["black", "white", "uniform", "nonfinite"]:
        cases.append(degenerate_case(prob, seed))
    return cases
