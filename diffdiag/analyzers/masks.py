"""Mask validity (docs/CONTRACT.md §2: single channel or equal channels, two levels with 0,
the image's size, neither empty nor full) and mask-to-image alignment.

Problems use the ``dataset_invalid_mask`` vocabulary: ``non_binary``,
``empty``, ``full``, ``size_mismatch``, ``misaligned``, ``unreadable``.

*Misaligned* is defined by edges: an object mask's boundary lies on edges of
the image. The mean image-gradient magnitude along the mask boundary is
measured in place and for every shift up to ``max_shift`` of the frame, and
for the mask flipped left-right and up-down. The mask is misaligned when some
shift or flip puts its boundary on image edges clearly better than in place
(``ALIGN_GAIN`` times the in-place support, ``ALIGN_CONTRAST`` times the
support at a typical shift, and a robust z of at least ``PEAK_Z`` among all
shifts, so that a boundary on no edge at all — an inpainting box, a threshold
contour of a blurred copy — is never called misaligned), by at least 4 px and
4% of the side (a boundary traced on a blurred copy sits a pixel or two off).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .robust import robust_scale

PROBLEMS = ("non_binary", "empty", "full", "size_mismatch", "misaligned", "unreadable")
#: a shift/flip must raise the boundary's edge support by this factor to call the mask misaligned
ALIGN_GAIN = 1.5
#: ... and reach this multiple of the median support over all shifts (the boundary matches real edges)
ALIGN_CONTRAST = 1.5
#: a shift shorter than this fraction of the image side (or 4 px) is tolerance, not misalignment
MIN_SHIFT_FRACTION = 0.04
#: the better placement must stand out among all shifts: robust z of its support (median/MAD over the window)
PEAK_Z = 5.0


def mask_levels(mask: np.ndarray) -> tuple[np.ndarray | None, str | None, dict[str, Any]]:
    """Reduce a mask to one channel and check its levels.

    Parameters
    ----------
    mask : ndarray, shape (H, W) or (H, W, C)
        Any integer or float dtype.

    Returns
    -------
    binary : ndarray of bool, shape (H, W), or None
        Foreground (non-zero) when the mask is two-level.
    problem : str or None
        ``non_binary`` (unequal channels, more than two levels, or two levels
        without 0), ``empty`` or ``full``; None when valid.
    evidence : dict
        ``levels`` (number of distinct values, capped), ``coverage`` (foreground fraction).
    """
    m = np.asarray(mask)
    if m.ndim == 3:
        if m.shape[2] == 4:  # alpha carries no label unless it is the only varying channel
            rgb = m[..., :3]
            m = m[..., 3] if np.ptp(rgb) == 0 and np.ptp(m[..., 3]) > 0 else rgb
        if m.ndim == 3:
            if m.shape[2] > 1 and not all(np.array_equal(m[..., 0], m[..., i]) for i in range(1, m.shape[2])):
                return None, "non_binary", {"reason": "channels differ"}
            m = m[..., 0]
    if m.dtype.kind == "f":
        m = np.nan_to_num(m, nan=0.0)
    levels = np.unique(m[:: max(1, m.shape[0] // 512), :: max(1, m.shape[1] // 512)])
    if len(levels) <= 2:  # confirm on every pixel (subsampling can miss rare levels)
        levels = np.unique(m)
    ev: dict[str, Any] = {"levels": int(min(len(levels), 1000))}
    if len(levels) > 2 or (len(levels) == 2 and levels[0] != 0):
        ev["level_values"] = [float(v) for v in levels[:8]]
        return None, "non_binary", ev
    fg = m != 0
    cov = float(fg.mean())
    ev["coverage"] = round(cov, 6)
    if not fg.any():
        return fg, "empty", ev
    if fg.all():
        return fg, "full", ev
    return fg, None, ev


def _downscale_bool(a: np.ndarray, f: int) -> np.ndarray:
    if f <= 1:
        return a.astype(np.float32)
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float32)


def mask_alignment(gray: np.ndarray, fg: np.ndarray, *, max_shift: float = 0.1) -> dict[str, Any]:
    """Edge support of a mask's boundary in place, at every shift, and flipped.

    Parameters
    ----------
    gray : ndarray, shape (H, W) or (H, W, C)
        The image (luminance or colour, any range), same size as ``fg``;
        colour edges count (an object can differ from its background in hue only).
    fg : ndarray of bool, shape (H, W)
        Mask foreground.
    max_shift : float
        Largest shift searched, as a fraction of the image side (0..1).

    Returns
    -------
    dict
        ``misaligned`` (bool), ``support`` (in place; mean edge strength on the
        boundary over the image's median edge strength), ``best_support``,
        ``best_shift`` ``[dy, dx]`` px (image(y, x) edges ≈ mask(y − dy, x − dx)
        boundary: shifting the mask by it aligns it), ``flip`` (None, ``"lr"`` or ``"ud"``),
        ``median_support``.
    """
    import scipy.fft as sfft
    from scipy import ndimage

    g = np.asarray(gray, np.float32)
    if g.ndim == 2:
        g = g[..., None]
    f = max(1, int(np.ceil(max(g.shape[:2]) / 256)))
    if f > 1:
        h, w = (g.shape[0] // f) * f, (g.shape[1] // f) * f
        g = g[:h, :w].reshape(h // f, f, w // f, f, g.shape[2]).mean(axis=(1, 3))
    m = _downscale_bool(fg, f)[: g.shape[0], : g.shape[1]] >= 0.5
    g = g[: m.shape[0], : m.shape[1]]
    grad = np.sqrt(sum(ndimage.sobel(g[..., c], 0) ** 2 + ndimage.sobel(g[..., c], 1) ** 2
                       for c in range(g.shape[2])))
    boundary = m ^ ndimage.binary_erosion(m, iterations=1, border_value=1)
    nb = int(boundary.sum())
    out: dict[str, Any] = {"misaligned": False, "support": 0.0, "best_support": 0.0, "best_shift": [0, 0],
                           "flip": None, "median_support": 0.0, "scale": f}
    if nb < 8 or not np.isfinite(grad).all() or grad.max() <= 0:
        return out
    grad = grad / (np.median(grad) + 1e-6 * grad.max() + 1e-12)
    hh, ww = grad.shape
    fg_ = sfft.rfft2(grad, s=(2 * hh, 2 * ww))
    fb = sfft.rfft2(boundary.astype(np.float32), s=(2 * hh, 2 * ww))
    corr = sfft.irfft2(fg_ * np.conj(fb), s=(2 * hh, 2 * ww)) / nb  # corr[dy, dx] = mean grad at boundary + (dy, dx)
    sy, sx = max(2, int(max_shift * hh)), max(2, int(max_shift * ww))
    dys = np.r_[0:sy + 1, -sy:0]
    dxs = np.r_[0:sx + 1, -sx:0]
    win = corr[np.ix_(dys % (2 * hh), dxs % (2 * ww))]
    support = float(corr[0, 0])
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    best = float(win[iy, ix])
    shift = [int(dys[iy]) * f, int(dxs[ix]) * f]
    med = float(np.median(win))
    spread = robust_scale(win) + 1e-9
    peak_z = (best - med) / spread
    flips = {"lr": boundary[:, ::-1], "ud": boundary[::-1, :]}
    flip_support = {k: float((grad * b).sum() / nb) for k, b in flips.items()}
    out.update(support=round(support, 4), best_support=round(best, 4), best_shift=shift, peak_z=round(peak_z, 2),
               median_support=round(med, 4), flip_support={k: round(v, 4) for k, v in flip_support.items()})
    strong = max(best, *flip_support.values())
    if strong < ALIGN_CONTRAST * med or strong < ALIGN_GAIN * support or (strong - med) / spread < PEAK_Z:
        return out
    if max(flip_support.values()) > best and (flips["lr"] != boundary).any():
        k = max(flip_support, key=flip_support.get)
        if flip_support[k] >= ALIGN_GAIN * support:
            out.update(misaligned=True, flip=k, best_shift=[0, 0])
            return out
    # a boundary traced on a blurred copy sits a pixel or two off the sharp edge: that is not a
    # misalignment; a shift must reach MIN_SHIFT_FRACTION of the side (and 4 px)
    min_shift = max(4.0, MIN_SHIFT_FRACTION * max(fg.shape))
    if float(np.hypot(*shift)) >= min_shift and best >= ALIGN_GAIN * support and peak_z >= PEAK_Z:
        out["misaligned"] = True
    return out


def check_mask(mask: np.ndarray, image_shape: tuple[int, int], gray: np.ndarray | None = None
               ) -> tuple[str | None, dict[str, Any]]:
    """Validate one mask against its image.

    Parameters
    ----------
    mask : ndarray, shape (H, W) or (H, W, C)
        Any integer or float dtype.
    image_shape : (int, int)
        The image's (H, W) in pixels.
    gray : ndarray, shape (H, W) or (H, W, C), optional
        The image (luminance or colour) for the alignment test (skipped when None).

    Returns
    -------
    problem : str or None
        One of :data:`PROBLEMS` (the first that applies, in the order
        size_mismatch, non_binary, empty, full, misaligned), or None.
    evidence : dict
        Sizes as ``[W, H]`` px on a size mismatch; else :func:`mask_levels`' evidence
        plus ``alignment`` (:func:`mask_alignment`) when ``gray`` was given.
    """
    m = np.asarray(mask)
    if m.shape[:2] != tuple(image_shape):
        return "size_mismatch", {"mask_size": [int(m.shape[1]), int(m.shape[0])],
                                 "image_size": [int(image_shape[1]), int(image_shape[0])]}
    fg, problem, ev = mask_levels(m)
    if problem is not None or fg is None:
        return problem, ev
    if gray is not None:
        al = mask_alignment(gray, fg)
        ev["alignment"] = al
        if al["misaligned"]:
            return "misaligned", ev
    return None, ev
