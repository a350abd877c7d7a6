"""Latent analyzers: channel statistics, pre/post drift, batch-to-batch shift, periodicity.

Pure functions over arrays of shape (B, C, H, W) (batch, channel, latent rows,
latent columns). Non-finite values are excluded from statistics and counted.

Batch shift is a two-sample problem with *images* as the unit: every sample of
a file is summarised per channel by the distribution of its standardised,
winsorised values (a CDF on a common grid); a file's distance to the rest is
the Wasserstein-1 (earth mover's) distance between the mixture of its samples
and the mixture of all other samples. The threshold is a max-T permutation
test: sample-to-file labels are shuffled (keeping file sizes), and the
``1 - alpha / C`` quantile of the largest distance over files, per channel
(max-T over files, Bonferroni over channels), controls the family-wise error
rate; a minimum effect size (in standard
deviations) keeps tiny-but-significant shifts out. Files that are robust
outliers on a first look (leave-one-out distance above median + 4 MAD) are
kept out of the reference and the permutation pool, so that several shifted
files do not inflate the null and mask each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .robust import MAD_TO_SIGMA

#: minimum Wasserstein-1 distance (standard deviations of the channel) reported as a batch shift
MIN_SHIFT_EFFECT = 0.25
#: post/pre standard-deviation ratio outside [1/STD_RATIO_LIMIT, STD_RATIO_LIMIT] is a drift in any case
#: (an epsilon prediction on latents of std 0.3 legitimately reaches ~3 at small timesteps)
STD_RATIO_LIMIT = 5.0
#: |mean(post) - mean(pre)| above this many pre standard deviations is a drift in any case
MEAN_SHIFT_LIMIT = 3.0
#: across files: a file's log std ratio this far (factor) from the run's median, at robust z >= DRIFT_Z
RELATIVE_RATIO_LIMIT = 2.0
#: across files: a file's mean shift this far (pre std) from the run's median, at robust z >= DRIFT_Z
RELATIVE_SHIFT_LIMIT = 1.0
DRIFT_Z = 4.0


def channel_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics over batch and space, finite values only.

    Parameters
    ----------
    x : ndarray, shape (B, C, H, W)
        Latents: B samples, C channels, H × W latent cells (latent units).

    Returns
    -------
    dict of str to ndarray of shape (C,)
        ``mean``, ``std``, ``min``, ``max``, ``p01``, ``p99`` (NaN for a channel
        without finite values) and ``nonfinite`` (count, int64).
    """
    x = np.asarray(x, dtype=np.float32)
    c = x.shape[1]
    v = np.moveaxis(x, 1, 0).reshape(c, -1)
    finite = np.isfinite(v)
    out = {k: np.full(c, np.nan) for k in ("mean", "std", "min", "max", "p01", "p99")}
    out["nonfinite"] = (v.shape[1] - finite.sum(axis=1)).astype(np.int64)
    for i in range(c):
        vi = v[i][finite[i]].astype(np.float64)
        if vi.size == 0:
            continue
        out["mean"][i] = vi.mean()
        out["std"][i] = vi.std()
        out["min"][i] = vi.min()
        out["max"][i] = vi.max()
        out["p01"][i], out["p99"][i] = np.percentile(vi, [1, 99])
    return out


@dataclass
class DriftResult:
    """Post-vs-pre statistics of one file, per channel (arrays of shape (C,))."""

    std_ratio: np.ndarray
    mean_shift: np.ndarray
    nonfinite_pre: np.ndarray
    nonfinite_post: np.ndarray
    drifting: np.ndarray  # bool (C,)

    @property
    def channels(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.drifting)]


