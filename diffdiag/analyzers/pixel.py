"""Pixel-space analyzers: error heatmap, anomaly boxes, noisy patches, crop offsets, degenerate samples.

Images are float arrays in [0, 1], shape (H, W) or (H, W, C); pairs have the
same shape. Boxes are ``[x0, y0, x1, y1]`` with exclusive ends (docs/CONTRACT.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter

from .robust import robust_scale
from .spectral import to_gray


def error_map(output: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Absolute error averaged over channels.

    Parameters
    ----------
    output, reference : ndarray, shape (H, W) or (H, W, C)
        The pair, float in [0, 1], same shape.

    Returns
    -------
    ndarray of float32, shape (H, W)
        ``mean_c |output - reference|`` (non-finite values count as 1).
    """
    e = np.abs(np.asarray(output, np.float32) - np.asarray(reference, np.float32))
    if e.ndim == 3:
        e = e.mean(axis=2, dtype=np.float32)
    if not np.isfinite(e).all():
        e = np.where(np.isfinite(e), e, np.float32(1.0))
    return e.astype(np.float32, copy=False)


def heatmap(output: np.ndarray, reference: np.ndarray, *, scale: float = 4.0) -> np.ndarray:
    """Error heatmap for display: ``clip(scale * |output − reference|, 0, 1)``.

    Parameters
    ----------
    output, reference : ndarray, shape (H, W) or (H, W, C)
        The pair, float in [0, 1], same shape.
    scale : float
        Gain (``--heatmap-scale``, unitless); 4 maps an error of 0.25 to full scale.

    Returns
    -------
    ndarray of float32, shape (H, W), in [0, 1]
    """
    return np.clip(error_map(output, reference) * float(scale), 0.0, 1.0)


