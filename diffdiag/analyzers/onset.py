"""Artifact onset: the first training step from which an artifact appears in the samples and stays.

Pure functions over a presence table (which artifact was seen at which step);
the image analysis that fills the table lives in :mod:`diffdiag.checks.onset`.

Rule (documented thresholds)
----------------------------
Steps are sorted; ``P_i`` says whether the artifact was seen at step ``i``
(in any sample of that step). The onset is the smallest ``i`` such that

* ``P_i`` is true and the step before it, ``P_{i−1}``, is false (there is a
  clean sample before: an artifact present from the first sample is the
  picture's content or was never absent, not an onset);
* the artifact *stays*: it is seen at the ``min_persist`` (2) consecutive
  steps from ``i`` and at ≥ ``stay_fraction`` (80 %) of all steps from ``i``
  on (a later single miss is tolerated) — a one-off (transient) artifact, or
  one that flickers, is not an onset;
* before ``i`` it was seen at < ``max_before_fraction`` (50 %) of the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

MIN_PERSIST = 2
STAY_FRACTION = 0.8
MAX_BEFORE_FRACTION = 0.5


@dataclass
class Onset:
    """An artifact's onset.

    Attributes
    ----------
    artifact : str
        The finding id that appeared (e.g. ``"stripes"``).
    step : int
        First step of the persistent run.
    index : int
        Its position in ``steps``.
    last_clean_step : int
        The step just before (artifact absent there).
    stay_fraction : float
        Share of steps from the onset on where the artifact was seen.
    before_fraction : float
        Share of earlier steps where it was seen (transients).
    transient_steps : list of int
        Earlier steps where it was seen but did not stay.
    """

    artifact: str
    step: int
    index: int
    last_clean_step: int
    stay_fraction: float
    before_fraction: float
    transient_steps: list[int]


def find_onset(steps: Sequence[int], present: Sequence[bool], artifact: str = "", *,
               min_persist: int = MIN_PERSIST, stay_fraction: float = STAY_FRACTION,
               max_before_fraction: float = MAX_BEFORE_FRACTION) -> Onset | None:
    """The onset of one artifact in a per-step presence sequence (see the module docstring).

    Parameters
    ----------
    steps : sequence of int, shape (n,)
        Ascending training steps.
    present : sequence of bool, shape (n,)
        Whether the artifact was seen at each step.
    artifact : str
        Its finding id (copied into the result).
    min_persist : int
        The artifact must be seen at least this many consecutive steps (logged samples) from the onset.
    stay_fraction : float
        ... and at this share (0..1) of the steps from the onset on.
    max_before_fraction : float
        Below this share (0..1) of the earlier steps it was seen (transients).

    Returns
    -------
    Onset or None
        The first onset that satisfies the rule (steps in training steps).
    """
    s = np.asarray(steps, dtype=np.int64)
    p = np.asarray(present, dtype=bool)
    if s.shape != p.shape:
        raise ValueError("steps and present differ in length")
    order = np.argsort(s, kind="stable")
    s, p = s[order], p[order]
    n = len(s)
    for i in range(1, n):
        if not p[i] or p[i - 1]:
            continue
        tail = p[i:]
        if len(tail) < min_persist or not tail[:min_persist].all() or tail.mean() < stay_fraction:
            continue
        before = p[:i]
        if before.mean() >= max_before_fraction:
            continue
        return Onset(artifact, int(s[i]), i, int(s[i - 1]), float(tail.mean()), float(before.mean()),
                     [int(x) for x in s[:i][before]])
    return None


def find_onsets(steps: Sequence[int], presence: Mapping[str, Sequence[bool]], **kwargs) -> list[Onset]:
    """Onsets of several artifacts: ``presence`` maps a finding id to its per-step booleans.

    Parameters
    ----------
    steps : sequence of int, shape (n,)
        Training steps (any order).
    presence : mapping of str to sequence of bool, each shape (n,)
        Finding id -> whether it was seen at each step.
    **kwargs
        The rule's knobs, passed to :func:`find_onset` (``min_persist``, ...).

    Returns
    -------
    list of Onset
        Sorted by step, then artifact id.
    """
    out = [o for a, pr in presence.items() if (o := find_onset(steps, pr, a, **kwargs)) is not None]
    return sorted(out, key=lambda o: (o.step, o.artifact))
