"""Abrupt change of a run's samples: per-step image statistics against the run's earlier samples.

Pure functions. The samples of one series (a source and key, e.g. the
``validation`` images of a TensorBoard log) are summarised per step by the
median, over that step's images, of four statistics of the picture
(:func:`image_stats`): mean luminance, contrast (standard deviation of the
luminance), clipped share (channel values pinned at black or white) and
detail (mean absolute Laplacian of the luminance, per pixel).

Rule (documented thresholds)
----------------------------
Step ``i`` (with at least one earlier step) *changed abruptly* when one of its
statistics moved far from the **baseline** — the median of that statistic
over all earlier steps — and most of that move happened since the step just
before (a jump, not a slow drift):

* clipped share: up by ≥ ``clip_rise`` (0.15, absolute) and to ≥ 3× the
  baseline; since the previous step up by ≥ half of that;
* mean luminance: moved by ≥ ``mean_shift`` (0.3 of the range); since the
  previous step by ≥ half of that;
* contrast or detail: changed by a factor ≥ ``contrast_ratio`` (2.5) or
  ``detail_ratio`` (4) either way; since the previous step by ≥ the square
  root of that factor.

Validation images drawn with a fixed seed (as trainers do) change gradually
while a LoRA learns: on healthy tiny-LoRA runs the step-to-step changes stay
below a tenth of these thresholds. An exploding model turns them into
saturated blobs within one validation interval (clipped share 0 → 0.3–0.5,
mean luminance jumping by 0.5). The first such step is the change; the later
steps whose statistics still break the rule against the same baseline are
listed as staying changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .pixel import clip_shares
from .spectral import to_gray

STATS = ("mean", "contrast", "clipped", "detail")
#: added to contrast and detail before taking ratios (a flat picture has neither)
RATIO_FLOOR = 1e-3


def image_stats(image: np.ndarray) -> dict[str, float]:
    """The four statistics of one picture that the change rule compares.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Float in [0, 1]; non-finite values count as 0.

    Returns
    -------
    dict
        ``mean`` and ``contrast`` (mean and standard deviation of the luminance, 0..1), ``clipped``
        (share 0..1 of the channel values pinned at black or white), ``detail`` (mean absolute
        4-neighbour Laplacian of the luminance, luminance units per pixel).
    """
    a = np.where(np.isfinite(image), image, 0).astype(np.float32)
    g = to_gray(a).astype(np.float32)
    low, high = clip_shares(a)
    if min(g.shape) >= 3:
        lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        detail = float(np.abs(lap).mean())
    else:
        detail = 0.0
    return {"mean": float(g.mean()), "contrast": float(g.std()), "clipped": low + high, "detail": detail}


def step_stats(images: Sequence[np.ndarray]) -> dict[str, float]:
    """The median of :func:`image_stats` over the images of one step.

    Parameters
    ----------
    images : sequence of ndarray, each (H, W) or (H, W, C)

    Returns
    -------
    dict
        One value per name in :data:`STATS`.
    """
    per = [image_stats(im) for im in images]
    return {k: float(np.median([p[k] for p in per])) for k in STATS}


@dataclass
class Change:
    """An abrupt change of a series' samples.

    Attributes
    ----------
    step : int
        The first step whose samples changed.
    index : int
        Its position in the steps.
    previous_step : int
        The step just before it.
    baseline : dict
        The median statistics of the earlier steps.
    at : dict
        The statistics at ``step``.
    previous : dict
        The statistics at ``previous_step``.
    reasons : list of str
        The statistics that broke the rule (names from :data:`STATS`).
    strength : float
        How far past its threshold the strongest statistic went (1 = at the threshold).
    steps_changed : list of int
        ``step`` and the later steps whose statistics still break the rule against ``baseline``.
    """

    step: int
    index: int
    previous_step: int
    baseline: dict[str, float]
    at: dict[str, float]
    previous: dict[str, float]
    reasons: list[str]
    strength: float
    steps_changed: list[int] = field(default_factory=list)


def _ratio(a: float, b: float) -> float:
    r = (a + RATIO_FLOOR) / (b + RATIO_FLOOR)
    return max(r, 1.0 / r)


def _broken(now: dict[str, float], ref: dict[str, float], scale: float, *, clip_rise: float, mean_shift: float,
            contrast_ratio: float, detail_ratio: float) -> dict[str, float]:
    """Statistic -> how far past its threshold (≥ 1) ``now`` is against ``ref``; thresholds scaled by ``scale``
    (1 for the baseline; 0.5 — square roots for the ratios — for the previous step)."""
    out: dict[str, float] = {}
    rise = now["clipped"] - ref["clipped"]
    if rise >= clip_rise * scale and now["clipped"] >= 3 * scale * ref["clipped"]:
        out["clipped"] = rise / (clip_rise * scale)
    shift = abs(now["mean"] - ref["mean"])
    if shift >= mean_shift * scale:
        out["mean"] = shift / (mean_shift * scale)
    for name, thr in (("contrast", contrast_ratio), ("detail", detail_ratio)):
        t = thr ** scale if scale < 1 else thr
        r = _ratio(now[name], ref[name])
        if r >= t:
            out[name] = np.log(r) / np.log(t)
    return out


def find_change(steps: Sequence[int], stats: Sequence[dict[str, float]], *, clip_rise: float = 0.15,
                mean_shift: float = 0.3, contrast_ratio: float = 2.5, detail_ratio: float = 4.0) -> Change | None:
    """The first abrupt change of a series' per-step statistics (rule in the module docstring).

    Parameters
    ----------
    steps : sequence of int, shape (n,)
        Ascending training steps.
    stats : sequence of dict, length n
        :func:`step_stats` of each step.
    clip_rise : float
        Rise of the clipped share (0..1, absolute) that counts.
    mean_shift : float
        Move of the mean luminance (0..1) that counts.
    contrast_ratio, detail_ratio : float
        Factors (> 1, either way) of contrast and detail that count.

    Returns
    -------
    Change or None
    """
    if len(steps) != len(stats):
        raise ValueError("steps and stats differ in length")
    knobs = dict(clip_rise=clip_rise, mean_shift=mean_shift, contrast_ratio=contrast_ratio, detail_ratio=detail_ratio)
    for i in range(1, len(steps)):
        base = {k: float(np.median([s[k] for s in stats[:i]])) for k in STATS}
        far = _broken(stats[i], base, 1.0, **knobs)
        jump = _broken(stats[i], stats[i - 1], 0.5, **knobs)
        reasons = [k for k in STATS if k in far and k in jump]
        if not reasons:
            continue
        later = [int(steps[j]) for j in range(i, len(steps)) if _broken(stats[j], base, 1.0, **knobs)]
        return Change(int(steps[i]), i, int(steps[i - 1]), base, dict(stats[i]), dict(stats[i - 1]), reasons,
                      float(max(far[k] for k in reasons)), later)
    return None
