"""Spectral toolkit: power spectra, autocorrelation and tile-period estimation.

Pure functions over arrays (images ``(H, W)`` / ``(H, W, C)`` in any float
range, latent channels, 1-D profiles). Transforms are real FFTs from
:mod:`scipy.fft` in float32, with ``workers`` for multi-threading.

The period estimator works per axis and follows pitch detection:

1. *whiten* the signal with a (lightly smoothed) first difference along the axis, so the smooth
   1/f² spectrum of natural pictures no longer dominates the autocorrelation
   (a photo's whitened autocorrelation falls to ~0 within a few pixels, an
   exactly repeated tile keeps ~1 at every multiple of its period; periods of
   2–8 samples, which the smoothing attenuates, are re-checked unsmoothed);
2. compute the overlap-normalised autocorrelation ``r(L)`` along the axis,
   summed over the other axis (zero-padded, so periods need not divide the
   size);
3. among the local maxima of ``r`` pick the *smallest* lag whose correlation
   is nearly as strong as the best (``octave_ratio`` of it): this rejects the
   octave errors (2P, 3P, ... correlate as well as P does);
4. test significance in the spectrum of the same whitened signal: the power at
   the harmonics ``k·N/P`` against the *local* spectral background (median of
   the nearby non-harmonic bins), not against a white-noise model.

``threshold`` (``--fft-threshold``) is the harmonic-to-background power ratio a
period needs to be significant; lower finds weaker peaks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.fft as sfft
from scipy.ndimage import gaussian_filter1d

#: default harmonic-to-local-background power ratio for a significant period
DEFAULT_THRESHOLD = 8.0
#: a period also needs this whitened autocorrelation (0..1)
MIN_STRENGTH = 0.3
#: pitch-style octave guard: smallest lag with r >= OCTAVE_RATIO * best
OCTAVE_RATIO = 0.85
#: at most this many lines (rows for an x-period) are correlated; larger images are subsampled
MAX_LINES = 256


def _workers(workers: int | None) -> int:
    return -1 if workers is None else int(workers)


#: Rec. 601 luma weights (R, G, B)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Collapse an image to one float32 channel.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Any numeric dtype. C = 1, 3 or 4 (alpha, if present, is ignored).

    Returns
    -------
    ndarray of float32, shape (H, W)
        Rec. 601 luma for RGB, the channel itself for grey.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        return a.astype(np.float32, copy=False)
    if a.ndim == 3:
        c = a.shape[2]
        if c == 1:
            return a[..., 0].astype(np.float32, copy=False)
        if c >= 3:
            return a[..., :3].astype(np.float32, copy=False) @ _LUMA  # one pass (twice as fast as a weighted sum)
        return a.astype(np.float32).mean(axis=2)
    raise ValueError(f"expected a 2-D or 3-D image, got shape {a.shape}")


def _as_2d(data: np.ndarray, axis: int) -> np.ndarray:
    """Return a float32 2-D view with the analysed axis last."""
    a = np.asarray(data, dtype=np.float32)
    if a.ndim == 1:
        return a[None, :]
    if a.ndim == 3:
        a = to_gray(a)
    if a.ndim != 2:
        raise ValueError(f"expected a 1-D profile or a 2-D array, got shape {a.shape}")
    return a if axis in (-1, 1) else a.T


def power_spectrum(data: np.ndarray, *, axis: int | None = None, window: bool = True,
                   workers: int | None = None) -> np.ndarray:
    """Power spectral density of a mean-removed image or profile.

    Parameters
    ----------
    data : ndarray, shape (N,), (H, W) or (H, W, C)
        A profile, an image (colour is reduced to grey) or a latent channel; any float range.
    axis : int or None
        None: the 2-D PSD, shape (H, W//2 + 1) (``rfft2``; not shifted).
        0 or 1: the 1-D PSD along that axis averaged over the other axis
        (rows or columns as independent realisations), shape (N//2 + 1,).
    window : bool
        Apply a Hann window along the transformed axes (reduces leakage).
    workers : int, optional
        Threads for :mod:`scipy.fft` (default: all).

    Returns
    -------
    ndarray of float32
        Power per frequency bin (arbitrary units; bin k is k cycles per N px).
    """
    w = _workers(workers)
    if axis is None:
        a = to_gray(np.asarray(data, dtype=np.float32)) if np.ndim(data) == 3 else np.asarray(data, np.float32)
        a = a - a.mean()
        if window:
            a = a * np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1])).astype(np.float32)
        f = sfft.rfft2(a, workers=w)
        return (f.real ** 2 + f.imag ** 2).astype(np.float32)
    a = _as_2d(data, axis)
    a = a - a.mean(axis=1, keepdims=True)
    if window:
        a = a * np.hanning(a.shape[1]).astype(np.float32)
    f = sfft.rfft(a, axis=1, workers=w)
    return (f.real ** 2 + f.imag ** 2).mean(axis=0).astype(np.float32)


def autocorr_1d(data: np.ndarray, *, axis: int = -1, max_lag: int | None = None, whiten: bool = False,
                workers: int | None = None) -> np.ndarray:
    """Overlap-normalised autocorrelation along one axis.

    Parameters
    ----------
    data : ndarray, shape (N,) or (H, W)
        A profile, or an image whose rows (``axis=1``/-1) or columns
        (``axis=0``) are correlated and summed.
    axis : int
        For 2-D data: 1 (or -1) = along x, 0 = along y.
    max_lag : int, optional
        Largest lag returned, in samples (px / latent cells; default ``N // 2``).
    whiten : bool
        Take a first difference along the axis first (see module docstring).
    workers : int, optional
        Threads for :mod:`scipy.fft` (default: all).

    Returns
    -------
    ndarray of float32, shape (max_lag + 1,)
        ``r[L]`` in [-1, 1], ``r[0] = 1``: the correlation between the signal
        and itself shifted by ``L`` over their overlap (no wrap-around).
    """
    r, _ = _acf_and_spectrum(_as_2d(data, axis), whiten, max_lag, workers)
    return r


def autocorr_2d(image: np.ndarray, *, whiten: bool = False, workers: int | None = None) -> np.ndarray:
    """2-D autocorrelation (linear, zero-padded), normalised to 1 at lag (0, 0).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Any float range (colour is reduced to grey).
    whiten : bool
        Take a first difference along x first.
    workers : int, optional
        Threads for :mod:`scipy.fft` (default: all).

    Returns
    -------
    ndarray of float32, shape (2H - 1, 2W - 1)
        Lag (0, 0) at the centre ``[H - 1, W - 1]``; lag (dy, dx) at
        ``[H - 1 + dy, W - 1 + dx]``.
    """
    a = to_gray(image) if np.ndim(image) == 3 else np.asarray(image, np.float32)
    if whiten:
        a = np.diff(a, axis=1)
    a = a - a.mean()
    h, w = a.shape
    f = sfft.rfft2(a, s=(2 * h, 2 * w), workers=_workers(workers))
    c = sfft.irfft2(f.real ** 2 + f.imag ** 2, s=(2 * h, 2 * w), workers=_workers(workers))
    c = np.fft.fftshift(c)[1:, 1:]  # centre at (h - 1, w - 1)
    c = c[:2 * h - 1, :2 * w - 1]
    c0 = c[h - 1, w - 1]
    return (c / c0 if c0 > 0 else c * 0).astype(np.float32)


def _acf_and_spectrum(a2: np.ndarray, whiten: bool, max_lag: int | None, workers: int | None,
                      smooth: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Whitened overlap-normalised ACF and the zero-padded (2N) power spectrum.

    Returns ``(r, spec)``: r has ``max_lag + 1`` lags; spec has ``N + 1`` bins
    of the 2N-point transform (bin k is k / 2 cycles per N px).
    """
    if a2.shape[0] > MAX_LINES:  # rows are independent realisations: a spread subset suffices
        a2 = a2[np.linspace(0, a2.shape[0] - 1, MAX_LINES).round().astype(int)]
    if whiten and smooth and a2.shape[1] > 16:  # band-pass whitening: light smoothing keeps pixel noise from dominating
        a2 = gaussian_filter1d(a2, 0.8, axis=1, mode="nearest")
    d = np.diff(a2, axis=1) if whiten and a2.shape[1] > 2 else a2
    d = d - d.mean(axis=1, keepdims=True)
    n = d.shape[1]
    if n < 2:
        return np.ones(1, np.float32), np.zeros(1, np.float32)
    f = sfft.rfft(d, n=2 * n, axis=1, workers=_workers(workers))
    p = (f.real ** 2 + f.imag ** 2).sum(axis=0)
    c = sfft.irfft(p, n=2 * n, workers=_workers(workers))[:n]
    e = (d * d).sum(axis=0).astype(np.float64)
    cs = np.cumsum(e)
    total = cs[-1]
    max_lag = n // 2 if max_lag is None else min(int(max_lag), n - 1)
    lags = np.arange(max_lag + 1)
    e1 = cs[n - 1 - lags]                      # sum over x < n - L
    e2 = total - np.concatenate([[0.0], cs])[lags]  # sum over x >= L
    denom = np.sqrt(np.maximum(e1 * e2, 1e-30))
    r = np.where(total > 0, c[:max_lag + 1] / denom, 0.0)
    r = np.clip(r, -1.0, 1.0).astype(np.float32)
    return r, (p / d.shape[0]).astype(np.float32)


def harmonic_snr(spec2n: np.ndarray, n: int, period: float, *, which: str = "all",
                 max_harmonics: int = 16) -> float:
    """Harmonic-to-local-background power ratio of a period in a padded spectrum.

    Parameters
    ----------
    spec2n : ndarray, shape (n + 1,)
        Power spectrum of a 2n-point (zero-padded) transform of a length-n signal.
    n : int
        Signal length (px).
    period : float
        Period in px; harmonic h sits at ``h * 2n / period`` padded bins.
    which : {"all", "odd"}
        Use every harmonic, or only the odd ones (the spectral signature of a
        period that doubled: a 2P-periodic signal has power at odd multiples
        of N/(2P), a P-periodic one has none there).
    max_harmonics : int
        Harmonics 1 .. ``max_harmonics`` are summed (those below the Nyquist bin).

    Returns
    -------
    float
        Sum of harmonic peak powers over the sum of their local background
        levels (median of nearby bins away from every harmonic); NaN when no
        background bins exist (the comb is too dense to measure).
    """
    nb = len(spec2n)
    spacing = 2.0 * n / float(period)
    if spacing < 2.0:
        return float("nan")
    hs = np.arange(1, max_harmonics + 1)
    if which == "odd":
        hs = hs[hs % 2 == 1]
    centers = hs * spacing
    centers = centers[centers < nb - 2]
    if len(centers) == 0:
        return float("nan")
    all_centers = np.arange(1, int(nb / spacing) + 2) * spacing
    idx = np.arange(nb)
    dist = np.abs(idx[:, None] - all_centers[None, :]).min(axis=1)
    dist = np.minimum(dist, idx)  # keep away from DC as well
    far = dist >= 3.0
    half = max(8.0, 1.5 * spacing)
    peaks, backs = 0.0, 0.0
    for c in centers:
        lo, hi = int(np.floor(c - 2)), int(np.ceil(c + 2)) + 1
        peak = float(spec2n[max(lo, 1):min(hi, nb)].max())
        wlo, whi = int(max(1, c - half)), int(min(nb, c + half + 1))
        sel = far[wlo:whi]
        if sel.sum() < 3:
            continue
        peaks += peak
        backs += float(np.median(spec2n[wlo:whi][sel]))
    if backs <= 0:
        return float("nan") if peaks == 0 else float("inf")
    return peaks / backs


@dataclass(frozen=True)
class PeriodEstimate:
    """The dominant period along one axis.

    Attributes
    ----------
    axis : int
        0 = along y (rows repeat), 1 = along x (columns repeat).
    period : int or None
        Fundamental period in samples (px / latent cells); None when no
        candidate exists (too short, flat signal).
    strength : float
        Whitened autocorrelation at the period, 0..1 (≈1 for an exactly
        repeated tile, 0.3–0.7 for natural periodic textures).
    snr : float
        Harmonic-to-local-background power ratio (NaN when not measurable).
    significant : bool
        ``snr >= threshold`` (or, when snr is NaN, strength >= 0.6) and
        ``strength >= MIN_STRENGTH``.
    threshold : float
        The threshold applied.
    length : int
        Signal length along the axis.
    best_lag : int or None
        The lag with the highest autocorrelation (a multiple of ``period``
        when the octave guard stepped down).
    period_exact : float or None
        Sub-sample period (parabolic interpolation of the autocorrelation
        peak); ``period`` is its rounded value.
    """

    axis: int
    period: int | None
    strength: float
    snr: float
    significant: bool
    threshold: float
    length: int
    best_lag: int | None = None
    period_exact: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _local_maxima(r: np.ndarray, lo: int, hi: int) -> np.ndarray:
    idx = np.arange(max(lo, 1), min(hi, len(r) - 1) + 1)
    if len(idx) == 0:
        return idx
    left = r[idx - 1]
    right = r[np.minimum(idx + 1, len(r) - 1)]
    right = np.where(idx + 1 < len(r), right, -np.inf)
    return idx[(r[idx] >= left) & (r[idx] >= right) & (r[idx] > 0)]


def pick_period(r: np.ndarray, *, min_period: int = 2, max_period: int | None = None,
                octave_ratio: float = OCTAVE_RATIO) -> tuple[int | None, int | None]:
    """Pitch-style choice of the fundamental lag in an autocorrelation.

    Parameters
    ----------
    r : ndarray, shape (L + 1,)
        Autocorrelation at lags 0 .. L (samples).
    min_period, max_period : int
        Lag range searched, samples (default up to L).
    octave_ratio : float
        The fundamental is the smallest local maximum with ``r >= octave_ratio * r[best_lag]``.

    Returns
    -------
    period : int or None
        The smallest local maximum with ``r >= octave_ratio * r[best_lag]``
        (or a clearly periodic shorter lag it is a multiple of), samples.
    best_lag : int or None
        The global best lag, samples; both None when ``r`` has no positive local maximum.
    """
    hi = len(r) - 1 if max_period is None else min(max_period, len(r) - 1)
    cands = _local_maxima(r, min_period, hi)
    if len(cands) == 0:
        return None, None
    best = int(cands[np.argmax(r[cands])])
    ok = cands[r[cands] >= octave_ratio * r[best]]
    period = int(ok.min())
    # sub-harmonic guard: the best lag is a multiple of a clearly periodic shorter lag
    for c in cands[cands < period]:
        k = period / c
        if round(k) >= 2 and abs(k - round(k)) * c <= 1.0 + 0.02 * period and r[c] >= 0.75 * r[period]:
            # every multiple up to the best must also correlate
            if all(r[min(len(r) - 1, int(round(j * c)))] >= 0.5 * r[best] or
                   r[max(0, int(round(j * c)) - 1):int(round(j * c)) + 2].max() >= 0.5 * r[best]
                   for j in range(1, int(round(k)) + 1)):
                period = int(c)
                break
    return period, best


def refine_peak(r: np.ndarray, lag: int) -> float:
    """Sub-sample position of the autocorrelation peak near ``lag`` (parabolic fit).

    Parameters
    ----------
    r : ndarray, shape (L + 1,)
        Autocorrelation at lags 0 .. L.
    lag : int
        The integer peak lag, samples.

    Returns
    -------
    float
        The peak position, samples (``lag`` at the ends or when ``r`` is not concave there).
    """
    if lag < 1 or lag >= len(r) - 1:
        return float(lag)
    # the true peak may sit one lag off when the period is not an integer
    a, b, c = float(r[lag - 1]), float(r[lag]), float(r[lag + 1])
    den = a - 2 * b + c
    if den >= 0:
        return float(lag)
    return float(lag + float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)))


def estimate_period(data: np.ndarray, *, axis: int = -1, threshold: float | None = None,
                    min_period: int = 2, max_period: int | None = None, whiten: bool = True,
                    workers: int | None = None) -> PeriodEstimate:
    """Estimate the fundamental period of a profile or an image along one axis.

    Parameters
    ----------
    data : ndarray, shape (N,), (H, W) or (H, W, C)
        A 1-D profile, an image, or a latent channel (any float range).
    axis : int
        For 2-D data: 1 (or -1) = along x, 0 = along y.
    threshold : float, optional
        Harmonic-to-background power ratio for significance
        (``Settings.fft_threshold``; None = :data:`DEFAULT_THRESHOLD`).
    min_period, max_period : int
        Lag range searched, samples (px / latent cells; default ``2 .. N // 2``: at least two repeats).
    whiten : bool
        First-difference the signal before correlating (recommended for
        pictures; turn off for already-flat profiles).
    workers : int, optional
        Threads for :mod:`scipy.fft` (default: all).

    Returns
    -------
    PeriodEstimate
        Period in samples along ``axis``.
    """
    thr = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    a2 = _as_2d(data, axis)
    ax = 0 if (np.ndim(data) >= 2 and axis == 0) else 1
    n = a2.shape[1]
    if n < 2 * max(2, min_period) + 1 or not np.isfinite(a2).all():
        return PeriodEstimate(ax, None, 0.0, float("nan"), False, thr, n)
    r, spec = _acf_and_spectrum(a2, whiten, None, workers)
    m = len(spec) - 1  # whitened length
    hi = n // 2 if max_period is None else min(max_period, n // 2)
    period, best = pick_period(r, min_period=min_period, max_period=hi)
    if period is None:
        return PeriodEstimate(ax, None, 0.0, float("nan"), False, thr, n)
    exact = refine_peak(r, period)
    period = max(min_period, int(round(exact)))
    strength = float(r[period])
    snr = harmonic_snr(spec, m, period)
    if np.isnan(snr):
        sig = strength >= max(0.6, MIN_STRENGTH)
    else:
        sig = snr >= thr and strength >= MIN_STRENGTH
    if whiten and not sig and min_period <= 8:
        # the band-pass smoothing attenuates periods near Nyquist (2-8 samples: checkerboards,
        # alternating columns); look there again on the plain first difference
        r2, spec2 = _acf_and_spectrum(a2, True, min(hi, 9), workers, smooth=False)
        p2, b2 = pick_period(r2, min_period=min_period, max_period=min(hi, 8))
        if p2 is not None and r2[p2] >= 0.5:
            snr2 = harmonic_snr(spec2, len(spec2) - 1, p2)
            if (np.isfinite(snr2) and snr2 >= thr) or (np.isnan(snr2) and r2[p2] >= 0.6):  # NaN: at Nyquist
                return PeriodEstimate(ax, p2, float(r2[p2]), float(snr2), True, thr, n, b2, float(p2))
    return PeriodEstimate(ax, period, strength, float(snr), bool(sig), thr, n, best, exact)


def tile_period(image: np.ndarray, *, threshold: float | None = None, min_period: int = 2,
                workers: int | None = None) -> tuple[PeriodEstimate, PeriodEstimate]:
    """Tile period of an image (or latent channel) along y and along x.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Any float range (colour is reduced to grey).
    threshold, min_period, workers
        See :func:`estimate_period`.

    Returns
    -------
    (PeriodEstimate, PeriodEstimate)
        The estimate along y (axis 0) and along x (axis 1).
    """
    g = to_gray(image) if np.ndim(image) == 3 else np.asarray(image, np.float32)
    return (estimate_period(g, axis=0, threshold=threshold, min_period=min_period, workers=workers),
            estimate_period(g, axis=1, threshold=threshold, min_period=min_period, workers=workers))


def period_correlations(data: np.ndarray, axis: int, lags: list[int], *, whiten: bool = True,
                        workers: int | None = None) -> dict[int, float]:
    """Whitened autocorrelation at chosen lags (the best within ±1 of each).

    Parameters
    ----------
    data : ndarray, shape (N,), (H, W) or (H, W, C)
        A profile, an image or a latent channel.
    axis : int
        For 2-D data: 1 (or -1) = along x, 0 = along y.
    lags : list of int
        Lags, samples (px / latent cells).
    whiten : bool
        First-difference the signal first.
    workers : int, optional
        Threads for :mod:`scipy.fft` (default: all).

    Returns
    -------
    dict of int to float
        lag -> max(r[lag - 1 .. lag + 1]) (NaN when the lag is out of range).
    """
    a2 = _as_2d(data, axis)
    n = a2.shape[1]
    top = max(lags) + 1 if lags else 1
    r, _ = _acf_and_spectrum(a2, whiten, min(top, n - 1), workers)
    out = {}
    for lag in lags:
        if lag < 1 or lag > len(r) - 1:
            out[lag] = float("nan")
        else:
            out[lag] = float(r[max(1, lag - 1):lag + 2].max())
    return out


def doubling_snr(data: np.ndarray, axis: int, base_period: int, *, workers: int | None = None) -> float:
    """Odd-harmonic power of period ``2 * base_period`` over the local background.

    A signal whose period doubled from P to 2P gains power at odd multiples of
    N/(2P), where a P-periodic signal has none. Returns the ratio of that power
    to the local spectral background (see :func:`harmonic_snr`, ``which="odd"``),
    the larger of the whitened and the plain spectrum (the plain one sees
    alternating brightness offsets that a first difference removes).

    Parameters
    ----------
    data : ndarray, shape (N,), (H, W) or (H, W, C)
        The (output) image or profile.
    axis : int
        For 2-D data: 1 (or -1) = along x, 0 = along y.
    base_period : int
        The reference period P, samples (px).
    workers : int, optional
        Threads for :mod:`scipy.fft` (default: all).

    Returns
    -------
    float
        Odd-harmonic-to-background power ratio (unitless); NaN when the signal
        is shorter than 4 P or not measurable.
    """
    a2 = _as_2d(data, axis)
    if a2.shape[1] < 4 * base_period:
        return float("nan")
    best = float("nan")
    for whiten in (True, False):
        _, spec = _acf_and_spectrum(a2, whiten, 1, workers)
        v = harmonic_snr(spec, len(spec) - 1, 2 * base_period, which="odd")
        if np.isfinite(v) and not (v <= best):
            best = v
    return best
