"""Dataset-health analyzers: per-image features and set-level outliers.

Per image (computed where the image is decoded, so only a few numbers per
image are kept):

- :func:`luminance_stats` — mean luminance, RMS contrast and the black/white
  points (1st/99th percentiles) on a downscaled copy, in [0, 1];
- :func:`garbage_stats` — shares of pixels at black / white and the lag-1
  neighbour correlation (full resolution), which :func:`classify_garbage`
  turns into ``constant`` / ``noise`` / ``clipped``;
- :func:`tiling_features` — the tile period along y and x from the spectral
  toolkit (whitened autocorrelation with octave guard, harmonic power against
  the local background) on a full-resolution centre crop.

Over the set:

- :func:`robust_outliers` — Iglewicz–Hoaglin modified z-scores (median and
  MAD), |z| > 3.5, plus a minimum effect size; brightness is judged on the
  log white point (:func:`exposure`) and contrast on log(1 − black/white
  point) (:func:`black_point_contrast`), which separate a darkened or
  washed-out subset from the wide natural spread of mean luminance;
- :func:`classify_tiling` — ``seamless`` (exact repetition: whitened
  autocorrelation ≥ :data:`SEAMLESS_STRENGTH` at the period, the signature of
  ``np.tile`` of a crop or a tiling texture export) is a warning; a
  significant but inexact period (a brick wall, a fence) is info.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .robust import MAD_TO_SIGMA

#: whitened autocorrelation at the period above which a repetition is called exact (seamless tiling)
SEAMLESS_STRENGTH = 0.85
#: Iglewicz–Hoaglin modified z-score threshold for outliers
OUTLIER_Z = 3.0
#: a brightness outlier's white point must also differ from the median by this factor
MIN_BRIGHTNESS_RATIO = 1.6
#: a contrast outlier's (1 - black/white point) must also differ from the median by this factor
MIN_CONTRAST_RATIO = 1.8
#: tiling is searched on a centre crop of at most this many pixels per side (full resolution):
#: tiles up to TILE_CROP / 2 px (two repeats) are found, at a bounded cost per image
TILE_CROP = 256
#: stripes are also searched on the mean profiles of this many strips (see :func:`tiling_features`)
BANDS = 8
#: an image whose RMS contrast (luminance, 0..1) is below this is constant (about 2/255: no content)
CONSTANT_STD = 0.008
#: an image whose lag-1 neighbour correlation is below this is noise (pure, JPEG-compressed or coloured
#: pixel noise: |corr| < 0.05; natural photos and textures: > 0.5, small tiles of fine or noisy texture
#: down to ~0.15)
NOISE_CORR = 0.1
#: an image with at least this share of its pixels at pure black or pure white is heavily clipped ...
#: (scikit-image photos and textures: at most 0.21 together; a phantom on black: 0.58 black, 0.04 white;
#: two-level graphics -- silhouettes, checkerboards -- are clipped by this measure)
CLIPPED_SHARE = 0.5
#: ... when both ends hold at least this share each (a blown-up contrast), or one end alone holds CLIPPED_ONE_END
CLIPPED_BOTH_ENDS = 0.1
#: one end alone (an all-white or all-black blow-out) holding this share of the pixels is heavily clipped
CLIPPED_ONE_END = 0.9
#: luminance within this of 0 or 1 counts as clipped (half an 8-bit level)
CLIP_TOL = 0.5 / 255


def luminance(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma in [0, 1].

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        uint8 (0..255), uint16 (0..65535), another integer type (0..its max)
        or float (already in [0, 1]).

    Returns
    -------
    ndarray, shape (H, W), float32
        Luminance in [0, 1].
    """
    from .spectral import to_gray

    a = np.asarray(image)
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(a.dtype, 1.0)
    if a.dtype.kind in "iu" and a.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        scale = float(max(1, np.iinfo(a.dtype).max))
    return to_gray(a) / np.float32(scale)