def stats_drift(pre: np.ndarray, post: np.ndarray, *, std_ratio_limit: float = STD_RATIO_LIMIT,
                mean_shift_limit: float = MEAN_SHIFT_LIMIT) -> DriftResult:
    """Compare the UNet's output statistics with its input's, per channel (one file).

    How far a healthy prediction's statistics sit from its input's depends on
    the parameterisation (epsilon, v, x0), the timesteps and the latent scale,
    so one file is judged only against wide absolute limits: the
    standard-deviation ratio post/pre outside ``[1/std_ratio_limit,
    std_ratio_limit]`` (an exploding or collapsed prediction), means more than
    ``mean_shift_limit`` input standard deviations apart, or non-finite values
    in the prediction that the input does not have. :func:`drift_over_files`
    adds the relative test against the run's own files.

    Parameters
    ----------
    pre, post : ndarray, shape (B, C, H, W)
        Latents entering the UNet and its prediction.
    std_ratio_limit : float
        Largest tolerated factor between the standard deviations of post and pre (either way).
    mean_shift_limit : float
        Largest tolerated |mean(post) − mean(pre)|, in pre standard deviations.

    Returns
    -------
    DriftResult
        Arrays of shape (C,).
    """
    a, b = channel_stats(pre), channel_stats(post)
    sd_pre = np.where(a["std"] > 1e-12, a["std"], np.nan)
    ratio = b["std"] / sd_pre
    shift = (b["mean"] - a["mean"]) / sd_pre
    with np.errstate(invalid="ignore"):
        drifting = ((ratio > std_ratio_limit) | (ratio < 1.0 / std_ratio_limit)
                    | (np.abs(shift) > mean_shift_limit)
                    | ((b["nonfinite"] > 0) & (a["nonfinite"] == 0)))
    return DriftResult(ratio, shift, a["nonfinite"], b["nonfinite"], np.asarray(drifting, bool))


