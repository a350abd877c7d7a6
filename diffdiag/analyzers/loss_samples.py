"""Samples whose presence in a batch raises the loss (a significance test, not a count)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from .robust import MAD_TO_SIGMA


@dataclass
class SampleEffect:
    """One training sample associated with high loss.

    Attributes
    ----------
    sample_id : str
    ratio : float
        Geometric-mean loss of the steps with the sample over the median step (residual ratio).
    p_value : float
        Raw one-sided p-value (Fisher's combination of the steps' rank p-values).
    q_value : float
        Benjamini-Hochberg adjusted p-value over all samples tested.
    n_steps : int
        Steps the sample appeared in.
    n_spike_steps : int
        Of those, steps that were spike events.
    """

    sample_id: str
    ratio: float
    p_value: float
    q_value: float
    n_steps: int
    n_spike_steps: int


def sample_loss_correlation(residual: np.ndarray, sample_ids: list[list[str] | None], *,
                            spike_mask: np.ndarray | None = None, alpha: float = 1e-3,
                            min_steps: int = 2, min_ratio: float = 1.3, min_z: float = 5.0,
                            min_sample_ratio: float = 3.5) -> tuple[list[SampleEffect], int]:
    """Test every sample id for higher-than-usual loss in the steps that contain it.

    Each step's residual (log-loss over its expected value) is turned into an upper-tail rank
    p-value ``p_i = rank_from_top_i / (n + 1)``; for a sample seen in steps ``S`` the statistic
    ``-2 sum_{i in S} log p_i`` is chi-square with ``2|S|`` degrees of freedom under the null
    (presence unrelated to the loss), which is sensitive both to a few extreme steps (spikes)
    and to a consistent moderate shift. P-values are adjusted with Benjamini-Hochberg; a
    sample is reported when ``q <= alpha``, it appeared in ``min_steps`` steps or more, its
    geometric-mean residual ratio is at least ``min_ratio``, the loss it implies for the sample
    itself (``B (r - 1) + 1`` in a batch of ``B``, ``r`` its steps' geometric-mean loss over a typical
    sample's steps: the batch loss is the mean of its samples')
    is at least ``min_sample_ratio`` times a typical sample's — a naturally hard image is
    within it (a healthy set's hardest of a few hundred images, 2-2.5x the median, implies up to
    ~3.3x through the heavy tail of a batch mean), a corrupted one is beyond — and it stands out from the natural spread between samples: a
    random-effects z of its mean residual (between-sample variance from the MAD across samples,
    within-sample variance over its step count) of at least ``min_z`` (the batch-mean's
    heavy tails let a naturally hard image pass that alone).

    Parameters
    ----------
    residual : ndarray, shape (n,)
        Per-step residuals: log-ratio of the loss to its expected value (or the difference on
        linear scale), as :attr:`~diffdiag.analyzers.loss_spikes.SpikeResult.residual`; NaN where unknown.
    sample_ids : list, length n
        The sample ids of each step's batch (None or empty when not logged).
    spike_mask : ndarray of bool, shape (n,), optional
        Steps that belong to spike events (for the evidence).
    alpha : float
        Largest Benjamini-Hochberg q-value reported.
    min_steps : int
        Least number of logged steps a reported sample appeared in.
    min_ratio : float
        Least geometric-mean residual ratio (loss with the sample / expected, unitless).
    min_z : float
        Least random-effects z of the sample's mean residual (in between-sample standard errors).
    min_sample_ratio : float
        Least loss implied for the sample itself, over a typical sample's (unitless).

    Returns
    -------
    effects : list of SampleEffect
        Significant samples, most significant first.
    n_tested : int
        Number of samples tested.
    """
    r = np.asarray(residual, dtype=np.float64)
    n = r.size
    rows, ids, sizes = [], [], []
    for i, lst in enumerate(sample_ids[:n]):
        if lst and np.isfinite(r[i]):
            sizes.append(len(lst))
            for s in dict.fromkeys(lst):  # a sample counted once per step
                rows.append(i)
                ids.append(str(s))
    if not rows:
        return [], 0
    rows_a = np.asarray(rows)
    uniq, inv = np.unique(np.asarray(ids, dtype=object).astype(str), return_inverse=True)
    ok = np.isfinite(r)
    m = int(ok.sum())
    order = np.argsort(-np.where(ok, r, -np.inf), kind="stable")
    rank_top = np.empty(n)
    rank_top[order] = np.arange(1, n + 1)
    p_step = np.where(ok, rank_top / (m + 1), np.nan)
    stat = np.bincount(inv, weights=-2.0 * np.log(p_step[rows_a]), minlength=uniq.size)
    cnt = np.bincount(inv, minlength=uniq.size)
    med = float(np.median(r[ok]))
    mean_res = np.bincount(inv, weights=r[rows_a], minlength=uniq.size) / np.maximum(cnt, 1)
    spk = np.zeros(uniq.size)
    if spike_mask is not None:
        sm = np.asarray(spike_mask, dtype=bool)
        spk = np.bincount(inv, weights=sm[rows_a].astype(float), minlength=uniq.size)
    pv = stats.chi2.sf(stat, 2 * cnt)
    tested = cnt >= min_steps
    n_tested = int(tested.sum())
    if n_tested == 0:
        return [], 0
    q = np.ones(uniq.size)
    pt = pv[tested]
    o = np.argsort(pt)
    adj = pt[o] * n_tested / np.arange(1, n_tested + 1)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    qt = np.empty(n_tested)
    qt[o] = np.minimum(adj, 1.0)
    q[tested] = qt
    ratio = np.exp(mean_res - med)
    # the natural spread between samples (some images are simply harder): a random-effects z of
    # each sample's mean residual against the other samples, so only outliers among samples count
    # numpy scalars, not Python floats: huge raw-scale residuals must become inf, never raise OverflowError
    with np.errstate(over="ignore", invalid="ignore"):
        s_within = MAD_TO_SIGMA * np.median(np.abs(r[ok] - med))
        mt = mean_res[tested]
        centre = np.median(mt)
        s_total = MAD_TO_SIGMA * np.median(np.abs(mt - centre))
        s_between2 = max(np.float64(0.0), np.square(s_total) - np.median(np.square(s_within) / cnt[tested]))
        zs = (mean_res - centre) / np.sqrt(s_between2 + np.square(s_within) / np.maximum(cnt, 1) + 1e-300)
        # against a typical sample's steps (the median sample), not the median step: the mean of a skewed
        # log-residual sits above its median, so every sample's own ``ratio`` starts above 1
        sample_ratio = float(np.median(sizes)) * (np.exp(mean_res - centre) - 1.0) + 1.0
    hit = np.flatnonzero(tested & (q <= alpha) & (ratio >= min_ratio) & (sample_ratio >= min_sample_ratio)
                         & (zs >= min_z))
    hit = hit[np.argsort(pv[hit])]
    return [SampleEffect(str(uniq[k]), float(ratio[k]), float(pv[k]), float(q[k]), int(cnt[k]), int(spk[k]))
            for k in hit], n_tested