def luminance_stats(lum: np.ndarray) -> dict[str, float]:
    """Brightness and contrast statistics of one image.

    Parameters
    ----------
    lum : ndarray, shape (H, W)
        Luminance in [0, 1] (a downscaled copy is fine).

    Returns
    -------
    dict
        ``mean`` (mean luminance), ``std`` (RMS contrast), ``p01`` and ``p99``
        (black and white points), finite pixels only (NaN when none).
    """
    v = lum[np.isfinite(lum)].ravel()
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "p01": float("nan"), "p99": float("nan")}
    k1, k99 = int(0.01 * (v.size - 1)), int(0.99 * (v.size - 1))
    part = np.partition(v, (k1, k99))
    return {"mean": float(v.mean()), "std": float(v.std()), "p01": float(part[k1]), "p99": float(part[k99])}


def garbage_stats(lum: np.ndarray) -> dict[str, float]:
    """Per-image numbers that tell noise, constant and clipped images (see :func:`classify_garbage`).

    Parameters
    ----------
    lum : ndarray, shape (H, W)
        Luminance in [0, 1], full resolution (subsampling would lower the neighbour correlation).

    Returns
    -------
    dict
        ``clip_lo`` / ``clip_hi``: share (0..1) of the finite pixels within :data:`CLIP_TOL` of
        black / white; ``corr``: lag-1 neighbour correlation (unitless, −1..1; mean of the
        horizontal and vertical Pearson correlations; NaN for a constant or 1-pixel image).
    """
    a = np.asarray(lum, np.float64)
    ok = np.isfinite(a)
    n = int(ok.sum())
    if n == 0:
        return {"clip_lo": float("nan"), "clip_hi": float("nan"), "corr": float("nan")}
    a = np.where(ok, a, np.nanmean(np.where(ok, a, np.nan)))
    out = {"clip_lo": float((ok & (a <= CLIP_TOL)).sum() / n), "clip_hi": float((ok & (a >= 1 - CLIP_TOL)).sum() / n)}
    cs = []
    for x, y in ((a[:, :-1], a[:, 1:]), (a[:-1, :], a[1:, :])):
        if x.size < 2:
            continue
        x, y = x - x.mean(), y - y.mean()
        den = float(np.sqrt((x * x).sum() * (y * y).sum()))
        if den > 0:
            cs.append(float((x * y).sum()) / den)
    out["corr"] = float(np.mean(cs)) if cs else float("nan")
    return out


def classify_garbage(std: float, clip_lo: float, clip_hi: float, corr: float, *,
                     constant_std: float = CONSTANT_STD, noise_corr: float = NOISE_CORR,
                     clipped_share: float = CLIPPED_SHARE, both_ends: float = CLIPPED_BOTH_ENDS,
                     one_end: float = CLIPPED_ONE_END) -> str | None:
    """``"constant"``, ``"noise"``, ``"clipped"`` or None (a usable image), in that order of precedence.

    Parameters
    ----------
    std : float
        RMS contrast of the luminance (0..1).
    clip_lo, clip_hi : float
        Share of the pixels at black / white (0..1), from :func:`garbage_stats`.
    corr : float
        Lag-1 neighbour correlation (unitless); pure noise ~0, natural images > 0.5.
    constant_std : float
        Below this RMS contrast (luminance units) the image is constant.
    noise_corr : float
        Below this neighbour correlation the image is noise.
    clipped_share : float
        Least share of clipped pixels (both ends together) for ``clipped`` ...
    both_ends : float
        ... with at least this share at each end;
    one_end : float
        or at least this share at one end alone.

    Returns
    -------
    str or None
        The problem; None for a usable image (also when ``std`` is not finite).
    """
    if not np.isfinite(std):
        return None
    if std < constant_std:
        return "constant"
    if np.isfinite(corr) and corr < noise_corr:
        return "noise"
    lo, hi = float(np.nan_to_num(clip_lo)), float(np.nan_to_num(clip_hi))
    if (lo + hi >= clipped_share and min(lo, hi) >= both_ends) or max(lo, hi) >= one_end:
        return "clipped"
    return None