def anomaly_boxes(err: np.ndarray, *, min_area: int = 16, max_boxes: int = 8, sigma: float = 2.0
                  ) -> list[list[int]]:
    """Box the regions where the error map has strong structure (Sobel + connected components).

    The Sobel magnitude of the smoothed error map is thresholded at its median
    plus 6 robust standard deviations; connected components
    (:func:`skimage.measure.label`) larger than ``min_area`` px are boxed
    (:func:`skimage.measure.regionprops`), largest first.

    Parameters
    ----------
    err : ndarray, shape (H, W)
        Error map (:func:`error_map`), intensity units.
    min_area : int
        Smallest component boxed, px.
    max_boxes : int
        At most this many boxes.
    sigma : float
        Gaussian smoothing of the error map before the Sobel filter, px.

    Returns
    -------
    list of [x0, y0, x1, y1]
        Pixel boxes, exclusive ends, largest component first.
    """
    from skimage.filters import sobel
    from skimage.measure import label, regionprops

    s = sobel(gaussian_filter(np.asarray(err, np.float32), sigma))
    sample = s.ravel()[:: max(1, s.size // 65_536)]
    med = float(np.median(sample))
    mad = robust_scale(sample) + 1e-6
    mask = s > max(med + 6 * mad, 0.004)
    if not mask.any():
        return []
    props = sorted(regionprops(label(mask)), key=lambda p: -p.area)
    out = []
    for p in props[:max_boxes]:
        if p.area < min_area:
            break
        y0, x0, y1, x1 = p.bbox
        out.append([int(x0), int(y0), int(x1), int(y1)])
    return out


def _hf(g: np.ndarray) -> np.ndarray:
    """High-frequency residual: image minus its 3×3 box blur."""
    return g - uniform_filter(g, 3, mode="reflect")


def hf_energy(g: np.ndarray, *, window: int = 15) -> np.ndarray:
    """Local high-frequency energy: mean of the squared fine-scale residual over a window.

    Parameters
    ----------
    g : ndarray, shape (H, W)
        Grey image, intensity units.
    window : int
        Side of the averaging window (px).

    Returns
    -------
    ndarray of float32, shape (H, W)
        Mean squared residual (intensity units squared).
    """
    h = _hf(np.asarray(g, np.float32))
    return uniform_filter(h * h, window, mode="reflect").astype(np.float32)


def _grid_energy(x: np.ndarray, window: int, st: int) -> np.ndarray:
    """Mean of x² over ``window``-px windows, sampled every ``st`` px (block means, then a box filter)."""
    h, w = x.shape
    hh, ww = h // st * st, w // st * st
    sq = x[:hh, :ww] * x[:hh, :ww]
    blocks = sq.reshape(hh // st, st, ww // st, st).sum(axis=3).sum(axis=1) / float(st * st)
    k = max(1, int(round(window / st)))
    return uniform_filter(blocks, k, mode="reflect")


@dataclass(frozen=True)
class NoisePatch:
    """A region of excess high-frequency energy.

    Attributes
    ----------
    bbox : list of int
        [x0, y0, x1, y1].
    ratio : float
        Median excess HF energy inside the box over the frame's typical level.
    rms : float
        RMS of the excess fine-scale signal inside the box (intensity units).
    area_fraction : float
        Box area over frame area.
    """

    bbox: list[int]
    ratio: float
    rms: float
    area_fraction: float


def noise_patches(output: np.ndarray, reference: np.ndarray | None = None, *, window: int = 15,
                  min_ratio: float = 6.0, min_rms: float = 0.015, max_patches: int = 4,
                  min_area: int = 900) -> list[NoisePatch]:
    """Find patches of high-frequency noise.

    With a reference, a pixel counts where the output has *more* local
    fine-scale energy than the reference (noise adds energy; blur and JPEG
    remove it), by ``min_ratio`` × the frame's typical level (a local excess,
    not grain spread everywhere), and where the error's energy exceeds a third
    of the reference's own (not texture the re-rendering merely changed).
    Alone, the image's finest-scale energy must exceed its mid-scale energy
    (white noise is flat in frequency, photo texture is not) and its typical
    level ``min_ratio`` ×.

    Patches with a box smaller than ``min_area`` px (about 30×30) are ignored.

    Parameters
    ----------
    output : ndarray, shape (H, W) or (H, W, C)
        The image (a pair's output), float in [0, 1].
    reference : ndarray, same shape as ``output``, optional
        The pair's reference; None to judge ``output`` alone.
    window : int
        Side of the energy window, px (images smaller than 3 windows are skipped).
    min_ratio : float
        Least excess energy over the frame's typical level (unitless ratio).
    min_rms : float
        Least RMS of the excess fine-scale signal (intensity units, 0..1).
    max_patches : int
        At most this many patches.
    min_area : int
        Smallest box, px².

    Returns
    -------
    list of NoisePatch
        Largest first; boxes in px.
    """
    from skimage.filters import apply_hysteresis_threshold
    from skimage.measure import label, regionprops

    out_g = to_gray(output)
    out_g = np.where(np.isfinite(out_g), out_g, 0).astype(np.float32)
    h, w = out_g.shape
    if h < 3 * window or w < 3 * window:
        return []
    st = max(1, window // 5)  # energy maps are window averages: decide on a grid of stride st
    if reference is not None:
        ref_g = to_gray(reference)
        h_out, h_ref = _hf(out_g), _hf(ref_g)
        h_err = h_out - h_ref

        def energy(x: np.ndarray) -> np.ndarray:
            return _grid_energy(x, window, st)

        e_err, e_ref = energy(h_err), energy(h_ref)
        # noise ADDS fine-scale energy; blur and JPEG remove it: use the excess over the reference
        excess = energy(h_out) - e_ref
        base = float(np.median(np.maximum(excess, 0))) + 0.25 * float(np.median(e_err)) + 1e-7
        # hysteresis: seeds at min_ratio x the typical level, grown down to half of it
        ok = (e_err > 0.33 * e_ref) & (excess > 0.5 * min_rms ** 2)
        mask = apply_hysteresis_threshold(np.where(ok, excess, 0), 0.5 * min_ratio * base, min_ratio * base)
        mask &= excess > 0.5 * min_rms ** 2
        ratio_map = excess / base
        amp_map = np.maximum(excess, 0)
    else:
        e1 = _grid_energy(_hf(out_g), window, st)
        mid = out_g - gaussian_filter(out_g, 1.5)
        e2 = _grid_energy(mid, window, st)
        base = float(np.median(e1)) + 1e-7
        mask = (e1 > min_ratio * base) & (e1 > 0.8 * e2) & (e1 > min_rms ** 2)
        ratio_map = e1 / base
        amp_map = e1
    if not mask.any():
        return []
    props = sorted(regionprops(label(mask)), key=lambda p: -p.area)
    patches = []
    for p in props[:max_patches]:
        if p.area * st * st < window * window:
            break
        y0, x0, y1, x1 = p.bbox
        sl = (slice(y0, y1), slice(x0, x1))
        ratio, rms = float(np.median(ratio_map[sl])), float(np.sqrt(np.median(amp_map[sl])))
        y0, x0, y1, x1 = y0 * st, x0 * st, min(h, y1 * st), min(w, x1 * st)
        if (y1 - y0) * (x1 - x0) < min_area:
            continue
        # the energy map is a window average: shrink the box by half a window where it bled out
        m = window // 2
        x0, y0 = min(x0 + m // 2, x1 - 1), min(y0 + m // 2, y1 - 1)
        x1, y1 = max(x1 - m // 2, x0 + 1), max(y1 - m // 2, y0 + 1)
        patches.append(NoisePatch([int(x0), int(y0), int(x1), int(y1)], ratio, rms,
                                  (x1 - x0) * (y1 - y0) / (h * w)))
    return patches


@dataclass(frozen=True)
class Offset:
    """Translation between a reference and an output.

    Attributes
    ----------
    shift_px : list of float
        [dy, dx] with ``output(y, x) ≈ reference(y - dy, x - dx)`` (docs/CONTRACT.md §3).
    error_before, error_after : float
        Mean absolute error of the pair as given, and after undoing the shift.
    improvement : float
        ``1 - error_after / error_before``.
    """

    shift_px: list[float]
    error_before: float
    error_after: float
    improvement: float


def crop_offset(output: np.ndarray, reference: np.ndarray, *, upsample: int = 1, margin: int = 4,
                max_side: int = 1024) -> Offset:
    """Estimate the translation of ``output`` against ``reference`` by phase correlation.

    Uses :func:`skimage.registration.phase_cross_correlation` on the grey
    images (whole pixels by default; ``upsample`` > 1 for sub-pixel), then measures how much undoing the
    (rounded) shift reduces the error over the interior (``margin`` px cut).

    Parameters
    ----------
    output, reference : ndarray, shape (H, W) or (H, W, C)
        The pair, float in [0, 1], same shape.
    upsample : int
        Sub-pixel precision: the shift is found to 1 / ``upsample`` px.
    margin : int
        Border left out when the error is compared, px (at least the shift + 1).
    max_side : int
        The shift is measured on a central crop of at most this side, px.

    Returns
    -------
    Offset
        ``shift_px = [dy, dx]``: output(y, x) ≈ reference(y − dy, x − dx).
    """
    from skimage.registration import phase_cross_correlation

    a = to_gray(reference)
    b = to_gray(output)
    a = np.where(np.isfinite(a), a, 0).astype(np.float32)
    b = np.where(np.isfinite(b), b, 0).astype(np.float32)
    # shift that registers `a` onto `b`: b(y, x) ≈ a(y - dy, x - dx); a global translation is
    # measured as well on a central crop of at most max_side² px (4x cheaper at 2048²)
    h0, w0 = a.shape
    cy, cx = max(0, (h0 - max_side) // 2), max(0, (w0 - max_side) // 2)
    crop = (slice(cy, cy + min(h0, max_side)), slice(cx, cx + min(w0, max_side)))
    shift, _, _ = phase_cross_correlation(b[crop], a[crop], upsample_factor=upsample, normalization=None)
    dy, dx = float(shift[0]), float(shift[1])
    iy, ix = int(round(dy)), int(round(dx))
    m = max(margin, abs(iy) + 1, abs(ix) + 1)
    h, w = a.shape
    if h <= 2 * m + 2 or w <= 2 * m + 2:
        return Offset([dy, dx], 0.0, 0.0, 0.0)
    bi = b[m:h - m, m:w - m]
    before = float(np.mean(np.abs(bi - a[m:h - m, m:w - m])))
    after = float(np.mean(np.abs(bi - a[m - iy:h - m - iy, m - ix:w - m - ix])))
    imp = 0.0 if before <= 0 else 1.0 - after / before
    return Offset([dy, dx], before, after, imp)


#: a value counts as clipped within half a code value of 8-bit black or white
CLIP_EPS = 0.5 / 255
#: saturated: at least this share of the values pinned at the two ends together ...
SATURATED_SHARE = 0.2
#: ... at least this share at each end (an over-driven output clips both ways; a white background only one) ...
SATURATED_EACH = 0.03
#: ... and at least this share of mid-tones (a two-level drawing, line art or a binary mask is its design)
SATURATED_MIDTONES = 0.25


def clip_shares(image: np.ndarray) -> tuple[float, float]:
    """Shares of the (finite) values of ``image`` pinned at black and at white (within :data:`CLIP_EPS`).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Float in [0, 1]; every channel value counts.

    Returns
    -------
    (low, high) : tuple of float
        Fractions (0..1) of the values ``<= CLIP_EPS`` and ``>= 1 - CLIP_EPS``.
    """
    a = np.asarray(image, np.float32).reshape(-1)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0, 0.0
    return float((a <= CLIP_EPS).mean()), float((a >= 1.0 - CLIP_EPS).mean())


def degenerate_problem(image: np.ndarray) -> tuple[str | None, dict[str, float]]:
    """Classify a degenerate sample (the usual fp16-VAE failure, or an over-driven, exploded model).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Float in [0, 1].

    Returns
    -------
    (problem, stats)
        problem: ``"nonfinite"`` (any NaN/inf), ``"black"`` (99.5 % of pixels
        below 0.03), ``"white"`` (99.5 % above 0.97), ``"uniform"`` (the
        spread — 99.5th minus 0.5th percentile per channel — under 0.02),
        ``"saturated"`` (values pinned at both ends of the range: at least
        :data:`SATURATED_SHARE` (20 %) of the channel values clipped at black
        or white together, :data:`SATURATED_EACH` (3 %) at each end, with at
        least :data:`SATURATED_MIDTONES` (25 %) of the values between 0.05 and
        0.95 — photographs clip under 12 % and at one end; a two-level drawing
        has no mid-tones), or None. Percentiles and shares are taken over a
        spread sample of ≤ 65 536 pixels.
        stats: ``nonfinite_fraction``, ``mean``, ``spread``, ``clipped_low``, ``clipped_high``, ``midtones``
        (shares 0..1).
    """
    a = np.asarray(image, np.float32)
    finite = np.isfinite(a)
    frac_bad = float(1.0 - finite.mean()) if a.size else 0.0
    if frac_bad > 0:
        return "nonfinite", {"nonfinite_fraction": frac_bad}
    a2 = a.reshape(-1, a.shape[2]) if a.ndim == 3 else a.reshape(-1, 1)
    if a2.shape[0] > 65_536:  # percentiles of a spread sample are plenty for these tests
        a2 = a2[:: a2.shape[0] // 65_536 + 1]
    lo, hi = np.percentile(a2, [0.5, 99.5], axis=0)
    spread = float(np.max(hi - lo))
    low, high = clip_shares(a2)
    mid = float(((a2 > 0.05) & (a2 < 0.95)).mean())
    stats = {"nonfinite_fraction": 0.0, "mean": float(a2.mean()), "spread": spread, "clipped_low": low,
             "clipped_high": high, "midtones": mid}
    if float(hi.max()) < 0.03:
        return "black", stats
    if float(lo.min()) > 0.97:
        return "white", stats
    if spread < 0.02:
        return "uniform", stats
    if low + high >= SATURATED_SHARE and min(low, high) >= SATURATED_EACH and mid >= SATURATED_MIDTONES:
        return "saturated", stats
    return None, stats
