"""Loss and gradient-norm spikes, robust to the heavy tail of diffusion loss.

Diffusion loss is heavy-tailed because every batch draws random timesteps: a
healthy run's per-step loss routinely reaches 10-30x its median. A naive
``mean + 3 sigma`` rule fires hundreds of times on such a run. Here:

1. work on log-loss (when the loss is positive) minus its local level, a
   decimated rolling median (Hampel-style);
2. when the batches' diffusion ``timesteps`` are logged, divide out the loss
   expected for them (a least-squares fit of per-timestep-bucket loss factors);
3. model the residuals' upper tail with a generalised Pareto distribution
   (peaks over threshold, :func:`~diffdiag.analyzers.robust.fit_upper_tail`)
   instead of a Gaussian, and turn each step's tail probability into a
   Gaussian-equivalent ``z`` after a Bonferroni correction over the run's
   length: ``z > sigma`` (``--spike-sigma``, default 3) means a healthy run of
   this length would show such a value with probability below 0.13%;
4. keep Lightning's rule (a step that improved on the previous one is no
   spike) and merge consecutive outlying steps into one event; events longer
   than a quarter of the level window are level shifts, not spikes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse, special

from .robust import family_z, fit_light_tail, fit_upper_tail, robust_scale, rolling_median

Z_CAP = 40.0  # z of a tail probability of ~1e-300: "beyond any healthy value"
XI_MIN = -0.05  # lightest tail shape trusted when extrapolating (see detect_spikes)
TAIL_FRACTIONS = (0.1, 0.05, 0.02)  # tail bands [p, p/4] the tail model is fitted on


@dataclass
class SpikeEvent:
    """One spike: consecutive outlying steps.

    Attributes
    ----------
    index : int
        Position (in the input arrays) of the event's first step.
    peak_index : int
        Position of its most extreme step.
    length : int
        Number of steps in the event.
    value : float
        The series' value at the peak.
    baseline : float
        The value expected at the peak (local level, times the timestep factor when known).
    z : float
        Gaussian-equivalent, run-length-corrected significance of the peak (capped at 40).
    ratio : float
        ``value / baseline``.
    """

    index: int
    peak_index: int
    length: int
    value: float
    baseline: float
    z: float
    ratio: float


@dataclass
class SpikeResult:
    """Spike events plus what the detector learned about the series.

    Attributes
    ----------
    events : list of SpikeEvent
    level : ndarray, shape (n,)
        Local level (in the series' units; NaN where the input was non-finite).
    residual : ndarray, shape (n,)
        Log-ratio (or difference) of each value to its expected value; NaN where non-finite.
    z : ndarray, shape (n,)
        Per-step significance (NaN where non-finite).
    threshold_ratio : float
        The smallest ``value / baseline`` that counts as a spike (``nan`` if unknown).
    log_scale : bool
        Whether the analysis ran on log values.
    window : int
        Level window, in steps.
    timestep_normalised : bool
    """

    events: list[SpikeEvent] = field(default_factory=list)
    level: np.ndarray = field(default_factory=lambda: np.empty(0))
    residual: np.ndarray = field(default_factory=lambda: np.empty(0))
    z: np.ndarray = field(default_factory=lambda: np.empty(0))
    threshold_ratio: float = float("nan")
    log_scale: bool = True
    window: int = 0
    timestep_normalised: bool = False


def default_window(n: int) -> int:
    """Level window (steps) for a series of ``n`` finite steps: ~1% of the run, 25..501."""
    return int(np.clip(n // 100, 25, 501))


def timestep_factors(timesteps: np.ndarray, ratio: np.ndarray, n_buckets: int = 50) -> np.ndarray | None:
    """Expected loss factor of each step from its batch's diffusion timesteps.

    Fits ``ratio_i ~ sum_b w_b * frac_ib`` by least squares, where ``frac_ib`` is the
    fraction of step ``i``'s batch in timestep bucket ``b`` (quantile buckets), and
    ``ratio`` is the loss over its local level (clipped at its 99.5th percentile so
    spikes do not pull the fit).

    Parameters
    ----------
    timesteps : ndarray, shape (n, B)
        Timesteps per step (NaN pads shorter batches; rows of all-NaN: unknown).
    ratio : ndarray, shape (n,)
        Loss / local level (finite, > 0).

    Returns
    -------
    ndarray, shape (n,) or None
        The factor (1 where unknown), or None when timesteps do not explain the loss.
    """
    t = np.asarray(timesteps, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    n = t.shape[0]
    known = np.isfinite(t)
    rows = known.any(axis=1) & np.isfinite(ratio)
    if rows.sum() < max(200, 10 * n_buckets):
        return None
    vals = t[known]
    edges = np.unique(np.quantile(vals, np.linspace(0, 1, n_buckets + 1)[1:-1]))
    nb = edges.size + 1
    rr, cc = np.nonzero(known)
    bucket = np.searchsorted(edges, t[rr, cc], side="right")
    per_row = np.bincount(rr, minlength=n).astype(np.float64)
    frac = sparse.csr_matrix((1.0 / per_row[rr], (rr, bucket)), shape=(n, nb))
    y = np.minimum(np.where(rows, ratio, 0.0), np.nanquantile(ratio[rows], 0.995))
    xs = frac[np.flatnonzero(rows)]
    gram = (xs.T @ xs).toarray() + 1e-9 * np.eye(nb)
    w = np.linalg.solve(gram, xs.T @ y[rows])
    w = np.maximum(w, 1e-3 * max(float(np.max(w)), 1e-12))
    fac = np.asarray(frac @ w).ravel()
    fac = np.where(rows & (fac > 0), fac, np.nan)
    med = np.nanmedian(fac[rows])
    if not np.isfinite(med) or med <= 0:
        return None
    fac = fac / med
    # keep it only if it explains part of the spread (healthy batches of random timesteps do)
    lr_ = np.log(ratio[rows])
    if robust_scale(lr_ - np.log(fac[rows])) > 0.9 * robust_scale(lr_):
        return None
    return np.where(np.isfinite(fac), fac, 1.0)


def _tail_z(r: np.ndarray, m: int, p_target: float, log_scale: bool) -> tuple[np.ndarray, float]:
    """Per-step run-length-corrected z of residuals ``r`` and the residual threshold at ``p_target``.

    Log residuals: a :class:`~diffdiag.analyzers.robust.LightTail` (Weibull-type, shape 1..2)
    fitted below the top 0.5% of the run; when steps come out above the threshold they are
    left out and the tail refitted (at most 4 times), so recurring outliers (a corrupted
    sample seen in 1-3% of the steps) cannot inflate the tail that judges them. Linear
    residuals: a generalised Pareto tail. Short series (< 100 steps): a Gaussian tail in
    robust units.
    """
    z = np.zeros(m)
    if log_scale:
        keep = None
        tail = None
        for _ in range(4):
            t = fit_light_tail(r if keep is None else r[keep])
            if t is None:
                break
            tail = t
            out = r > tail.isf(p_target)
            if not out.any():
                break
            grown = out.copy()  # an outlier's neighbours (a 2-step spike) leave the fit with it
            grown[1:] |= out[:-1]
            grown[:-1] |= out[1:]
            nk = ~grown if keep is None else keep & ~grown
            if keep is not None and nk.sum() == keep.sum():
                break
            keep = nk
        if tail is not None:
            thr = tail.isf(p_target)
            cand = np.flatnonzero(r > tail.isf(0.5 / m))
            if cand.size:
                lp = np.log(m) + tail.log_sf(r[cand])
                z[cand] = np.minimum(-special.ndtri(np.exp(np.maximum(lp, -690.0)).clip(1e-300, 0.5)), Z_CAP)
                z[cand[lp < -690.0]] = Z_CAP
            return z, float(thr)
    else:
        tail, thr = None, np.inf
        for frac in TAIL_FRACTIONS:
            tm = fit_upper_tail(r, frac, xi_bounds=(XI_MIN, 0.35))
            if tm is not None and tm.isf(p_target) < thr:
                tail, thr = tm, tm.isf(p_target)
        if tail is not None:
            return np.minimum(family_z(tail.sf(r), m), Z_CAP), float(thr)
    # short series: a Gaussian tail in robust units
    sc = robust_scale(r) or 1.0
    med = float(np.median(r))
    z = np.minimum(family_z(special.ndtr(-(r - med) / sc), m), Z_CAP)
    return z, float(med + sc * -special.ndtri(p_target))


def detect_spikes(values: np.ndarray, *, sigma: float = 3.0, timesteps: np.ndarray | None = None,
                  window: int | None = None, improvement_rule: bool = True,
                  max_event_len: int | None = None) -> SpikeResult:
    """Find spike events in a scalar series (loss, gradient norm).

    Parameters
    ----------
    values : ndarray, shape (n,)
        The series in step order; non-finite entries are skipped (report them separately).
    sigma : float
        Threshold on the run-length-corrected Gaussian-equivalent ``z`` (``--spike-sigma``).
    timesteps : ndarray, shape (n, B), optional
        Diffusion timesteps of each step's batch (NaN-padded); normalises the loss per bucket.
    window : int, optional
        Level window in steps (default :func:`default_window`).
    improvement_rule : bool
        Lightning's rule: an event whose first step is lower than the previous step is no spike.
    max_event_len : int, optional
        Longer runs of outliers are level shifts, not spikes (default ``window // 4``, at least 3).

    Returns
    -------
    SpikeResult
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    res = SpikeResult(level=np.full(n, np.nan), residual=np.full(n, np.nan), z=np.full(n, np.nan))
    ok = np.isfinite(x)
    idx = np.flatnonzero(ok)
    m = idx.size
    if m < 8:
        return res
    v = x[idx]
    log_scale = bool(np.all(v > 0))
    res.log_scale = log_scale
    y = np.log(v) if log_scale else v
    w = int(window) if window else default_window(m)
    res.window = w
    lev = rolling_median(y, w)
    r = y - lev
    if log_scale and timesteps is not None:
        t = np.asarray(timesteps, dtype=np.float64)
        if t.shape[0] == n:
            fac = timestep_factors(t[idx], np.exp(r))
            if fac is not None:
                r = r - np.log(fac)
                lev = lev + np.log(fac)
                res.timestep_normalised = True
    if not log_scale:  # linear residuals: express in robust units so the tail fit is scale-free
        s = robust_scale(r)
        if s <= 0:
            s = float(np.std(r)) or 1.0
        r_fit = r / s
    else:
        s = 1.0
        r_fit = r
    p_target = special.ndtr(-sigma) / m
    z, thr = _tail_z(r_fit, m, p_target, log_scale)
    res.threshold_ratio = float(np.exp(thr * s)) if log_scale else float(thr * s)
    out = z > sigma
    lev_full = np.full(n, np.nan)
    lev_full[idx] = np.exp(lev) if log_scale else lev
    res.level = lev_full
    res.residual[idx] = r
    res.z[idx] = z
    if not out.any():
        return res
    max_len = max_event_len if max_event_len is not None else max(3, w // 4)
    pos = np.flatnonzero(out)
    breaks = np.flatnonzero(np.diff(pos) > 2)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [pos.size - 1]])
    for a, b in zip(starts, ends):
        first, last = int(pos[a]), int(pos[b])
        if last - first + 1 > max_len:
            continue
        if improvement_rule and first > 0 and y[first] <= y[first - 1]:
            continue
        seg = np.arange(first, last + 1)
        pk = int(seg[np.argmax(z[seg] + 1e-9 * r[seg])])
        base = float(np.exp(lev[pk])) if log_scale else float(lev[pk])
        val = float(v[pk])
        ratio = val / base if log_scale else float("nan")
        res.events.append(SpikeEvent(index=int(idx[first]), peak_index=int(idx[pk]), length=last - first + 1,
                                     value=val, baseline=base, z=float(z[pk]), ratio=ratio))
    return res