def exposure(p99: np.ndarray) -> np.ndarray:
    """Brightness feature: log of the white point (99th-percentile luminance).

    Darkening an image by a factor f moves it by log f; natural photos keep
    their white point high (exposure puts highlights near the top), so their
    spread is small even when their mean luminance varies a lot.

    Parameters
    ----------
    p99 : ndarray, shape (n,)
        White point (99th-percentile luminance, 0..1) of each image.

    Returns
    -------
    ndarray, shape (n,)
        ``log(max(p99, 1e-3))`` (natural log of luminance).
    """
    return np.log(np.maximum(np.asarray(p99, np.float64), 1e-3))


def black_point_contrast(p01: np.ndarray, p99: np.ndarray) -> np.ndarray:
    """Contrast feature: log(1 − black point / white point).

    Invariant to darkening (both points scale together) and collapsing when an
    image is washed out (the black point rises towards the white point).

    Parameters
    ----------
    p01, p99 : ndarray, shape (n,)
        Black and white points (1st/99th-percentile luminance, 0..1) of each image.

    Returns
    -------
    ndarray, shape (n,)
        ``log(1 − p01 / p99)``, clipped to [log 1e-3, 0].
    """
    p01 = np.asarray(p01, np.float64)
    p99 = np.maximum(np.asarray(p99, np.float64), 1e-3)
    return np.log(np.clip(1.0 - p01 / p99, 1e-3, 1.0))


