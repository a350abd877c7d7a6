"""Dataset-health analyzers: per-image features and set-level outliers.

Per image (computed where the image is decoded, so only a few numbers per
image are kept):

- :func:`luminance_stats` — mean luminance, RMS contrast and the black/white
  points (1st/99th percentiles) on a downscaled copy, in [0, 1];
- :func:`garbage_stats` — shares of channel values at 0 / 1 and the lag-1
  neighbour correlation (full resolution), which :func:`classify_garbage`
  turns into ``constant`` / ``noise`` / ``clipped``;
- :func:`tiling_features` — the tile period along y and x from the spectral
  toolkit (whitened autocorrelation with octave guard, harmonic power against
  the local background) on a full-resolution centre crop.

Over the set:

- :func:`separated_subgroup` — a group of at least :data:`MIN_GROUP` images at
  one end of a per-image statistic, cut from the rest by an empty interval
  (absolute, and against the rest's robust spread) and far from the rest's
  median: a subset darkened or washed out together, not the natural spread
  of single images. Brightness is judged on the log white point
  (:func:`exposure`) and contrast on log(1 − black/white point)
  (:func:`black_point_contrast`) (:func:`brightness_subgroup`,
  :func:`contrast_subgroup`); the per-image numbers stay mergeable (shards of
  a scan concatenate), the judgement is over the whole set;
- :func:`classify_tiling` — ``seamless`` (exact repetition: whitened
  autocorrelation ≥ :data:`SEAMLESS_STRENGTH` at the period, the signature of
  ``np.tile`` of a crop or a tiling texture export) is a warning; a
  significant but inexact period shared by the whole picture (a stripe
  overlay, :func:`strip_consistency`) is info; a natural periodic subject
  (a brick wall, rows of coins, text lines) is neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


#: whitened autocorrelation at the period above which a repetition is called exact (seamless tiling)
SEAMLESS_STRENGTH = 0.85
#: interquartile range of a Gaussian over its standard deviation
IQR_TO_SIGMA = 1.349
#: a skewed subgroup holds at least this many images (one, two or three odd images are the natural spread
#: of a photo set: healthy sets of scikit-image crops hold three naturally dark crops beyond a gap) ...
MIN_GROUP = 4
#: ... and at most this share of the set (it is the minority; the rest is the reference)
MAX_GROUP_SHARE = 0.4
#: brightness (log white point): the empty interval between a darker/brighter subgroup and the rest
#: (natural log: x1.22) ...
BRIGHTNESS_GAP = 0.2
#: ... at least this many robust standard deviations of the rest wide, ...
BRIGHTNESS_SEPARATION = 1.0
#: ... and the medians of the two groups' white points differ by this factor (healthy sets of
#: scikit-image crops raise nothing down to a gap of 0.15 and a ratio of 1.4)
MIN_BRIGHTNESS_RATIO = 1.6
#: contrast (log(1 - black/white point)): the empty interval between a washed-out subgroup and the rest ...
CONTRAST_GAP = 0.1
#: ... at least this many robust standard deviations of the rest wide, ...
CONTRAST_SEPARATION = 1.0
#: ... and the medians differ by this much (natural log). Healthy sets hold their own low-contrast
#: clusters -- several crops of one texture, retina or microscopy images among photos -- whose median
#: lies up to about 0.85 below the rest's
CONTRAST_EFFECT = 1.0
#: tiling is searched on a centre crop of at most this many pixels per side (full resolution):
#: tiles up to TILE_CROP / 2 px (two repeats) are found, at a bounded cost per image
TILE_CROP = 256
#: stripes are also searched on the mean profiles of this many strips (see :func:`tiling_features`)
BANDS = 8
#: a periodic but inexact pattern is reported (info) only when every strip shares it this closely
#: (:func:`strip_consistency`): stripe overlays > 0.88, natural periodic subjects in every scikit-image
#: photo and texture (brick, coins, page, ...) at 96-512 px < 0.85
STRIPE_CONSISTENCY = 0.88
#: an image whose RMS contrast (luminance, 0..1) is below this is constant (about 2/255: no content)
CONSTANT_STD = 0.008
#: an image whose lag-1 neighbour correlation is below this is noise (pure, JPEG-compressed or coloured
#: pixel noise: |corr| < 0.05; natural photos and textures: > 0.5, small tiles of fine or noisy texture
#: down to ~0.15)
NOISE_CORR = 0.1
#: an image with at least this share of its channel values at 0 or full scale is heavily clipped ...
#: (scikit-image photos and textures: at most 0.21 together, photo crops 0.14; a phantom on black: 0.58 black, 0.04 white;
#: two-level graphics -- silhouettes, checkerboards -- are clipped by this measure)
CLIPPED_SHARE = 0.5
#: ... when both ends hold at least this share each (a blown-up contrast), or one end alone holds CLIPPED_ONE_END
CLIPPED_BOTH_ENDS = 0.1
#: one end alone (an all-white or all-black blow-out) holding this share of the values is heavily clipped
CLIPPED_ONE_END = 0.9
#: a channel value (luminance for grey) within this of 0 or 1 counts as clipped (half an 8-bit level)
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


def garbage_stats(lum: np.ndarray, color: np.ndarray | None = None) -> dict[str, float]:
    """Per-image numbers that tell noise, constant and clipped images (see :func:`classify_garbage`).

    Parameters
    ----------
    lum : ndarray, shape (H, W)
        Luminance in [0, 1], full resolution (subsampling would lower the neighbour correlation).
    color : ndarray, shape (H, W, C) or (H, W), optional
        The pixels in [0, 1] (alpha dropped). Clipping is counted per channel value: a colour
        photo whose contrast was blown up has its channels at 0 or 1 (saturated primaries) while
        its luminance stays mid-grey. Default: the luminance.

    Returns
    -------
    dict
        ``clip_lo`` / ``clip_hi``: share (0..1) of the finite channel values (pixels for grey)
        within :data:`CLIP_TOL` of 0 / 1; ``corr``: lag-1 neighbour correlation of the luminance
        (unitless, −1..1; mean of the horizontal and vertical Pearson correlations; NaN for a
        constant or 1-pixel image).
    """
    a = np.asarray(lum, np.float64)
    ok = np.isfinite(a)
    n = int(ok.sum())
    if n == 0:
        return {"clip_lo": float("nan"), "clip_hi": float("nan"), "corr": float("nan")}
    a = np.where(ok, a, np.nanmean(np.where(ok, a, np.nan)))
    c = np.asarray(lum if color is None else color)
    cf = np.isfinite(c)
    nc = max(1, int(cf.sum()))
    out = {"clip_lo": float((cf & (c <= CLIP_TOL)).sum() / nc), "clip_hi": float((cf & (c >= 1 - CLIP_TOL)).sum() / nc)}
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
        ``strength`` [sy, sx] and ``snr`` [y, x] of the 2-D estimate,
        ``consistency`` [cy, cx] (:func:`strip_consistency` of an axis with a period, else None).
    """
    from .spectral import estimate_period, tile_period

    h, w = lum.shape
    y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    c = lum[y0:y0 + crop, x0:x0 + crop]
    ey, ex = tile_period(c, threshold=threshold, workers=workers)
    period = [int(e.period) if e.significant and e.period else None for e in (ey, ex)]
    bands: list[int | None] = [None, None]
    consistency: list[float | None] = [None, None]
    for ax, arr in ((0, c.T), (1, c)):
        # the mean profiles of BANDS strips along the other axis keep a stripe pattern and average the
        # picture's own content away
        nb = BANDS if arr.shape[0] >= 8 * BANDS else 1
        rows = (arr.shape[0] // nb) * nb
        prof = arr[:rows].reshape(nb, rows // nb, arr.shape[1]).mean(axis=1)
        if period[ax] is None:  # bands (stripes): a period seen only in those profiles
            e = estimate_period(prof, axis=1, threshold=threshold, workers=workers)
            if e.significant and e.period:
                bands[ax] = period[ax] = int(e.period)
        if period[ax] is not None:
            consistency[ax] = strip_consistency(prof)
    return {"period": period, "bands": bands,
            "strength": [round(float(e.strength), 4) for e in (ey, ex)],
            "snr": [round(float(e.snr), 3) if np.isfinite(e.snr) else None for e in (ey, ex)],
            "consistency": [None if v is None else round(v, 4) for v in consistency]}


def strip_consistency(profiles: np.ndarray) -> float:
    """How much every strip of an image shares one profile: an overlay's signature.

    Parameters
    ----------
    profiles : ndarray, shape (n_strips, L)
        Mean luminance profile of each strip along the axis (from :func:`tiling_features`).

    Returns
    -------
    float
        Median over the strips of the correlation (−1..1) of the strip's whitened profile (first
        difference) with the mean whitened profile of the other strips. A stripe overlay or
        augmentation pattern laid over the whole picture: > 0.88 (0.9–0.98 at ±0.12 luminance);
        natural periodic subjects -- brick courses in running bond, rows of coins, lines of text --
        vary from strip to strip: < 0.85. NaN with fewer than 2 strips.
    """
    d = np.diff(np.asarray(profiles, np.float64), axis=1)
    d -= d.mean(axis=1, keepdims=True)
    n = d.shape[0]
    if n < 2:
        return float("nan")
    total = d.sum(axis=0)
    cs = []
    for i in range(n):
        o = (total - d[i]) / (n - 1)
        den = float(np.sqrt((d[i] ** 2).sum() * (o ** 2).sum()))
        cs.append(float((d[i] * o).sum()) / den if den > 0 else 0.0)
    return float(np.median(cs))


def classify_tiling(features: dict[str, Any]) -> tuple[str | None, float]:
    """``"seamless"``, ``"periodic"`` or None, and a score in [0, 1].

    Seamless when a significant axis repeats with whitened autocorrelation at
    least :data:`SEAMLESS_STRENGTH` (an exact copy: ``np.tile`` of a crop, a
    tiled texture export); periodic (a stripe overlay or augmentation pattern
    over the whole picture) when significant but weaker and the same in every
    strip (:func:`strip_consistency` at least :data:`STRIPE_CONSISTENCY`); a
    natural periodic subject (bricks, coins, text lines) that varies from strip
    to strip is neither.

    Parameters
    ----------
    features : dict
        :func:`tiling_features` of one image (``period`` [py, px] in px,
        ``strength`` [sy, sx] whitened autocorrelation at the period, 0..1,
        ``consistency`` [cy, cx]).

    Returns
    -------
    kind : {"seamless", "periodic", None}
    score : float
        In [0, 1]: the strongest significant axis' autocorrelation (0 for None).
    """
    per = features.get("period") or [None, None]
    st = features.get("strength") or [0.0, 0.0]
    cons = features.get("consistency") or [None, None]
    sig = [s for p, s in zip(per, st) if p]
    if not sig:
        return None, 0.0
    best = max(sig)
    if best >= SEAMLESS_STRENGTH:
        return "seamless", min(1.0, best)
    striped = [s for p, s, c in zip(per, st, cons) if p and c is not None and c >= STRIPE_CONSISTENCY]
    if not striped:
        return None, 0.0
    return "periodic", float(min(1.0, max(striped)))


@dataclass
class Subgroup:
    """A separated subgroup of one per-image statistic (:func:`separated_subgroup`).

    Attributes
    ----------
    index : ndarray of int, shape (k,)
        The subgroup's image positions, most extreme first (empty: no subgroup).
    direction : int
        -1 the subgroup lies below the rest, +1 above, 0 none.
    gap : float
        Width of the empty interval between the subgroup and the rest (feature units).
    separation : float
        ``gap`` over the rest's robust spread (IQR / 1.349, floored at ``min_scale``), unitless.
    effect : float
        |median of the rest − median of the subgroup| (feature units).
    rest_median, rest_scale, group_median : float
        The rest's median and robust spread, the subgroup's median (feature units; NaN when none).
    """

    index: np.ndarray
    direction: int = 0
    gap: float = 0.0
    separation: float = 0.0
    effect: float = 0.0
    rest_median: float = float("nan")
    rest_scale: float = float("nan")
    group_median: float = float("nan")


def _sorted_quantile(x: np.ndarray, start: np.ndarray, m: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile (linear interpolation, as ``np.quantile``) of each slice ``x[start:start + m]`` of a
    sorted array, for many slices at once."""
    pos = start + q * (m - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(x) - 1)
    return x[lo] + (pos - lo) * (x[hi] - x[lo])


def separated_subgroup(values: np.ndarray, *, min_gap: float, min_separation: float, min_effect: float,
                       min_group: int = MIN_GROUP, max_share: float = MAX_GROUP_SHARE,
                       min_scale: float = 0.05) -> Subgroup:
    """The most separated group of images at either end of one per-image statistic, judged over the set.

    Every two-part split of the sorted values with a minority part of ``min_group`` ..
    ``max_share`` of the images at the low or the high end is a candidate. A candidate is
    a subgroup when the empty interval between it and the rest is at least ``min_gap`` wide
    and at least ``min_separation`` times the rest's robust spread (interquartile range / 1.349,
    the standard deviation of a Gaussian bulk), and the two medians differ by at least
    ``min_effect``; of those (at both ends) the best separated one wins. A natural spread (a
    continuous tail, one odd image) has no such gap; a subset moved together (darkened, washed
    out) leaves one. One sort and O(n) arithmetic: the per-image values of any number of shards
    are judged exactly as one set.

    Parameters
    ----------
    values : ndarray, shape (n,)
        One statistic per image (any unit; non-finite values are left out).
    min_gap : float
        Least width of the empty interval (units of ``values``).
    min_separation : float
        Least gap over the rest's robust spread (unitless).
    min_effect : float
        Least difference of the two medians (units of ``values``).
    min_group : int
        Fewest images in a subgroup (a few odd images are not a skewed subset).
    max_share : float
        Largest share (0..1) of the finite values in the subgroup (it is the minority).
    min_scale : float
        Floor of the rest's robust spread (units of ``values``).

    Returns
    -------
    Subgroup
        Empty (``index`` of size 0) when no candidate passes, or fewer than 8 values are finite.
    """
    v = np.asarray(values, np.float64)
    pos = np.flatnonzero(np.isfinite(v))
    n = len(pos)
    best = Subgroup(np.zeros(0, int))
    k = np.arange(max(1, min_group), int(max_share * n) + 1)
    if n < 8 or len(k) == 0:
        return best
    for direction in (-1, 1):
        order = pos[np.argsort(-direction * v[pos], kind="stable")]  # the candidate end first
        x = -direction * v[order]  # ascending: the group is x[:k], the rest x[k:]
        m = n - k
        gap = x[k] - x[k - 1]
        rmed = _sorted_quantile(x, k, m, 0.5)
        iqr = _sorted_quantile(x, k, m, 0.75) - _sorted_quantile(x, k, m, 0.25)
        scale = np.maximum(iqr / IQR_TO_SIGMA, min_scale)
        gmed = _sorted_quantile(x, np.zeros_like(k), k, 0.5)
        sep, effect = gap / scale, rmed - gmed
        ok = np.flatnonzero((gap >= min_gap) & (sep >= min_separation) & (effect >= min_effect))
        if len(ok) == 0:
            continue
        j = ok[np.argmax(sep[ok])]
        if sep[j] > best.separation:
            kk = int(k[j])
            best = Subgroup(order[:kk].copy(), direction, float(gap[j]), float(sep[j]), float(effect[j]),
                            float(-direction * rmed[j]), float(scale[j]), float(-direction * gmed[j]))
    return best


def brightness_subgroup(p99: np.ndarray, exclude: np.ndarray | None = None) -> Subgroup:
    """A darker (or brighter) subgroup of the set: :func:`separated_subgroup` of :func:`exposure`.

    Parameters
    ----------
    p99 : ndarray, shape (n,)
        White point (99th-percentile luminance, 0..1) of each image.
    exclude : ndarray of int, optional
        Indices left out of the set (e.g. the washed-out subgroup, whose white point moved
        because it was washed out).

    Returns
    -------
    Subgroup
        With :data:`BRIGHTNESS_GAP`, :data:`BRIGHTNESS_SEPARATION` and
        ``log(`` :data:`MIN_BRIGHTNESS_RATIO` ``)``.
    """
    x = exposure(p99)
    if exclude is not None and len(exclude):
        x[np.asarray(exclude, int)] = np.nan
    return separated_subgroup(x, min_gap=BRIGHTNESS_GAP, min_separation=BRIGHTNESS_SEPARATION,
                              min_effect=float(np.log(MIN_BRIGHTNESS_RATIO)))


def contrast_subgroup(p01: np.ndarray, p99: np.ndarray) -> Subgroup:
    """A washed-out (or higher-contrast) subgroup: :func:`separated_subgroup` of :func:`black_point_contrast`.

    Parameters
    ----------
    p01, p99 : ndarray, shape (n,)
        As in :func:`black_point_contrast`.

    Returns
    -------
    Subgroup
        With :data:`CONTRAST_GAP`, :data:`CONTRAST_SEPARATION` and :data:`CONTRAST_EFFECT`.
    """
    return separated_subgroup(black_point_contrast(p01, p99), min_gap=CONTRAST_GAP,
                              min_separation=CONTRAST_SEPARATION, min_effect=CONTRAST_EFFECT)
