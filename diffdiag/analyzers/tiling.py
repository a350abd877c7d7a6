"""Tiling: periodic patterns in a lone image and period doubling of an output against its reference.

Built on :mod:`diffdiag.analyzers.spectral`. Periods are per axis, in px,
reported as ``[py, px]`` (None for an axis without a period).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .spectral import PeriodEstimate, doubling_snr, period_correlations, tile_period, to_gray

#: whitened autocorrelation of an exactly repeated tile (a seam-free copy)
SEAMLESS_STRENGTH = 0.8
#: the reference must be clearly tiled for doubling to be judged
REFERENCE_MIN_STRENGTH = 0.5


@dataclass(frozen=True)
class Periodicity:
    """Periodic structure of one image.

    Attributes
    ----------
    period_px : list
        [py, px]; None for an axis without a significant period.
    strength : float
        Largest whitened autocorrelation among the significant axes (0..1).
    seamless : bool
        strength >= :data:`SEAMLESS_STRENGTH` (an exactly repeated tile, not
        a natural texture such as a brick wall).
    estimates : tuple of PeriodEstimate
        Raw per-axis estimates (y, x).
    """

    period_px: list
    strength: float
    seamless: bool
    estimates: tuple

    @property
    def found(self) -> bool:
        return any(p is not None for p in self.period_px)


def periodicity(image: np.ndarray, *, threshold: float | None = None) -> Periodicity:
    """Per-axis periodic structure of an image (see :func:`~diffdiag.analyzers.spectral.tile_period`).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Any float range (colour is reduced to grey; non-finite values count as 0).
    threshold : float, optional
        ``--fft-threshold`` (harmonic-to-background power ratio; default
        :data:`~diffdiag.analyzers.spectral.DEFAULT_THRESHOLD`).

    Returns
    -------
    Periodicity
        ``period_px`` [py, px] in px.
    """
    g = to_gray(image)
    g = np.where(np.isfinite(g), g, 0).astype(np.float32)
    ey, ex = tile_period(g, threshold=threshold)
    per = [e.period if e.significant else None for e in (ey, ex)]
    strengths = [e.strength for e in (ey, ex) if e.significant]
    s = max(strengths) if strengths else 0.0
    return Periodicity(per, float(s), s >= SEAMLESS_STRENGTH, (ey, ex))


@dataclass(frozen=True)
class Doubling:
    """Period doubling of an output against its reference.

    Attributes
    ----------
    period_px : list
        Reference period [py, px] (None where the reference has none).
    doubled_period_px : list
        Output period [py, px]: 2× the reference's along the doubled axes,
        the reference's elsewhere.
    axes : list of str
        Doubled axes ("y", "x").
    odd_harmonic_snr : dict
        axis -> power at odd multiples of N/(2P) over the local background.
    corr : dict
        axis -> {"P": r_out(P), "2P": r_out(2P)} (whitened autocorrelation).
    """

    period_px: list
    doubled_period_px: list
    axes: list[str] = field(default_factory=list)
    odd_harmonic_snr: dict = field(default_factory=dict)
    corr: dict = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return bool(self.axes)


def period_doubling(output: np.ndarray, reference: np.ndarray, *, threshold: float | None = None,
                    ref_period: Periodicity | None = None) -> Doubling:
    """Test whether the output repeats every 2P where the reference repeats every P.

    Per axis where the reference has a clear period P (significant and
    whitened autocorrelation >= :data:`REFERENCE_MIN_STRENGTH`), the output is
    doubled when its spectrum has power at the odd multiples of N/(2P) well
    above the local background (``threshold``, the ``--fft-threshold``) *and*
    it correlates better at 2P than at P, or when the autocorrelation alone is
    decisive (r(2P) >= 0.6, r(2P) − r(P) >= 0.025 and 1 − r(P) >= 3 (1 − r(2P)):
    the output decorrelates at P at least three times as much as at 2P).

    Parameters
    ----------
    output, reference : ndarray, shape (H, W) or (H, W, C)
        The pair (any float range; colour is reduced to grey).
    threshold : float, optional
        ``--fft-threshold``: least odd-harmonic-to-background power ratio (unitless).
    ref_period : Periodicity, optional
        Precomputed :func:`periodicity` of the reference (computed when None).

    Returns
    -------
    Doubling
        Periods ``[py, px]`` in px.
    """
    from .spectral import DEFAULT_THRESHOLD

    thr = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    rp = ref_period or periodicity(reference, threshold=threshold)
    out_g = to_gray(output)
    out_g = np.where(np.isfinite(out_g), out_g, 0).astype(np.float32)
    doubled = list(rp.period_px)
    axes, snrs, corr = [], {}, {}
    for ax, name in ((0, "y"), (1, "x")):
        p = rp.period_px[ax]
        est: PeriodEstimate = rp.estimates[ax]
        if p is None or est.strength < REFERENCE_MIN_STRENGTH or out_g.shape[ax] < 4 * p:
            continue
        c = period_correlations(out_g, ax, [p, 2 * p])
        snr = doubling_snr(out_g, ax, p)
        snrs[name] = snr
        corr[name] = {"P": c[p], "2P": c[2 * p]}
        spectral = np.isfinite(snr) and snr >= thr and c[2 * p] >= 0.5 and c[2 * p] >= c[p] + 0.01
        # or the autocorrelation alone: the output decorrelates at P at least 3x as much as at 2P
        r1, r2 = c[p], c[2 * p]
        acf_only = r2 >= 0.6 and r2 - r1 >= 0.025 and (1 - r1) >= 3 * (1 - r2)
        if spectral or acf_only:
            axes.append(name)
            doubled[ax] = 2 * p
    return Doubling(list(rp.period_px), doubled, axes, snrs, corr)
