"""Cross-attention maps: per-token spatial entropy, concentration, flatness and periodicity.

A cross-attention layer of a diffusion UNet gives, for every latent position
(query) ``x`` and every conditioning token ``t``, the probability
``P[x, t]`` (a softmax over tokens). The *map of token t* is ``P[:, t]``
laid out on the latent grid, shape (H, W): where in the image that token acts.

Two failure modes (seed §8, finding ``attention_collapse``):

* **collapse to a point** — the token's map has (nearly) all its mass on one
  or two cells: spatial entropy near 0, the top cell holds most of the mass;
* **collapse to uniform** — the map is flat: every position attends to the
  token equally, so it carries no spatial information (coefficient of
  variation across the grid near 0).

Pure numpy; shapes are documented per function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TokenMapStats", "token_map_stats", "classify_collapse", "map_periodicity"]

#: defaults, overridable per call
POINT_PEAK = 0.5        # the top cell holds >= half the token's mass ...
POINT_ENTROPY = 0.15    # ... or the normalised spatial entropy is below this
UNIFORM_CV = 0.01       # std / mean across the grid below this = flat


@dataclass
class TokenMapStats:
    """Statistics of the maps of all tokens of one layer.

    Attributes (arrays of shape (T,))
    ----------
    entropy : normalised spatial entropy in [0, 1] (1 = perfectly uniform).
    peak : fraction of the token's mass in its top cell.
    cv : coefficient of variation of the map across cells (std / mean).
    mass : mean attention probability the token receives (over cells).
    periodicity : strongest non-DC spectral peak as a fraction of the map's AC power.
    period : (T, 2) the period (cells, [py, px]) of that peak; 0 where none.
    """

    entropy: np.ndarray
    peak: np.ndarray
    cv: np.ndarray
    mass: np.ndarray
    periodicity: np.ndarray
    period: np.ndarray
    shape: tuple[int, int] = field(default=(0, 0))


def map_periodicity(m: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Strength and period of the strongest spatial frequency of one map.

    Parameters
    ----------
    m : ndarray, shape (H, W)
        One token's attention map on the latent grid (cells).

    Returns
    -------
    strength : float
        Power of the strongest non-DC frequency / total non-DC power (0..1;
        a pure stripe or lattice gives values near 0.5 (±frequency pair) or more).
    period : (int, int)
        ``(py, px)`` period in cells of that frequency (0 on an axis with no
        variation along it).
    """
    m = np.asarray(m, dtype=np.float64)
    h, w = m.shape
    if h * w < 4:
        return 0.0, (0, 0)
    spec = np.abs(np.fft.fft2(m - m.mean())) ** 2
    spec[0, 0] = 0.0
    total = spec.sum()
    if not total > 0:
        return 0.0, (0, 0)
    iy, ix = np.unravel_index(int(np.argmax(spec)), spec.shape)
    fy = min(iy, h - iy)
    fx = min(ix, w - ix)
    # The ± pair carries the same power: count both.
    strength = float(min(1.0, 2.0 * spec[iy, ix] / total)) if (fy or fx) else 0.0
    return strength, (int(round(h / fy)) if fy else 0, int(round(w / fx)) if fx else 0)


def token_map_stats(maps: np.ndarray) -> TokenMapStats:
    """Per-token statistics of one layer's cross-attention maps.

    Parameters
    ----------
    maps : ndarray, shape (T, H, W)
        Attention probability of each token at each latent cell (averaged over
        heads and batch items). Non-negative.

    Returns
    -------
    TokenMapStats
        Arrays of shape (T,) (``period``: (T, 2), latent cells); ``shape`` is (H, W).
    """
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"maps must have shape (T, H, W), got {a.shape}")
    t, h, w = a.shape
    flat = np.clip(np.nan_to_num(a.reshape(t, h * w), nan=0.0, posinf=0.0), 0.0, None)
    total = flat.sum(axis=1)
    n = h * w
    safe = np.where(total > 0, total, 1.0)
    p = flat / safe[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    ent = ent / np.log(n) if n > 1 else np.zeros(t)
    mean = flat.mean(axis=1)
    cv = np.where(mean > 0, flat.std(axis=1) / np.where(mean > 0, mean, 1.0), 0.0)
    peak = p.max(axis=1)
    per = np.zeros(t)
    period = np.zeros((t, 2), dtype=np.int64)
    for i in range(t):
        per[i], period[i] = map_periodicity(flat[i].reshape(h, w))
    ent = np.where(total > 0, ent, 0.0)
    return TokenMapStats(ent, peak, cv, mean, per, period, (h, w))


def classify_collapse(stats: TokenMapStats, *, point_peak: float = POINT_PEAK,
                      point_entropy: float = POINT_ENTROPY, uniform_cv: float = UNIFORM_CV
                      ) -> list[str | None]:
    """Label each token's map ``"point"``, ``"uniform"`` or None (healthy).

    Parameters
    ----------
    stats : TokenMapStats
        Per-token statistics of one layer (arrays of shape (T,)), from
        :func:`token_map_stats`.
    point_peak : float
        Fraction of the token's mass in its top cell (0..1) at or above which
        the map has collapsed to a point.
    point_entropy : float
        Normalised spatial entropy (0..1) at or below which the map has
        collapsed to a point.
    uniform_cv : float
        Coefficient of variation across cells (std / mean, unitless) at or
        below which a map that receives attention is flat.

    Returns
    -------
    list of {"point", "uniform", None}, length T
    """
    out: list[str | None] = []
    n = stats.shape[0] * stats.shape[1]
    for i in range(len(stats.entropy)):
        if stats.mass[i] <= 0:
            out.append(None)          # a token nobody attends to has no map at all
        elif n > 1 and (stats.peak[i] >= point_peak or stats.entropy[i] <= point_entropy):
            out.append("point")
        elif stats.cv[i] <= uniform_cv:
            out.append("uniform")
        else:
            out.append(None)
    return out
