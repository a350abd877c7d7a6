"""Robust building blocks for 1-D training curves: decimated rolling medians and tail models.

All functions are pure and vectorised (numpy/scipy); they accept any float
array and never raise on NaN/inf (non-finite entries are ignored where that
makes sense).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

MAD_TO_SIGMA = 1.4826


def fill_nonfinite(y: np.ndarray) -> np.ndarray:
    """Copy of ``y`` with non-finite entries replaced by the nearest earlier finite value
    (the first finite value before the first one; zeros when there is none).

    Parameters
    ----------
    y : ndarray, shape (n,)
        A series, one value per step (any unit).

    Returns
    -------
    ndarray, shape (n,), float64
    """
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    if ok.all():
        return y.copy()
    if not ok.any():
        return np.zeros_like(y)
    idx = np.where(ok, np.arange(y.size), 0)
    np.maximum.accumulate(idx, out=idx)
    out = y[idx]
    first = int(np.argmax(ok))
    out[:first] = y[first]
    return out


def block_medians(y: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Medians of consecutive blocks of ``block`` samples (the last, shorter block included; one
    shorter than half a block is merged into the block before it).

    Parameters
    ----------
    y : ndarray, shape (n,)
        Finite values (any unit).
    block : int
        Block length, in samples.

    Returns
    -------
    med : ndarray, shape (ceil(n / block),)
    centers : ndarray of float, same shape
        Index of each block's centre in ``y``.
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    block = max(1, int(block))
    k = n // block
    parts = []
    centers = []
    if k >= 2 and 0 < n - k * block < block // 2:  # a short remainder joins the last block (a median of a
        k -= 1                                       # handful of values would be noisy)
    if k:
        a = y[: k * block].reshape(k, block)
        if block % 2 and block > 1:  # odd blocks: the middle element of one partition (no averaging pass)
            parts.append(np.partition(a, block // 2, axis=1)[:, block // 2])
        else:
            parts.append(np.median(a, axis=1))
        centers.append(np.arange(k) * block + (block - 1) / 2.0)
    if n - k * block:
        parts.append(np.array([np.median(y[k * block:])]))
        centers.append(np.array([(k * block + n - 1) / 2.0]))
    if not parts:
        return np.empty(0), np.empty(0)
    return np.concatenate(parts), np.concatenate(centers)


def rolling_median(y: np.ndarray, window: int, *, max_points: int = 40000) -> np.ndarray:
    """Centred rolling median of ``y`` over ``window`` samples, computed on block medians
    when ``y`` is long (blocks of ``window // 15`` samples, so the cost is O(n)).

    Parameters
    ----------
    y : ndarray, shape (n,)
        Finite values.
    window : int
        Window length in samples (odd or even).
    max_points : int
        Longer inputs are reduced to about this many block medians first (bounds the cost).

    Returns
    -------
    ndarray, shape (n,)
        The rolling median, units of ``y``.
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    if n == 0:
        return y.copy()
    window = int(max(1, min(window, n)))
    block = max(1, window // 15, int(np.ceil(n / max_points)))
    block += 1 - block % 2 if block > 1 else 0  # odd: block medians are exact middle elements
    if block == 1:
        return ndimage.median_filter(y, size=window, mode="nearest")
    med, centers = block_medians(y, block)
    k = max(1, int(round(window / block)))
    if k > 1:
        med = ndimage.median_filter(med, size=k | 1, mode="nearest")
    return np.interp(np.arange(n), centers, med)


def robust_scale(x: np.ndarray, *, max_points: int = 200_000) -> float:
    """``1.4826 * MAD`` of the finite values of ``x``: the standard deviation of a Gaussian bulk.

    Parameters
    ----------
    x : ndarray, any shape
        Values (any unit; non-finite ones are ignored).
    max_points : int
        Longer inputs are strided down to about this many values first (the MAD's
        error stays below 0.5%).

    Returns
    -------
    float
        Units of ``x``; 0 when there are no finite values.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size > 2 * max_points:
        x = x[:: x.size // max_points]
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0
    return float(MAD_TO_SIGMA * np.median(np.abs(x - np.median(x))))


@dataclass
class TailModel:
    """A generalised-Pareto model of the upper tail of a sample (peaks over threshold).

    ``P(X > x) = rate * (1 + xi * (x - u) / sigma) ** (-1 / xi)`` for ``x > u``.

    Attributes
    ----------
    u : float
        Threshold (an upper quantile of the sample).
    rate : float
        Fraction of the sample above ``u``.
    sigma, xi : float
        GPD scale and shape (``xi < 0``: bounded tail, ``0``: exponential).
    n : int
        Sample size the model was fitted on.
    """

    u: float
    rate: float
    sigma: float
    xi: float
    n: int

    def sf(self, x: np.ndarray) -> np.ndarray:
        """Tail probability ``P(X > x)`` for ``x`` above ``u`` (``rate`` or more below it)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.maximum(x - self.u, 0.0) / self.sigma
        if abs(self.xi) < 1e-6:
            p = np.exp(-y)
        else:
            base = 1.0 + self.xi * y
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                p = np.where(base > 0, np.power(np.maximum(base, 1e-300), -1.0 / self.xi), 0.0)
        p = self.rate * p
        return np.where(x > self.u, p, np.maximum(self.rate, p))

    def isf(self, p: float) -> float:
        """The value exceeded with probability ``p`` (``p < rate``)."""
        q = min(1.0, max(p, 1e-300) / self.rate)
        if abs(self.xi) < 1e-6:
            return self.u - self.sigma * np.log(q)
        return self.u + self.sigma / self.xi * (q ** (-self.xi) - 1.0)


def fit_upper_tail(x: np.ndarray, *, tail_fraction: float = 0.02, min_exceed: int = 30,
                   xi_bounds: tuple[float, float] = (-0.1, 0.45), trim: float = 4.0) -> TailModel | None:
    """Fit a GPD to the upper tail of ``x`` by quantile matching, ignoring the most extreme points.

    The threshold ``u`` is the ``1 - p`` quantile (``p = tail_fraction``, raised so that at
    least ``8 * min_exceed`` points lie in the tail); shape and scale are least-squares
    matched to the empirical quantiles between exceedance probabilities ``p`` and
    ``p / trim`` over a grid of shapes within ``xi_bounds``. The top ``p / trim`` of the
    sample (where the outliers to be found live) never enters the fit, so a few
    spikes cannot inflate the tail that is meant to judge them. The lower bound on
    ``xi`` keeps a bounded fitted tail from ending right at the sample maximum.

    Parameters
    ----------
    x : ndarray, shape (n,)
        The sample (residuals, any unit; non-finite values are ignored).
    tail_fraction : float
        Exceedance probability of the threshold ``u`` (0..0.25).
    min_exceed : int
        Least number of sample points per fitted quantile (raises ``tail_fraction`` on short samples).
    xi_bounds : (float, float)
        Range of GPD shapes searched.
    trim : float
        The fit uses exceedance probabilities from ``p`` down to ``p / trim``.

    Returns
    -------
    TailModel or None
        In the units of ``x``; None when the sample is too small (fewer than
        ``4 * min_exceed`` finite values).
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = x.size
    if n < 4 * min_exceed:
        return None
    p = float(min(0.25, max(tail_fraction, 8.0 * min_exceed / n)))
    probs = p * trim ** (-np.linspace(0.0, 1.0, 9))
    q = np.quantile(x, 1.0 - probs)
    u = float(q[0])
    y = q - u
    if not np.all(np.isfinite(y)) or y[-1] <= 0:
        return TailModel(u, p, max(float(y[-1]) if np.isfinite(y[-1]) else 0.0, 1e-12), 0.0, n)
    t = p / probs  # >= 1
    best = (np.inf, 0.0, 1.0)
    for xi in np.linspace(xi_bounds[0], xi_bounds[1], 23):
        g = np.log(t) if abs(xi) < 1e-9 else (t ** xi - 1.0) / xi
        sigma = float(np.dot(g, y) / max(np.dot(g, g), 1e-300))
        sse = float(np.sum((y - sigma * g) ** 2))
        if sigma > 0 and sse < best[0]:
            best = (sse, float(xi), sigma)
    _, xi, sigma = best
    return TailModel(u, p, max(sigma, 1e-12), xi, n)


@dataclass
class LightTail:
    """A Weibull-type model of the upper tail of log-residuals (bounded shape).

    ``P(X > x) = rate * exp(-((x - u) / lam) ** k)`` for ``x > u``, with ``1 <= k <= 2``:
    ``k = 1`` is an exponential tail in log space (a Pareto tail of the loss itself, the
    heaviest allowed) and ``k = 2`` a Gaussian one (a log-normal loss). Diffusion
    log-loss residuals have a bounded timestep factor plus multiplicative noise, so
    their tail is light; fitting ``k`` keeps the extrapolation to the run's
    family-wise level close to the healthy maximum instead of far above it.

    Attributes
    ----------
    u : float
        Threshold (the ``1 - rate`` quantile).
    rate : float
        Fraction of the sample above ``u``.
    lam, k : float
        Scale (same units as the sample) and shape.
    n : int
        Sample size the model was fitted on.
    """

    u: float
    rate: float
    lam: float
    k: float
    n: int

    def log_sf(self, x: np.ndarray) -> np.ndarray:
        """``log P(X > x)`` (``log rate`` at or below ``u``)."""
        y = np.maximum(np.asarray(x, dtype=np.float64) - self.u, 0.0) / self.lam
        return np.log(self.rate) - y ** self.k

    def sf(self, x: np.ndarray) -> np.ndarray:
        """Tail probability ``P(X > x)``."""
        return np.exp(self.log_sf(x))

    def isf(self, p: float) -> float:
        """The value exceeded with probability ``p`` (``u`` when ``p >= rate``)."""
        L = np.log(self.rate / max(p, 1e-300))
        return float(self.u + self.lam * max(L, 0.0) ** (1.0 / self.k))


def top_values(x: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest finite values of ``x``, in descending order (one partition, O(n)).

    Parameters
    ----------
    x : ndarray, any shape
        Values (non-finite ones are ignored).
    k : int
        How many.

    Returns
    -------
    ndarray, shape (min(k, n_finite),)
        Descending, units of ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    k = int(min(max(k, 0), x.size))
    if k == 0:
        return np.empty(0)
    return np.sort(np.partition(x, x.size - k)[x.size - k:])[::-1]


def _k_max(n: int, k_bounds: tuple[float, float]) -> float:
    """Lightest shape trusted for a sample of ``n``: short runs show too few tail points to
    tell a light tail from sampling noise, so their extrapolation stays closer to exponential."""
    lo, hi = k_bounds
    return float(lo + (hi - lo) * np.clip((np.log10(max(n, 1)) - 3.3) / 1.0, 0.0, 1.0))


def fit_light_tail_top(top: np.ndarray, n: int, *, base: float = 0.02, min_fraction: float = 0.002,
                       min_points: int = 12, k_bounds: tuple[float, float] = (1.0, 2.0)) -> LightTail | None:
    """Fit :class:`LightTail` from the upper order statistics of a sample.

    Parameters
    ----------
    top : ndarray, shape (K,)
        The sample's largest values in descending order (at least ``base * n`` + 1 of them).
    n : int
        Size of the whole sample.
    base : float
        Exceedance probability of the threshold ``u`` (raised on short series, at most 0.25).
    min_fraction : float
        The top ``min_fraction`` of the sample never enters the fit (0..1).
    min_points : int
        Least number of sample points above the smallest fitted exceedance probability.
    k_bounds : (float, float)
        Range of the Weibull shape ``k`` (1 exponential .. 2 Gaussian).

    Returns
    -------
    LightTail or None
        In the units of ``top``; None when fewer than 100 values (or a degenerate tail).

    Notes
    -----
    ``u`` is the ``1 - base`` quantile (``base`` raised to ``4 * min_points / n`` on short
    series, at most 0.25); ``log(q_p - u)`` is least-squares matched to
    ``log lam + log(log(base / p)) / k`` at 8 exceedance probabilities ``p`` spaced
    geometrically from ``base / 2`` down to ``max(min_fraction, min_points / n)``. The top
    ``min_fraction`` of the sample (where spikes live) never enters the fit. ``k`` is
    bounded by ``k_bounds``, its upper bound lowered towards 1 for runs under ~10k values.
    """
    if n < 100:
        return None
    base = min(0.25, max(base, 4.0 * min_points / n))
    p_lo = max(min_fraction, min_points / n)
    if p_lo >= base / 2:
        return None
    probs = np.concatenate([[base], base / 2 * (p_lo / (base / 2)) ** np.linspace(0.0, 1.0, 8)])
    pos = probs * n - 0.5  # position of the (1 - p) quantile in the descending order statistics
    if pos[0] > top.size - 1:
        return None
    q = np.interp(pos, np.arange(top.size), top)
    u = float(q[0])
    y = q[1:] - u
    if not np.all(np.isfinite(y)) or y[0] <= 0:
        return None
    X = np.log(np.log(base / probs[1:]))
    Y = np.log(np.maximum(y, y[0] * 1e-6))
    kmax = _k_max(n, k_bounds)
    b = float(np.polyfit(X, Y, 1)[0]) if np.ptp(Y) > 0 else 1.0 / kmax
    b = float(np.clip(b, 1.0 / kmax, 1.0 / k_bounds[0]))
    lam = float(np.exp(np.mean(Y - b * X)))
    return LightTail(u, base, max(lam, 1e-12), 1.0 / b, n)


def fit_light_tail(x: np.ndarray, *, base: float = 0.02, min_fraction: float = 0.002, min_points: int = 12,
                   k_bounds: tuple[float, float] = (1.0, 2.0)) -> LightTail | None:
    """:func:`fit_light_tail_top` on a whole sample.

    Parameters
    ----------
    x : ndarray, shape (n,)
        The sample (non-finite values are ignored).
    base, min_fraction, min_points, k_bounds
        As in :func:`fit_light_tail_top`.

    Returns
    -------
    LightTail or None
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = x.size
    if n < 100:
        return None
    b = min(0.25, max(base, 4.0 * min_points / n))
    return fit_light_tail_top(top_values(x, int(np.ceil(b * n)) + 2), n, base=base, min_fraction=min_fraction,
                              min_points=min_points, k_bounds=k_bounds)


def family_z(p_step: np.ndarray, n_tests: int) -> np.ndarray:
    """Gaussian-equivalent z of a per-step tail probability after a Bonferroni correction
    over ``n_tests`` steps: ``z = Phi^-1(1 - min(1, n * p))``.

    ``z = 3`` means "a value this extreme happens by chance in a healthy run of this
    length with probability 0.13%".

    Parameters
    ----------
    p_step : ndarray, any shape
        Per-step tail probabilities (0..1).
    n_tests : int
        Number of steps tested (the Bonferroni factor).

    Returns
    -------
    ndarray, shape of ``p_step``
        z in Gaussian standard deviations (0 at p = 0.5 / n_tests and above).
    """
    pf = np.clip(np.asarray(p_step, dtype=np.float64) * max(1, n_tests), 1e-300, 0.5)
    return -special.ndtri(pf)
