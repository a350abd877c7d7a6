"""Labelled training-set cases: healthy photo sets and controlled dataset faults.

Images are random crops and rescales of scikit-image's bundled photos and
textures (real pictures); faults are injected the way they happen in practice:
seamlessly tiled textures (``np.tile`` of a crop), masks that are blurred /
saved lossy, empty, full, resized, shifted or flipped, unreadable, and a
darkened or washed-out subset of the images.

Every generator returns a :class:`DatasetCase`; ``write_dataset_case`` puts it
on disk. ``truth`` lists the findings a correct analysis reports, with
docs/CONTRACT.md §3 locations (file names relative to the dataset folder; tests
compare by file name).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

#: natural photos and textures for healthy sets (documents, charts and the moon are left out: a training
#: set of photos does not mix them in, and their flat histograms are legitimate outliers)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "immunohistochemistry",
          "coins", "grass", "gravel", "brick")
TEXTURES = ("brick", "grass", "gravel", "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
MASK_PROBLEMS = ("non_binary", "empty", "full", "size_mismatch", "misaligned", "unreadable")
#: every scikit-image photo and texture that ships with the package (no download); graphics
#: (checkerboard, logo, colour wheel, binary blobs, horse, phantom) are not photos and are left out
ALL_PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "grass",
              "gravel", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina",
              "rocket", "text", "stereo_motorcycle")


@dataclass
class DatasetCase:
    """A dataset folder (and masks) with the findings it should produce.

    Attributes
    ----------
    name : str
    images : dict
        Relative path (suffix picks the format: .png/.jpg/.webp) -> uint8 array (H, W, 3) or (H, W).
    masks : dict
        Image stem -> uint8 mask array, or ``bytes`` written verbatim (an unreadable file).
    truth : list of dict
        ``{"id", "location"}``; ``location["file"]``/``["files"]`` hold relative paths.
    """

    name: str
    images: dict[str, np.ndarray]
    masks: dict[str, Any] = field(default_factory=dict)
    truth: list[dict[str, Any]] = field(default_factory=list)


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.uint8)


def photo_crop(rng: np.random.Generator, size: int | tuple[int, int], names: tuple[str, ...] = PHOTOS
               ) -> np.ndarray:
    """A random crop of a random photo, rescaled to ``size`` (side or (H, W)); uint8 (H, W, 3)."""
    from skimage.transform import resize

    h_out, w_out = (size, size) if isinstance(size, int) else size
    img = _photo(names[int(rng.integers(len(names)))])
    h, w = img.shape[:2]
    frac = rng.uniform(0.45, 1.0)
    ch = max(16, int(min(h, h_out / w_out * w) * frac))
    cw = max(16, int(ch * w_out / h_out))
    cw = min(cw, w)
    ch = min(ch, h)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    crop = img[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out = resize(crop, (h_out, w_out), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0, 255).astype(np.uint8)


def tiled_texture(rng: np.random.Generator, size: int, period: tuple[int, int]) -> np.ndarray:
    """A seamless repeat (``np.tile``) of one crop of a photo/texture (one with an RMS contrast of at
    least 0.03 and a neighbour correlation of at least 0.3, so that it is a texture, not a flat or
    JPEG-noise patch); uint8 (size, size, 3)."""
    from diffdiag.analyzers.dataset import garbage_stats

    py, px = period
    img = _photo(TEXTURES[int(rng.integers(len(TEXTURES)))])
    for _ in range(20):   # a crop with visible content (a flat patch tiled is a constant image, not a texture)
        y0 = int(rng.integers(0, img.shape[0] - py + 1))
        x0 = int(rng.integers(0, img.shape[1] - px + 1))
        tile = img[y0:y0 + py, x0:x0 + px]
        lum = (tile.astype(np.float64) @ [0.2126, 0.7152, 0.0722] if tile.ndim == 3 else tile) / 255.0
        if lum.std() >= 0.03 and garbage_stats(lum)["corr"] >= 0.3:
            break
    reps = (size // py + 2, size // px + 2, 1)
    big = np.tile(tile, reps)
    oy, ox = int(rng.integers(0, py)), int(rng.integers(0, px))
    return np.ascontiguousarray(big[oy:oy + size, ox:ox + size])


def _object_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An off-centre ellipse (an 'object'), bool (h, w), covering 5..30% of the frame."""
    yy, xx = np.mgrid[0:h, 0:w]
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    cy = rng.uniform(ry + 2, h - ry - 2)
    cx = rng.uniform(rx + 2, w * 0.5) if rng.random() < 0.5 else rng.uniform(w * 0.5, w - rx - 2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _composite(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo with an object from another photo pasted in; returns (image uint8, mask uint8 0/255)."""
    bg = photo_crop(rng, size).astype(np.float32)
    fg = photo_crop(rng, size).astype(np.float32)
    # make the object stand out as real objects do (different tone than the background)
    fg = np.clip(fg * rng.uniform(0.4, 0.7) + rng.choice([0.0, 110.0]), 0, 255)
    m = _object_mask(rng, size, size)
    img = np.where(m[..., None], fg, bg).astype(np.uint8)
    return img, (m.astype(np.uint8) * 255)


def _name(i: int, fmt: str, sub: str = "") -> str:
    return f"{sub}img_{i:04d}.{fmt}"


def healthy_dataset(seed: int = 0, n: int = 24, size: int | None = None, formats: tuple[str, ...] = ("png", "jpg"),
                    with_masks: bool = False) -> DatasetCase:
    """A varied photo set (crops/rescales of real photos; sizes 96..256 px unless ``size``), no finding expected.

    With ``with_masks`` every image is a composite with one pasted object and a
    correct mask.
    """
    rng = np.random.default_rng(seed)
    images: dict[str, np.ndarray] = {}
    masks: dict[str, Any] = {}
    for i in range(n):
        s = int(size or rng.integers(96, 257))
        fmt = formats[i % len(formats)]
        name = _name(i, fmt, "sub/" if i % 5 == 4 else "")
        if with_masks:
            img, m = _composite(rng, s)
            masks[Path(name).stem] = m
        else:
            img = photo_crop(rng, s)
        images[name] = img
    return DatasetCase(f"healthy_dataset_s{seed}", images, masks, [])


def tiled_dataset(seed: int = 0, n: int = 16, n_tiled: int = 3, size: int = 192,
                  periods: list[tuple[int, int]] | None = None) -> DatasetCase:
    """Photo crops mixed with seamlessly tiled textures (np.tile of a crop).

    Periods default to random non-powers of two in 20..size/3 per axis. Truth:
    one ``dataset_tiled_source`` per tiled file with ``period_px`` [py, px].
    """
    rng = np.random.default_rng(seed)
    case = healthy_dataset(seed + 500, n, size, formats=("png",))
    names = sorted(case.images)
    idx = sorted(rng.choice(len(names), n_tiled, replace=False).tolist())
    truth = []
    for j, i in enumerate(idx):
        if periods is not None:
            p = periods[j % len(periods)]
        else:
            p = tuple(int(v) for v in rng.integers(20, size // 3, size=2))
        case.images[names[i]] = tiled_texture(rng, size, p)
        truth.append({"id": "dataset_tiled_source", "location": {"file": names[i], "period_px": list(p)}})
    case.name = f"tiled_dataset_s{seed}"
    case.truth = truth
    return case


def _encode(img: np.ndarray, fmt: str, **kw: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


def corrupt_mask(rng: np.random.Generator, mask: np.ndarray, problem: str) -> Any:
    """Return a corrupted version of a valid 0/255 mask (an array, or bytes for ``unreadable``)."""
    from scipy import ndimage

    h, w = mask.shape
    if problem == "non_binary":
        if rng.random() < 0.5:
            return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 2.0), 0, 255).astype(np.uint8)
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(_encode(mask, "JPEG", quality=75))))
    if problem == "empty":
        return np.zeros_like(mask)
    if problem == "full":
        return np.full_like(mask, 255)
    if problem == "size_mismatch":
        from skimage.transform import resize

        f = rng.choice([0.5, 0.75, 1.25])
        out = resize(mask > 0, (max(8, int(h * f)), max(8, int(w * f))), order=0)
        return out.astype(np.uint8) * 255
    if problem == "misaligned":
        if rng.random() < 0.35:
            return np.ascontiguousarray(mask[:, ::-1])
        dy, dx = (int(v) for v in rng.integers(6, 14, size=2) * rng.choice([-1, 1], size=2) * max(1, h // 128))
        if rng.random() < 0.3:
            dy = 0
        return np.roll(mask, (dy, dx), axis=(0, 1))
    if problem == "unreadable":
        good = _encode(mask, "PNG")
        return good[: max(40, len(good) // 3)] if rng.random() < 0.5 else b"not an image at all\x00\x01"
    raise ValueError(problem)


def mask_problem_dataset(seed: int = 0, problem: str = "non_binary", n: int = 12, n_bad: int = 1,
                         size: int = 160) -> DatasetCase:
    """Composites with correct masks, except ``n_bad`` masks with ``problem``.

    Truth: one ``dataset_invalid_mask`` per bad mask (``file`` = the image, ``problem``).
    """
    rng = np.random.default_rng(seed)
    case = healthy_dataset(seed + 900, n, size, formats=("png",), with_masks=True)
    names = sorted(case.images)
    bad = sorted(rng.choice(len(names), n_bad, replace=False).tolist())
    truth = []
    for i in bad:
        stem = Path(names[i]).stem
        case.masks[stem] = corrupt_mask(rng, case.masks[stem], problem)
        truth.append({"id": "dataset_invalid_mask", "location": {"file": names[i], "problem": problem}})
    case.name = f"mask_{problem}_s{seed}"
    case.truth = truth
    return case


def darkened_dataset(seed: int = 0, n: int = 30, n_dark: int | None = None, factor: float | None = None
                     ) -> DatasetCase:
    """A varied photo set where a subset (default 4..7 images: a skew is a group, see
    ``diffdiag.analyzers.dataset.MIN_GROUP``) is darkened by 0.25..0.45.

    Truth: ``dataset_brightness_skew`` with the darkened files.
    """
    rng = np.random.default_rng(seed)
    case = healthy_dataset(seed + 300, n)
    names = sorted(case.images)
    k = int(n_dark or rng.integers(4, 8))
    f = float(factor or rng.uniform(0.25, 0.45))
    dark = sorted(rng.choice(len(names), k, replace=False).tolist())
    for i in dark:
        case.images[names[i]] = np.clip(case.images[names[i]].astype(np.float32) * f, 0, 255).astype(np.uint8)
    case.name = f"darkened_dataset_s{seed}"
    case.truth = [{"id": "dataset_brightness_skew", "location": {"files": [names[i] for i in dark]}}]
    return case


def low_contrast_dataset(seed: int = 0, n: int = 30, n_low: int | None = None, factor: float | None = None
                         ) -> DatasetCase:
    """A varied photo set where a subset (default 4..7 images) is washed out: contrast x 0.08..0.18 about
    the mean (a milder wash, x 0.25 and above, is within the spread of natural photos and textures:
    benchmarks/sensitivity.py measures where it is found).

    Truth: ``dataset_contrast_skew`` with those files.
    """
    rng = np.random.default_rng(seed)
    case = healthy_dataset(seed + 600, n)
    names = sorted(case.images)
    k = int(n_low or rng.integers(4, 8))
    f = float(factor or rng.uniform(0.08, 0.18))
    low = sorted(rng.choice(len(names), k, replace=False).tolist())
    for i in low:
        a = case.images[names[i]].astype(np.float32)
        case.images[names[i]] = np.clip(a.mean() + (a - a.mean()) * f, 0, 255).astype(np.uint8)
    case.name = f"low_contrast_dataset_s{seed}"
    case.truth = [{"id": "dataset_contrast_skew", "location": {"files": [names[i] for i in low]}}]
    return case


def write_dataset_case(case: DatasetCase, root: str | Path) -> tuple[Path, Path | None]:
    """Write images under ``root/images`` and masks (PNG) under ``root/masks``.

    Returns ``(images_dir, masks_dir or None)``.
    """
    from PIL import Image

    root = Path(root)
    img_dir = root / "images"
    for rel, arr in case.images.items():
        p = img_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}[p.suffix.lower().lstrip(".")]
        kw = {"quality": 92} if fmt in ("JPEG", "WEBP") else {}
        Image.fromarray(arr).save(p, format=fmt, **kw)
    if not case.masks:
        return img_dir, None
    mask_dir = root / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    for stem, m in case.masks.items():
        p = mask_dir / f"{stem}.png"
        if isinstance(m, bytes):
            p.write_bytes(m)
        else:
            Image.fromarray(np.asarray(m)).save(p, format="PNG")
    return img_dir, mask_dir