def drift_over_files(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[DriftResult]:
    """Post-vs-pre drift of every file, absolute and relative to the run's other files.

    Per channel, each file's log standard-deviation ratio and mean shift are
    compared with their median over the files (robust z with the MAD): a file
    drifts when it is at least :data:`DRIFT_Z` robust deviations away *and* its
    ratio differs from the median by a factor :data:`RELATIVE_RATIO_LIMIT` (or
    its mean shift by :data:`RELATIVE_SHIFT_LIMIT` pre standard deviations).
    The relative test needs at least 4 files; the absolute limits of
    :func:`stats_drift` always apply.

    Parameters
    ----------
    pairs : list of (pre, post), each ndarray (B, C, H, W)
        One pair per file, in step order.

    Returns
    -------
    list of DriftResult
        One per pair, ``drifting`` combining both tests.
    """
    res = [stats_drift(pre, post) for pre, post in pairs]
    if len(res) < 4 or len({r.std_ratio.shape for r in res}) != 1:
        return res
    lr = np.log(np.maximum(np.array([r.std_ratio for r in res], np.float64), 1e-9))
    ms = np.array([r.mean_shift for r in res], np.float64)
    for values, floor, limit in ((lr, 0.05, np.log(RELATIVE_RATIO_LIMIT)), (ms, 0.1, RELATIVE_SHIFT_LIMIT)):
        with np.errstate(invalid="ignore"):
            med = np.nanmedian(values, axis=0, keepdims=True)
            mad = np.maximum(MAD_TO_SIGMA * np.nanmedian(np.abs(values - med), axis=0, keepdims=True), floor)
            off = (np.abs(values - med) >= limit) & (np.abs(values - med) / mad >= DRIFT_Z)
        for i, r in enumerate(res):
            r.drifting |= np.nan_to_num(off[i], nan=False).astype(bool)
    return res


@dataclass
class ShiftResult:
    """Batch-shift test over files.

    Attributes
    ----------
    distance : ndarray, shape (F, C)
        Wasserstein-1 distance of each file's samples to all others, in channel
        standard deviations.
    threshold : ndarray, shape (C,)
        Per channel: distances above it are shifts (the larger of the
        permutation threshold and the minimum effect).
    perm_threshold : ndarray of shape (C,) or None
        Per channel, the ``1 - alpha / C`` quantile of the permutation
        distribution of the largest distance over files (None when the robust
        outlier rule was used).
    method : str
        ``"permutation"``, or ``"none"`` when untestable (fewer than 3 files,
        or one sample per file: a lone unusual image cannot be told from a
        shifted batch of one).
    shifted : ndarray of bool, shape (F, C)
    p_value : ndarray, shape (F, C)
        Family-wise permutation p-values (NaN when untestable).
    file_threshold : ndarray, shape (F, C)
        The threshold each file is judged against: ``threshold`` for most files; a file
        that looked like an outlier on a first look gets its own (its null pool holds its
        own samples beside the unsuspected files').
    """

    distance: np.ndarray
    threshold: np.ndarray
    perm_threshold: np.ndarray | None
    method: str
    shifted: np.ndarray
    p_value: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    file_threshold: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.file_threshold is None:
            self.file_threshold = np.broadcast_to(self.threshold, self.distance.shape).copy()


def _sample_cdfs(batches: list[np.ndarray], n_bins: int, trim: float, max_values: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-sample, per-channel CDFs on a common standardised, winsorised grid.

    Returns (cdfs (N, C, n_bins), owner (N,) file index, dx grid step in std units).
    """
    c = batches[0].shape[1]
    flat = [np.moveaxis(b, 1, 0).reshape(c, b.shape[0], -1) for b in batches]  # (C, B, HW)
    edges_all = []
    for ch in range(c):
        pool = np.concatenate([f[ch].ravel() for f in flat])
        pool = pool[np.isfinite(pool)]
        if pool.size > 200_000:
            pool = rng.choice(pool, 200_000, replace=False)
        if pool.size == 0:
            edges_all.append(None)
            continue
        lo, q1, med, q3, hi = np.percentile(pool, [100 * trim, 25, 50, 75, 100 * (1 - trim)])
        scale = (q3 - q1) / 1.349
        if not scale > 1e-12:
            scale = float(pool.std()) or 1.0
        edges_all.append(((lo - med) / scale, (hi - med) / scale, med, scale))
    lo_s = min(e[0] for e in edges_all if e is not None)
    hi_s = max(e[1] for e in edges_all if e is not None)
    grid = np.linspace(lo_s, hi_s, n_bins + 1)
    dx = float(grid[1] - grid[0])
    owner = np.concatenate([np.full(b.shape[0], i) for i, b in enumerate(batches)])
    n = owner.size
    out = np.zeros((n, c, n_bins), np.float64)
    for ch in range(c):
        e = edges_all[ch]
        if e is None:
            continue
        _, _, med, scale = e
        s = 0
        for f in flat:
            vals = f[ch]
            for row in vals:
                row = row[np.isfinite(row)]
                if row.size > max_values:
                    row = row[rng.choice(row.size, max_values, replace=False)]
                if row.size:
                    z = np.clip((row - med) / scale, grid[0], grid[-1])
                    h, _ = np.histogram(z, bins=grid)
                    out[s, ch] = np.cumsum(h) / row.size
                else:
                    out[s, ch] = np.nan
                s += 1
    return out, owner, dx


def _group_distances(cdfs: np.ndarray, owner: np.ndarray, n_files: int, dx: float,
                     ref: np.ndarray | None = None) -> np.ndarray:
    """W1 distance of each file's sample mixture to a reference mixture, shape (F, C).

    The reference is every sample flagged in ``ref`` (default: all) except the
    file's own samples.
    """
    valid = np.isfinite(cdfs)
    filled = np.where(valid, cdfs, 0.0)
    cnt = valid.astype(np.float64)
    onehot = np.zeros((n_files, owner.size))
    onehot[owner, np.arange(owner.size)] = 1.0
    shape = (n_files,) + filled.shape[1:]
    flat_f, flat_c = filled.reshape(owner.size, -1), cnt.reshape(owner.size, -1)
    gsum = (onehot @ flat_f).reshape(shape)
    gcnt = (onehot @ flat_c).reshape(shape)
    if ref is None:
        tsum, tcnt, rsum, rcnt = filled.sum(axis=0), cnt.sum(axis=0), gsum, gcnt
    else:
        w = ref.astype(np.float64)
        tsum, tcnt = (w @ flat_f).reshape(shape[1:]), (w @ flat_c).reshape(shape[1:])
        rsum = ((onehot * w[None]) @ flat_f).reshape(shape)
        rcnt = ((onehot * w[None]) @ flat_c).reshape(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = gsum / gcnt
        r = (tsum[None] - rsum) / (tcnt[None] - rcnt)
    d = np.abs(g - r).sum(axis=-1) * dx
    return np.where(np.isfinite(d), d, 0.0)


def _provisional_outliers(dist: np.ndarray, k: float = 4.0) -> np.ndarray:
    """Files whose leave-one-out distance is a robust outlier in some channel (bool (F,))."""
    med = np.median(dist, axis=0, keepdims=True)
    mad = MAD_TO_SIGMA * np.median(np.abs(dist - med), axis=0, keepdims=True)
    return (dist > med + k * np.maximum(mad, 0.02)).any(axis=1)


def batch_shift(batches: list[np.ndarray], *, alpha: float = 0.01, n_perm: int | None = None,
                min_effect: float = MIN_SHIFT_EFFECT, trim: float = 0.005, n_bins: int = 96,
                max_values: int = 4096, seed: int = 0) -> ShiftResult:
    """Test every file (batch) for a distribution shift against the others, per channel.

    Parameters
    ----------
    batches : list of ndarray, each (B_f, C, H, W)
        One entry per file, same channel count.
    alpha : float
        Family-wise error rate over all files and channels.
    n_perm : int, optional
        Permutations of sample-to-file labels (default: enough that the smallest p-value, ``C / (n_perm + 1)``,
        is at most ``alpha / 2``, and at least 1000).
    min_effect : float
        Minimum distance (channel standard deviations) reported.
    trim : float
        Tail fraction winsorised on each side before the distance.
    n_bins, max_values : int
        CDF grid size and values sampled per image and channel.
    seed : int
        Seed of the permutations and the sampling (the result is deterministic).

    Returns
    -------
    ShiftResult
        Arrays of shape (F, C), F = ``len(batches)``; distances in channel standard deviations.
    """
    rng = np.random.default_rng(seed)
    n_files = len(batches)
    c = batches[0].shape[1] if batches else 0
    empty = np.zeros((n_files, c))
    if n_files < 3:
        return ShiftResult(empty, np.full(c, np.inf), None, "none", empty.astype(bool), np.full_like(empty, np.nan))
    if n_perm is None:
        n_perm = max(1000, int(np.ceil(2 * c / alpha)))
    cdfs, owner, dx = _sample_cdfs(batches, n_bins, trim, max_values, rng)
    dist = _group_distances(cdfs, owner, n_files, dx)
    sizes = np.bincount(owner, minlength=n_files)
    if sizes.max() >= 2:
        # Calibrate on files that are not suspect: a shifted file in the pool would inflate the
        # permutation null (its samples scatter into every permuted group) and hide itself and others.
        # (only files of 3+ samples: two unusual images sharing a file by chance are too common)
        suspect = (_provisional_outliers(dist) & (sizes >= 3)) if n_files >= 5 else np.zeros(n_files, bool)
        if not (suspect.any() and (~suspect).sum() >= 3):
            suspect[:] = False
        clean = ~suspect[owner]
        if suspect.any():
            dist = _group_distances(cdfs, owner, n_files, dx, ref=clean)

        def null_of(members: np.ndarray) -> np.ndarray:
            """Max-over-files permutation null (n_perm, C) of the files in ``members`` pooled."""
            keep = np.isin(owner, members)
            remap = np.full(n_files, -1)
            remap[members] = np.arange(len(members))
            pool_cdfs, pool_owner = cdfs[keep], remap[owner[keep]]
            out = np.empty((n_perm, c))
            for i in range(n_perm):
                perm = pool_owner[rng.permutation(pool_owner.size)]
                out[i] = _group_distances(pool_cdfs, perm, len(members), dx).max(axis=0)
            return out

        clean_files = np.flatnonzero(~suspect)
        nulls = {-1: null_of(clean_files)}
        # A suspect is judged against the unsuspected files' pool *plus its own samples*: under its null
        # hypothesis they are exchangeable with the rest, and leaving them out would shrink the null (a
        # false alarm on heterogeneous healthy batches); other suspects stay out, so they do not mask it.
        for f in np.flatnonzero(suspect):
            nulls[int(f)] = null_of(np.sort(np.append(clean_files, f)))
        p = np.empty((n_files, c))
        file_thr = np.empty((n_files, c))
        for f in range(n_files):
            null_max = nulls[f if suspect[f] else -1]
            # family-wise over files (max statistic) and channels (Bonferroni)
            p[f] = np.minimum(1.0, (1 + (null_max >= dist[f][None]).sum(axis=0)) / (n_perm + 1) * c)
            file_thr[f] = np.maximum(np.quantile(null_max, 1 - alpha / c, axis=0), min_effect)
        perm_thr = np.quantile(nulls[-1], 1 - alpha / c, axis=0)
        thr = np.maximum(perm_thr, min_effect)
        # the p-value decides (the quantile of 1000 permutations at alpha / C is coarse), the threshold sets the effect
        return ShiftResult(dist, thr, perm_thr, "permutation", (dist > file_thr) & (p <= alpha), p, file_thr)
    # One sample per file: shuffling labels changes nothing, and a single unusual image is
    # indistinguishable from a shifted batch of one - not testable, so nothing is flagged.
    return ShiftResult(dist, np.full(c, np.inf), None, "none", np.zeros_like(dist, bool),
                       np.full_like(dist, np.nan))


@dataclass
class PeriodicityHit:
    """A periodic structure in one latent channel.

    Attributes
    ----------
    channel : int
    axis : str
        ``"vertical"`` (varies along x, columns repeat) or ``"horizontal"`` (along y).
    period : int
        Period in latent cells.
    strength : float
        Whitened autocorrelation at the period (0..1).
    snr : float
        Harmonic-to-background power ratio (NaN when not measurable).
    files : list of int
        Indices of the files that carry it.
    banded : bool
        True when the structure is constant along the other axis (bands:
        found in the per-sample mean profiles) — latent stripes; False for a
        2-D (grid) periodicity found only in the full maps.
    """

    channel: int
    axis: str
    period: int
    strength: float
    snr: float
    files: list[int]
    banded: bool


_AXES = (("vertical", 1), ("horizontal", 0))

#: A latent artifact sits at the same place in every sample; natural periodic content (coins, bricks,
#: fabric) repeats at a random phase from sample to sample. A band period is kept only when its complex
#: amplitudes add up across the samples that carry it (:func:`phase_agreement`): coherence (0..1) at least
#: this much when pooled over files ...
PHASE_COHERENCE = 0.8
#: ... and this much for a file judged alone (a batch of 4 random-phase samples reaches 0.9 in ~4 %).
PHASE_COHERENCE_ONE_FILE = 0.95
#: The agreement must also be more than chance for the number of samples that carry the component. Natural
#: content often sits in one or two samples of the pool only (a crop of coins in two files of six): their
#: amplitudes dominate the sum, and two random phases reach a coherence of 0.8 in 41 % of draws, whatever
#: the number of samples. The weighted Rayleigh test judges it: ``Z = |sum a|^2 / sum |a|^2 = c^2 N_eff``
#: (``N_eff`` the participation ratio of the magnitudes, the number of samples that carry the component),
#: random phases give ``P(Z >= z) ~ exp(-z)``. Pooled over files the p-value must be at most this ...
PHASE_ALPHA = 0.01
#: ... and for a file judged alone at most this (4 samples at coherence 0.95: p = 0.027; 3 of them: 0.067).
PHASE_ALPHA_ONE_FILE = 0.05


@dataclass
class PhaseAgreement:
    """How the samples' periodic components at one period agree in phase (:func:`phase_agreement`).

    Attributes
    ----------
    coherence : float
        ``|sum of complex amplitudes| / sum of their magnitudes`` (0..1): 1 when every sample carries the
        pattern at the same phase, about ``1/sqrt(N)`` for N random phases (0 when there is no component).
    n_eff : float
        Samples that carry the component: ``(sum |a|)^2 / sum |a|^2`` (N for equal magnitudes, 1 when one
        sample holds it all).
    p_value : float
        Chance that random phases agree as well: ``exp(-coherence^2 n_eff)`` (the weighted Rayleigh test).
    """

    coherence: float
    n_eff: float
    p_value: float

    def holds(self, coherence: float, alpha: float) -> bool:
        """Coherent at least ``coherence`` and beyond chance at level ``alpha``."""
        return self.coherence >= coherence and self.p_value <= alpha


def phase_agreement(profiles: np.ndarray, period: int) -> PhaseAgreement:
    """How much the samples' periodic components at ``period`` agree in phase.

    Parameters
    ----------
    profiles : ndarray, shape (N, L)
        One profile per sample (latent cells).
    period : int
        Period in cells.

    Returns
    -------
    PhaseAgreement
        Coherence, the number of samples carrying the component and the chance of that agreement
        under random phases.
    """
    x = np.asarray(profiles, np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    a = x @ np.exp(-2j * np.pi * np.arange(x.shape[1]) / period)
    mag = np.abs(a)
    total, power = float(mag.sum()), float((mag ** 2).sum())
    if not total > 0:
        return PhaseAgreement(0.0, 0.0, 1.0)
    c = float(np.abs(a.sum()) / total)
    n_eff = total ** 2 / power
    return PhaseAgreement(c, n_eff, float(np.exp(-c * c * n_eff)))


def _profiles(x: np.ndarray, channel: int, axis: int) -> np.ndarray:
    """Per-sample mean profiles of one channel along ``axis`` (1 = along x), shape (B, L)."""
    a = x[:, channel] if axis == 1 else np.swapaxes(x[:, channel], 1, 2)
    ok = np.isfinite(a)
    n = ok.sum(axis=1)
    p = np.where(ok, a, 0.0).sum(axis=1, dtype=np.float64) / np.maximum(n, 1)  # nanmean without its empty-slice warning
    return np.where(n > 0, p, 0.0).astype(a.dtype if a.dtype.kind == "f" else np.float32)


def _lines(x: np.ndarray, channel: int, axis: int) -> np.ndarray:
    """All rows (axis 1) or columns (axis 0) of one channel of every sample, shape (B*H, W) or (B*W, H)."""
    a = x[:, channel] if axis == 1 else np.swapaxes(x[:, channel], 1, 2)
    return np.nan_to_num(a.reshape(-1, a.shape[-1]), nan=0.0, posinf=0.0, neginf=0.0)


def latent_periodicity(batches: list[np.ndarray], *, threshold: float | None = None, min_repeats: int = 3,
                       per_file: bool = True) -> list[PeriodicityHit]:
    """Find periodic structure in latent channels, pooled over files, with the files that carry it.

    Per channel and axis, the per-sample mean profiles (bands) of every file
    are pooled as independent realisations and passed to the spectral
    toolkit's period estimator (whitened autocorrelation, octave guard,
    harmonic power against the local background); natural image content does
    not share a period across images, so it averages out while a fixed
    artifact adds up. Each file then carries the period when its own
    correlation at that lag is at least 0.6 of the pooled one (and 0.3); a pool
    carried by a single file is judged as that file alone. A band period must
    also be phase-coherent across the samples that carry it
    (:data:`PHASE_COHERENCE`, :data:`PHASE_ALPHA`, :func:`phase_agreement`): an
    artifact sits at the same place in every sample, a periodic subject (coins,
    bricks) repeats at a random phase, often in a few samples only. Grids
    (2-D periodicity with no band profile) are searched on all rows/columns of
    the maps. A file-only pattern (too diluted to show in the pool) is
    accepted when that file alone is significant at twice the threshold (and
    coherent at :data:`PHASE_COHERENCE_ONE_FILE`, :data:`PHASE_ALPHA_ONE_FILE`).

    Parameters
    ----------
    batches : list of ndarray, each (B_f, C, H, W)
        One entry per file (B_f samples, C channels, H × W latent cells).
    threshold : float, optional
        ``--fft-threshold`` (harmonic-to-background power ratio).
    min_repeats : int
        A period must repeat at least this often across the latent (period ≤ side / min_repeats).
    per_file : bool
        Also search each file alone (the stricter file-only test). Off for arrays where image
        content shows with little noise (``post - pre``): one file with two crops of a
        naturally periodic photo would pass it.

    Returns
    -------
    list of PeriodicityHit
        Periods in latent cells.
    """
    from .spectral import DEFAULT_THRESHOLD, estimate_period, period_correlations

    thr = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    hits: list[PeriodicityHit] = []
    if not batches:
        return hits
    c = batches[0].shape[1]
    for ch in range(c):
        for name, axis in _AXES:
            profiles = [_profiles(b, ch, axis) for b in batches]
            length = profiles[0].shape[1]
            if any(p.shape[1] != length for p in profiles):
                continue
            max_p = length // max(2, min_repeats)
            if max_p < 2:
                continue
            pooled = estimate_period(np.concatenate(profiles), axis=1, threshold=thr, min_period=2, max_period=max_p)
            found = None
            if pooled.significant and pooled.period:
                found = (pooled, True)
            else:
                grid = estimate_period(np.concatenate([_lines(b, ch, axis) for b in batches]), axis=1, threshold=thr,
                                       min_period=2, max_period=max_p)
                if grid.significant and grid.period and grid.strength >= 0.5:
                    found = (grid, False)
            if found is not None:
                est, banded = found
                files = []
                for i, b in enumerate(batches):
                    data = profiles[i] if banded else _lines(b, ch, axis)
                    r = period_correlations(data, 1, [est.period]).get(est.period, 0.0)
                    if np.isfinite(r) and r >= max(0.3, 0.6 * est.strength):
                        files.append(i)
                carried = files or list(range(len(batches)))
                if banded and not phase_agreement(np.concatenate([profiles[i] for i in carried]),
                                                  int(est.period)).holds(PHASE_COHERENCE, PHASE_ALPHA):
                    found = None  # a period shared by content at random phases (a periodic photo), not an artifact
                elif len(files) == 1 and len(batches) > 1:
                    # the pool is carried by one file: judge it as a single file (stricter, below)
                    found = None
                else:
                    hits.append(PeriodicityHit(ch, name, int(est.period), float(est.strength), float(est.snr),
                                               files or list(range(len(batches))), banded))
                    continue
            # a pattern in a few files only: each file alone, stricter
            local: dict[int, list[tuple[int, object]]] = {}
            for i, p in enumerate(profiles if per_file else []):
                e = estimate_period(p, axis=1, threshold=2 * thr, min_period=2, max_period=max_p)
                if not (e.significant and e.period and np.isfinite(e.snr) and e.strength >= 0.5):
                    continue
                # an artifact marks every sample of the batch; one periodic photo (coins, tiles) does not
                rs = [period_correlations(row, 1, [e.period]).get(e.period, 0.0) for row in p]
                if p.shape[0] > 1 and sum(r >= 0.5 for r in rs) < max(2, int(np.ceil(0.75 * p.shape[0]))):
                    continue
                if p.shape[0] > 1 and not phase_agreement(p, int(e.period)).holds(PHASE_COHERENCE_ONE_FILE,
                                                                                  PHASE_ALPHA_ONE_FILE):
                    continue
                local.setdefault(int(e.period), []).append((i, e))
            for period, items in local.items():
                best = max(items, key=lambda t: t[1].strength)[1]
                hits.append(PeriodicityHit(ch, name, period, float(best.strength), float(best.snr),
                                           [i for i, _ in items], True))
    return hits


@dataclass
class LatentStripe:
    """Banding in one latent channel (from :func:`diffdiag.analyzers.stripes.find_stripes`).

    ``stripe`` is in latent cells (bbox ``[x0, y0, x1, y1]``, ``period_px`` = period in
    cells or None when aperiodic); ``files`` are the indices of the files where the
    band shows on its own (all files when only the pooled map shows it).
    """

    channel: int
    stripe: object
    files: list[int]


def latent_stripes(batches: list[np.ndarray], *, threshold: float | None = None) -> list[LatentStripe]:
    """Periodic or aperiodic banding fixed in latent space, per channel.

    Each channel is averaged over every sample of every file: image content,
    which differs from sample to sample, averages out, while an artifact at
    fixed rows/columns stays. The mean map goes through the stripes toolkit
    (block column profiles, empirical noise from adjacent blocks, coherent
    runs). Files are attributed by running the same test on each file's own
    mean map.

    Parameters
    ----------
    batches : list of ndarray, each (B_f, C, H, W), same C, H, W
        One entry per file (latent cells).
    threshold : float, optional
        ``--fft-threshold`` for the period of a band.

    Returns
    -------
    list of LatentStripe
        Boxes and periods in latent cells (the check multiplies by ``--vae-scale`` for px).
    """
    from .stripes import find_stripes

    if not batches or len({b.shape[1:] for b in batches}) != 1:
        return []
    out: list[LatentStripe] = []
    stack = np.concatenate(batches)
    for ch in range(stack.shape[1]):
        with np.errstate(invalid="ignore"):
            m = np.nanmean(np.where(np.isfinite(stack[:, ch]), stack[:, ch], np.nan), axis=0)
        for st in find_stripes(np.nan_to_num(m), threshold=threshold):
            files = []
            for i, b in enumerate(batches):
                mi = np.nan_to_num(np.nanmean(np.where(np.isfinite(b[:, ch]), b[:, ch], np.nan), axis=0))
                if any(s.axis == st.axis for s in find_stripes(mi, threshold=threshold)):
                    files.append(i)
            out.append(LatentStripe(ch, st, files or list(range(len(batches)))))
    return out
