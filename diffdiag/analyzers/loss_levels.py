"""Loss level changes: shelves (plateaus), divergence (a jump to a higher level that stays),
and a logged EMA/smoothed loss leaving the band the raw loss supports.

All work on a decimated robust level curve (block medians of log-loss), so a
1M-step run costs a few milliseconds beyond one pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.signal import lfilter

from .robust import MAD_TO_SIGMA, block_medians, robust_scale


@dataclass
class LevelCurve:
    """A decimated robust level of a series.

    Attributes
    ----------
    level : ndarray, shape (M,)
        Smoothed block medians (log values when ``log_scale``).
    start, end : ndarray of int, shape (M,)
        First and last input position (index into the finite values' positions) of each block.
    positions : ndarray of int, shape (m,)
        Positions of the finite input values in the original array.
    se : float
        Standard error of one smoothed block level.
    log_scale : bool
    """

    level: np.ndarray
    start: np.ndarray
    end: np.ndarray
    positions: np.ndarray
    se: float
    log_scale: bool
    values: np.ndarray  # finite values (log when log_scale), shape (m,)

    def to_units(self, v: float) -> float:
        return float(np.exp(v)) if self.log_scale else float(v)


def level_curve(values: np.ndarray, *, n_blocks: int = 300, smooth: int = 5) -> LevelCurve | None:
    """The decimated robust level of a loss series.

    Block medians (about ``n_blocks`` of them) of the finite values, on log scale when all
    are positive, smoothed by a rolling median over ``smooth`` blocks.

    Parameters
    ----------
    values : ndarray, shape (n,)
        The loss, one value per logged step (the series' units; non-finite values are skipped).
    n_blocks : int
        About how many blocks the finite values are cut into (each an odd number of steps).
    smooth : int
        Width of the rolling median over the block medians, in blocks.

    Returns
    -------
    LevelCurve or None
        Level of shape (M,), M ≈ ``n_blocks``; None when fewer than ``4 * smooth``
        finite values.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    pos = np.flatnonzero(np.isfinite(x))
    m = pos.size
    if m < 4 * smooth:
        return None
    v = x[pos]
    log_scale = bool(np.all(v > 0))
    y = np.log(v) if log_scale else v
    block = max(1, int(np.ceil(m / n_blocks)))
    block += 1 - block % 2 if block > 1 else 0  # odd: exact middle elements (one partition)
    med, _ = block_medians(y, block)
    k = med.size
    start = np.arange(k) * block
    end = np.minimum(start + block, m) - 1
    if k >= smooth:
        med = ndimage.median_filter(med, size=smooth, mode="nearest")
    spread = robust_scale(np.diff(y)) / np.sqrt(2.0) if m > 2 else 0.0
    se = 1.2533 * spread / np.sqrt(block * max(1, min(smooth, k)) / 1.5)
    return LevelCurve(med, start, end, pos, float(se), log_scale, y)


# --------------------------------------------------------------------------- divergence

@dataclass
class Divergence:
    """The loss jumps to a higher level and stays there.

    Attributes
    ----------
    index : int
        Position (in the input array) of the jump.
    level_before, level_after : float
        Median loss before and after (the series' units).
    ratio : float
        ``level_after / level_before`` (or the difference on linear scale).
    sustained_until : int
        Position until which the higher level was followed.
    """

    index: int
    level_before: float
    level_after: float
    ratio: float
    sustained_until: int


def refine_changepoint(y: np.ndarray, lo: int, hi: int) -> int:
    """Position in ``[lo, hi)`` that best splits ``y`` into two means (CUSUM).

    Parameters
    ----------
    y : ndarray, shape (n,)
        A series (e.g. log-loss), one value per logged step.
    lo, hi : int
        The positions searched, ``lo <= hi <= n``.

    Returns
    -------
    int
        The first position of the second segment (``lo`` when fewer than 4 values).
    """
    seg = y[lo:hi]
    n = seg.size
    if n < 4:
        return lo
    c = np.cumsum(seg - seg.mean())
    t = np.arange(1, n)
    score = np.abs(c[:-1]) / np.sqrt(t * (n - t) / n)
    return lo + int(np.argmax(score)) + 1


def detect_divergence(values: np.ndarray, *, min_ratio: float = 1.5, curve: LevelCurve | None = None
                      ) -> list[Divergence]:
    """Find upward level shifts of at least ``min_ratio`` that persist.

    A jump is compared over windows of ~4% of the run on each side; it persists when the
    level over the following ~12% of the run (or until the run ends, at least one window)
    stays at least ``sqrt(min_ratio)`` above the level before.

    Parameters
    ----------
    values : ndarray, shape (n,)
        The loss, one value per logged step (non-finite values are skipped).
    min_ratio : float
        Smallest level ratio (after / before, unitless) reported.
    curve : LevelCurve, optional
        :func:`level_curve` of ``values`` when already computed (shared with
        :func:`detect_plateaus`).

    Returns
    -------
    list of Divergence
        At most 3, strongest first in time order; positions index ``values``.
    """
    cv = curve if curve is not None else level_curve(values)
    if cv is None or cv.level.size < 12:
        return []
    L = cv.level
    M = L.size
    k = max(3, M // 25)
    thr = np.log(min_ratio) if cv.log_scale else (min_ratio - 1.0) * max(robust_scale(cv.values), 1e-12) * 3
    # 6 standard errors of the difference of two medians over k smoothed blocks (~k/5 independent ones each)
    thr = max(thr, 6 * cv.se / np.sqrt(max(1.0, k / 5.0)))
    cs = np.concatenate([[0.0], np.cumsum(L)])
    j = np.arange(k, M - max(2, k // 2) + 1)
    if j.size == 0:
        return []
    before = np.array([np.median(L[i - k:i]) for i in j])
    after_hi = np.minimum(j + k, M)
    after = np.array([np.median(L[i:h]) for i, h in zip(j, after_hi)])
    jump = after - before
    del cs
    out: list[Divergence] = []
    taken = np.zeros(M, dtype=bool)
    order = np.argsort(-jump)
    for o in order:
        if jump[o] < thr or len(out) >= 3:
            break
        i = int(j[o])
        if taken[max(0, i - k):min(M, i + k)].any():
            continue
        stay_hi = min(M, i + 3 * k)
        stay = float(np.median(L[i + max(1, k // 3):stay_hi])) if stay_hi > i + max(1, k // 3) else after[o]
        if stay - before[o] < 0.5 * thr:
            continue
        taken[max(0, i - k):min(M, i + k)] = True
        lo = int(cv.start[max(0, i - k // 2)])
        hi = int(cv.end[min(M - 1, i + k // 2)]) + 1
        cp = refine_changepoint(cv.values, lo, hi)
        b = cv.to_units(before[o])
        a = cv.to_units(after[o])
        out.append(Divergence(index=int(cv.positions[cp]), level_before=b, level_after=a,
                              ratio=a / b if cv.log_scale and b > 0 else a - b,
                              sustained_until=int(cv.positions[cv.end[stay_hi - 1]])))
    out.sort(key=lambda d: d.index)
    return out


# --------------------------------------------------------------------------- plateaus

@dataclass
class Plateau:
    """A shelf: the level stays flat, then (``kind="shelf"``) drops well below it, or
    (``kind="flat_run"``) never leaves its start level.

    Attributes
    ----------
    start, end : int
        Positions (in the input array) of the shelf's first and last step.
    level : float
        Median loss on the shelf.
    later_level : float
        The lowest level reached after it (for ``flat_run``: the level at the end).
    ratio : float
        ``level / later_level``.
    kind : str
    """

    start: int
    end: int
    level: float
    later_level: float
    ratio: float
    kind: str


def detect_plateaus(values: np.ndarray, *, min_drop: float = 1.25, flat_tol: float = 1.04,
                    min_fraction: float = 0.05, flatness: float = 2.0, min_z: float = 5.0,
                    curve: LevelCurve | None = None) -> list[Plateau]:
    """Find shelves in the loss level, anywhere in the run (from its first step on).

    A shelf is a span of at least ``min_fraction`` of the run (and 3 blocks) over which the
    level stays within ``flat_tol`` (ratio; widened to 3 standard errors of the level), after
    which it falls by at least ``min_drop``. The fall is measured on the raw (log) values:
    the median over the shelf's second half ``A2`` against the median over the next half
    shelf-length ``B``, with the first half's ``A1``. A healthy loss curve is convex (it falls
    no faster after a span than across it), so a shelf must show a *kink*:
    ``(A2 - B) - max(0, A1 - A2)`` at least ``min_z`` standard errors of that difference (medians'
    errors from the values' robust spread: significant on short, noisy runs too, and never
    met by a smooth decay however steep), and a fall ``A2 - B`` at least ``flatness`` times the
    shelf's own ``A1 - A2``. A span whose level rises (``A2 - A1`` beyond the flat tolerance
    or 3 standard errors: a jump up inside it) is no shelf. A run whose level never leaves its start level (within
    ``flat_tol``) over at least 500 steps is reported as one ``flat_run`` plateau.

    Parameters
    ----------
    values : ndarray, shape (n,)
        The loss, one value per logged step (non-finite values are skipped).
    min_drop : float
        Least ratio shelf level / later level (unitless).
    flat_tol : float
        Ratio within which the level counts as flat (widened to the level's standard errors).
    min_fraction : float
        Least length of a shelf, as a fraction of the run (0..1).
    flatness : float
        Least ratio of the fall after the shelf to the fall across it (unitless).
    min_z : float
        Least significance of the kink, in standard errors (healthy runs of every shape, length
        and batch size stay below 4; benchmarks/sensitivity.py measures the false alarms).
    curve : LevelCurve, optional
        :func:`level_curve` of ``values`` when already computed.

    Returns
    -------
    list of Plateau
        In time order; ``start``/``end`` index ``values``.
    """
    cv = curve if curve is not None else level_curve(values)
    if cv is None or cv.level.size < 12:
        return []
    L = cv.level
    M = L.size
    tol = max(np.log(flat_tol) if cv.log_scale else (flat_tol - 1) * max(abs(np.median(L)), 1e-12), 3 * cv.se)
    drop = np.log(min_drop) if cv.log_scale else (min_drop - 1) * max(abs(np.median(L)), 1e-12)
    min_len = max(3, int(np.ceil(min_fraction * M)))
    out: list[Plateau] = []
    # whole run flat: 20 chunks' medians of the raw (log) values all within flat_tol of the first
    m = cv.values.size
    if m >= 500:
        ch = np.array([np.median(c) for c in np.array_split(cv.values if m <= 200_000 else cv.values[:: m // 100_000], 20)])
        ch_se = 1.2533 * robust_scale(np.diff(cv.values)) / np.sqrt(2.0) / np.sqrt(m / 20)
        ftol = np.log(flat_tol) if cv.log_scale else (flat_tol - 1) * max(abs(np.median(ch)), 1e-12)
        if np.max(np.abs(ch - ch[0])) <= max(ftol, 3 * ch_se) and abs(ch[-1] - ch[0]) <= ftol + ch_se:
            lv = float(np.median(cv.values))
            out.append(Plateau(int(cv.positions[0]), int(cv.positions[-1]), cv.to_units(lv), cv.to_units(ch[-1]),
                               float(np.exp(ch[0] - ch[-1])) if cv.log_scale else 0.0, "flat_run"))
            return out
    # flat span ending at each block j: the earliest a with range(L[a..j]) <= 2 tol
    a_of = np.empty(M, dtype=int)
    for j in range(M):
        seg = L[j::-1]
        hi = np.maximum.accumulate(seg)
        lo = np.minimum.accumulate(seg)
        bad = np.flatnonzero(hi - lo > 2 * tol)
        a_of[j] = j - (int(bad[0]) - 1) if bad.size else 0
    length = np.arange(M) - a_of + 1
    suffix_min = np.minimum.accumulate(L[::-1])[::-1]
    y = cv.values
    spread = robust_scale(np.diff(y)) / np.sqrt(2.0) if y.size > 2 else 0.0

    def window(b0: int, b1: int) -> tuple[float, float]:
        """Median of the raw (log) values of blocks b0..b1-1 and its standard error."""
        v = y[cv.start[b0]:cv.end[b1 - 1] + 1]
        return float(np.median(v)), 1.2533 * spread / np.sqrt(max(1, v.size))

    cands = []
    for j in range(M - 3):
        if length[j] < min_len:
            continue
        a = int(a_of[j])
        mid = a + (j - a + 1) // 2
        a1, se1 = window(a, mid)
        a2, se2 = window(mid, j + 1)
        b, seb = window(j + 1, min(M, j + 1 + max(3, (j - a + 1) // 2)))
        fall = a2 - b
        if fall < drop or fall < flatness * max(0.0, a1 - a2):
            continue
        # a span whose level rises (a jump up inside it) is no shelf, and its rise is no kink
        if a2 - a1 > max(tol, 3 * np.sqrt(se1 ** 2 + se2 ** 2)):
            continue
        if fall - max(0.0, a1 - a2) < min_z * np.sqrt(se1 ** 2 + 4 * se2 ** 2 + seb ** 2):
            continue
        cands.append((int(length[j]), a, j, a2))
    cands.sort(key=lambda c: -c[0])
    used = np.zeros(M, dtype=bool)
    for ln, a, j, lv in cands:
        if used[a:j + 1].any():
            continue
        used[a:j + 1] = True
        # the shelf proper starts where the level first reaches the level of its later half
        lv = float(np.median(L[(a + j) // 2:j + 1]))
        near = np.flatnonzero(L[a:j + 1] <= lv + max(np.log(1.03) if cv.log_scale else 0.0, 1.5 * cv.se))
        a = a + int(near[0]) if near.size else a
        later = float(suffix_min[j + 1])
        s_pos = int(cv.positions[cv.start[a]])
        e_pos = int(cv.positions[cv.end[j]])
        ratio = float(np.exp(lv - later)) if cv.log_scale else float(lv - later)
        out.append(Plateau(s_pos, e_pos, cv.to_units(lv), cv.to_units(later), ratio, "shelf"))
    out.sort(key=lambda p: p.start)
    return out


# --------------------------------------------------------------------------- EMA divergence

@dataclass
class EmaBreak:
    """A stretch where the logged EMA/smoothed loss leaves the band the raw loss supports.

    Attributes
    ----------
    start, end : int
        Positions in the EMA series.
    max_gap : float
        Largest ``ema / reference`` ratio (or its inverse when below; > 1), or the largest
        absolute difference on linear scale.
    band : float
        The tolerated ratio (or difference).
    raw_level : float
        The reference smoothed raw loss where the gap is largest.
    ema_value : float
        The logged EMA there.
    direction : str
        ``"above"`` or ``"below"``.
    """

    start: int
    end: int
    max_gap: float
    band: float
    raw_level: float
    ema_value: float
    direction: str




def _smooth(x: np.ndarray, kind: str, span: int, init: float) -> np.ndarray:
    """EMA (``kind="ema"``, decay ``1 - 2/(span+1)``, started at ``init``) or trailing mean."""
    if span <= 1:
        return x
    if kind == "ema":
        d = 1.0 - 2.0 / (span + 1.0)
        y, _ = lfilter([1 - d], [1, -d], x, zi=[d * init])
        return y
    cs = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(x.size)
    lo = np.maximum(0, idx + 1 - span)
    return (cs[idx + 1] - cs[lo]) / (idx + 1 - lo)


def _ema_alpha(ls: np.ndarray, lv: np.ndarray, es: np.ndarray, ev: np.ndarray, max_points: int = 20000) -> float | None:
    """Closed-form EMA coefficient from a logged EMA: ``e_t - e_{t-1} = a (x_t - e_{t-1})`` where the
    EMA and the raw loss are logged at the same consecutive steps (median of the per-step ratios
    over the steps with a clear innovation). None when it cannot be estimated or is not in (0, 1)."""
    if ls.size >= es.size and np.array_equal(ls[:es.size][: 4 * max_points], es[: 4 * max_points]):
        common = es[: 4 * max_points]
        il = ie = np.arange(common.size)
    else:
        common, il, ie = np.intersect1d(ls[:4 * max_points], es[:4 * max_points], assume_unique=True,
                                        return_indices=True)
    if common.size < 50:
        return None
    ok = np.flatnonzero(np.diff(common) == 1) + 1
    if ok.size < 30:
        return None
    ok = ok[:max_points]
    x = lv[il[ok]]
    e1 = ev[ie[ok]]
    e0 = ev[ie[ok - 1]]
    inn = x - e0
    big = np.abs(inn) > 0.25 * np.median(np.abs(inn)) + 1e-300
    if big.sum() < 30:
        return None
    a = float(np.median((e1 - e0)[big] / inn[big]))
    return a if 0.0 < a < 1.0 else None


def detect_ema_divergence(loss_steps: np.ndarray, loss: np.ndarray, ema_steps: np.ndarray, ema: np.ndarray,
                          *, min_band: float = 1.1, band_mads: float = 6.0, min_len: int = 3) -> tuple[list[EmaBreak], dict]:
    """Compare a logged EMA/smoothed loss with the smoothing of the raw loss that matches it best.

    The reference is chosen among EMAs and trailing means of the raw (finite) loss with spans
    1..16384 steps (powers of 2, refined around the best, plus the EMA decay estimated in
    closed form from the logged EMA), by the smallest median absolute log-gap to the logged series; the band is
    ``max(min_band, exp(band_mads * robust sd of the log-gap))``. Stretches of at least
    ``min_len`` logged points outside the band are reported.

    Parameters
    ----------
    loss_steps, loss : ndarray, shape (n,)
        Training steps (increasing) and the raw loss logged at them.
    ema_steps, ema : ndarray, shape (m,)
        Training steps (increasing) and the logged EMA/smoothed loss at them.
    min_band : float
        Least tolerated ratio logged EMA / reference (unitless).
    band_mads : float
        Band width in robust standard deviations of the log-gap.
    min_len : int
        Least length of a reported stretch, in logged EMA points.

    Returns
    -------
    breaks : list of EmaBreak
        ``start``/``end`` index ``ema``.
    info : dict
        ``{"reference": name, "band": ratio}`` (empty when the series cannot be compared).
    """
    ls = np.asarray(loss_steps, dtype=np.int64)
    lv = np.asarray(loss, dtype=np.float64)
    es = np.asarray(ema_steps, dtype=np.int64)
    ev = np.asarray(ema, dtype=np.float64)
    okl = np.isfinite(lv)
    oke = np.isfinite(ev)
    if okl.sum() < 20 or oke.sum() < 20:
        return [], {}
    if not okl.all():
        ls, lv = ls[okl], lv[okl]
    epos = np.flatnonzero(oke)
    es_f, ev_f = (es, ev) if oke.all() else (es[oke], ev[oke])
    log_scale = bool(np.all(lv > 0) and np.all(ev_f > 0))
    # the raw value at or just before each EMA step
    aligned = bool(np.array_equal(ls, es_f))  # the usual case: both logged at every step
    at = np.arange(ls.size) if aligned else np.searchsorted(ls, es_f, side="right") - 1
    valid = (at >= 0) & (es_f <= ls[-1])  # EMA points after the raw loss's last finite value: no reference
    if valid.sum() < 20:
        return [], {}
    at = np.maximum(at, 0)
    scale = 1.0 if log_scale else max(robust_scale(lv), 1e-12)
    target = np.log(ev_f) if log_scale else ev_f / scale
    init = float(ev_f[0])
    # choose the smoothing: coarse spans (powers of 2), then a finer grid around the best and, for an
    # EMA, the decay estimated in closed form; each candidate is scored on <= 3 chunks of the run
    # (the median cost is robust to a break), at most 1500 logged points each
    n = lv.size

    def cost_of(kind: str, span: int) -> float | None:
        chunk = min(n, max(4000, 6 * span))
        costs = []
        for c0 in sorted({0, max(0, n // 2 - chunk // 2), max(0, n - chunk)}):
            c1 = c0 + chunk
            warm = 0 if c0 == 0 else 2 * span  # the first chunk starts from the logged EMA's own start value
            lo_i, hi_i = np.searchsorted(at, [c0 + warm, c1])
            sel = np.arange(lo_i, hi_i, max(1, int(np.ceil((hi_i - lo_i) / 1500))))
            sel = sel[valid[sel]]
            if sel.size < 10:
                continue
            seg_init = init if c0 == 0 else float(np.mean(lv[max(0, c0 - 1):c0 + 1]))
            pos = at[sel] - c0
            if kind == "mean":  # trailing means only where they are compared
                cs = np.concatenate([[0.0], np.cumsum(lv[c0:c1])])
                lo_p = np.maximum(0, pos + 1 - span)
                v = (cs[pos + 1] - cs[lo_p]) / (pos + 1 - lo_p)
            else:
                v = _smooth(lv[c0:c1], kind, span, seg_init)[pos]
            if log_scale:
                if not np.all(v > 0):
                    return None
                v = np.log(v)
            else:
                v = v / scale
            costs.append(np.abs(target[sel] - v))
        if not costs:
            return None
        # lower quartile of the gaps: a logged EMA that breaks for a third of the run still picks its own smoothing
        return float(np.percentile(np.concatenate(costs), 25))

    tried: dict[tuple[str, int], float | None] = {}

    def consider(kind: str, span: int, *, longest: int = max(1, n // 3)) -> None:
        span = int(max(1, span))
        if span > longest or (kind == "mean" and span == 1) or (kind, span) in tried:
            return
        tried[(kind, span)] = cost_of(kind, span)

    for kind in ("ema", "mean"):
        for j in range(0, 15):
            consider(kind, 2 ** j)
    scored = [(c, k, sp) for (k, sp), c in tried.items() if c is not None]
    if scored:
        _, k0, s0 = min(scored)
        for f in (2 ** -0.75, 2 ** -0.5, 2 ** -0.25, 2 ** 0.25, 2 ** 0.5, 2 ** 0.75):
            consider(k0, int(round(s0 * f)))
    a_hat = _ema_alpha(ls, lv, es_f, ev_f)
    if a_hat is not None:
        # the logged EMA's own decay, however long against the run (decay 0.99 over a 300-step run:
        # a span of 199; the grid above stops at a third of the run)
        consider("ema", int(round(2.0 / a_hat - 1.0)), longest=max(1, 4 * n))
    scored = [(c, k, sp) for (k, sp), c in tried.items() if c is not None]
    best = min(scored) if scored else None
    if best is None:
        return [], {}
    _, kind, span = best
    name = f"{kind}{span}" if span > 1 else "raw"
    sm = _smooth(lv, kind, span, init)
    if log_scale and not np.all(sm > 0):
        return [], {}
    sm_at = sm if aligned else sm[at]
    ref = np.log(sm_at) if log_scale else sm_at / scale
    gap = target - ref
    all_valid = bool(valid.all())
    if not all_valid:
        gap[~valid] = 0.0
    stride = max(1, gap.size // 200_000)  # strided: the median and MAD of ~200k points suffice
    gv = gap[::stride] if all_valid else gap[::stride][valid[::stride]]
    g_med = float(np.median(gv))
    sd = MAD_TO_SIGMA * float(np.median(np.abs(gv - g_med)))
    band = max(np.log(min_band) if log_scale else (min_band - 1.0) * float(np.median(np.abs(lv))) / scale,
               band_mads * sd)
    dev = np.abs(gap - g_med)
    out_mask = dev > band
    if not all_valid:
        out_mask &= valid
    out_mask &= at >= min(span, n // 10)
    info = {"reference": name, "band": float(np.exp(band)) if log_scale else float(band * scale)}
    breaks: list[EmaBreak] = []
    if not out_mask.any():
        return breaks, info
    p = np.flatnonzero(out_mask)
    cut = np.flatnonzero(np.diff(p) > 2)
    for s, e in zip(np.concatenate([[0], cut + 1]), np.concatenate([cut, [p.size - 1]])):
        a, b = int(p[s]), int(p[e])
        if b - a + 1 < min_len:
            continue
        seg = np.arange(a, b + 1)
        k = int(seg[np.argmax(np.abs(gap[seg]))])
        g = float(gap[k])
        raw = float(sm[at[k]])
        breaks.append(EmaBreak(start=int(epos[a]), end=int(epos[b]),
                               max_gap=float(np.exp(abs(g))) if log_scale else abs(g) * scale,
                               band=info["band"], raw_level=raw, ema_value=float(ev_f[k]),
                               direction="above" if g > 0 else "below"))
    return breaks, info