def tiling_features(lum: np.ndarray, *, threshold: float | None = None, crop: int = TILE_CROP,
                    workers: int | None = 1) -> dict[str, Any]:
    """Tile period of one image along y and x.

    Parameters
    ----------
    lum : ndarray, shape (H, W)
        Full-resolution luminance in [0, 1].
    threshold : float, optional
        ``--fft-threshold`` (harmonic-to-background power ratio, unitless);
        default: the spectral toolkit's.
    crop : int
        Side of the centre crop analysed, px (keeps the cost bounded on large images).
    workers : int, optional
        FFT threads (1 by default: the dataset scan already runs one process per core).

    Returns
    -------
    dict
        ``period`` [py, px] in px (None per axis without a significant period),
        ``bands`` [py, px] in px (the periods found only as stripes: in the mean
        profiles of :data:`BANDS` strips, e.g. a striped augmentation overlay),
        ``strength`` [sy, sx] and ``snr`` [y, x] of the 2-D estimate.
    """
    from .spectral import estimate_period, tile_period

    h, w = lum.shape
    y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    c = lum[y0:y0 + crop, x0:x0 + crop]
    ey, ex = tile_period(c, threshold=threshold, workers=workers)
    period = [int(e.period) if e.significant and e.period else None for e in (ey, ex)]
    bands: list[int | None] = [None, None]
    for ax, arr in ((0, c.T), (1, c)):
        if period[ax] is not None:
            continue
        # bands (stripes): the mean profile of BANDS strips along the other axis keeps a stripe
        # pattern and averages the picture's own content away
        nb = BANDS if arr.shape[0] >= 8 * BANDS else 1
        rows = (arr.shape[0] // nb) * nb
        prof = arr[:rows].reshape(nb, rows // nb, arr.shape[1]).mean(axis=1)
        e = estimate_period(prof, axis=1, threshold=threshold, workers=workers)
        if e.significant and e.period:
            bands[ax] = period[ax] = int(e.period)
    return {"period": period, "bands": bands,
            "strength": [round(float(e.strength), 4) for e in (ey, ex)],
            "snr": [round(float(e.snr), 3) if np.isfinite(e.snr) else None for e in (ey, ex)]}


def classify_tiling(features: dict[str, Any]) -> tuple[str | None, float]:
    """``"seamless"``, ``"periodic"`` or None, and a score in [0, 1].

    Seamless when a significant axis repeats with whitened autocorrelation at
    least :data:`SEAMLESS_STRENGTH` (an exact copy: ``np.tile`` of a crop, a
    tiled texture export); periodic (natural texture: bricks, fences, fabric)
    when significant but weaker.

    Parameters
    ----------
    features : dict
        :func:`tiling_features` of one image (``period`` [py, px] in px,
        ``strength`` [sy, sx] whitened autocorrelation at the period, 0..1).

    Returns
    -------
    kind : {"seamless", "periodic", None}
    score : float
        In [0, 1]: the strongest significant axis' autocorrelation.
    """
    per = features.get("period") or [None, None]
    st = features.get("strength") or [0.0, 0.0]
    sig = [s for p, s in zip(per, st) if p]
    if not sig:
        return None, 0.0
    best = max(sig)
    if best >= SEAMLESS_STRENGTH:
        return "seamless", min(1.0, best)
    return "periodic", float(min(1.0, best))


@dataclass
class OutlierResult:
    """Robust outliers of one per-image statistic.

    Attributes
    ----------
    index : ndarray of int
        Outlier positions.
    z : ndarray of float
        Modified z-score of every value (NaN for non-finite values).
    median, mad : float
    direction : ndarray of int
        -1 below, +1 above the median (for the outliers).
    """

    index: np.ndarray
    z: np.ndarray
    median: float
    mad: float
    direction: np.ndarray


def robust_outliers(values: np.ndarray, *, z_limit: float = OUTLIER_Z, min_effect: float = 0.0,
                    min_mad: float = 0.0) -> OutlierResult:
    """Iglewicz–Hoaglin outliers: modified z = (x − median) / (1.4826 MAD), |z| > ``z_limit``.

    Parameters
    ----------
    values : ndarray, shape (n,)
        One statistic per image (any unit; non-finite values are ignored).
    z_limit : float
        Least |modified z-score| of an outlier (unitless).
    min_effect : float
        An outlier must also differ from the median by at least this much (units of ``values``).
    min_mad : float
        Floor for the MAD, units of ``values`` (a near-constant set must not make tiny
        differences outliers).

    Returns
    -------
    OutlierResult
        No outliers when fewer than 8 values are finite.
    """
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    z = np.full(v.shape, np.nan)
    if ok.sum() < 8:
        return OutlierResult(np.zeros(0, int), z, float("nan"), float("nan"), np.zeros(0, int))
    med = float(np.median(v[ok]))
    mad = max(float(np.median(np.abs(v[ok] - med))), min_mad, 1e-12)
    z[ok] = (v[ok] - med) / (MAD_TO_SIGMA * mad)
    out = np.flatnonzero(ok & (np.abs(z) > z_limit) & (np.abs(v - med) >= min_effect))
    return OutlierResult(out, z, med, mad, np.sign(z[out]).astype(int))


def brightness_outliers(p99: np.ndarray, exclude: np.ndarray | None = None) -> OutlierResult:
    """Brightness outliers: modified z of :func:`exposure` (log white point).

    Parameters
    ----------
    p99 : ndarray, shape (n,)
        White point (99th-percentile luminance, 0..1) of each image.
    exclude : ndarray of int, optional
        Indices left out of the outliers (e.g. the contrast outliers, whose
        white point moved because they were washed out).

    Returns
    -------
    OutlierResult
        Over the n images; an outlier's white point also differs from the
        median by at least :data:`MIN_BRIGHTNESS_RATIO`.
    """
    res = robust_outliers(exposure(p99), z_limit=OUTLIER_Z, min_effect=np.log(MIN_BRIGHTNESS_RATIO), min_mad=0.05)
    if exclude is not None and len(exclude) and len(res.index):
        keep = ~np.isin(res.index, exclude)
        res = OutlierResult(res.index[keep], res.z, res.median, res.mad, res.direction[keep])
    return res


def contrast_outliers(p01: np.ndarray, p99: np.ndarray) -> OutlierResult:
    """Contrast outliers: modified z of :func:`black_point_contrast`.

    Parameters
    ----------
    p01, p99 : ndarray, shape (n,)
        As in :func:`black_point_contrast`.

    Returns
    -------
    OutlierResult
        Over the n images; an outlier's ``1 − p01/p99`` also differs from the
        median by at least :data:`MIN_CONTRAST_RATIO`.
    """
    return robust_outliers(black_point_contrast(p01, p99), z_limit=OUTLIER_Z, min_effect=np.log(MIN_CONTRAST_RATIO),
                           min_mad=0.05)
