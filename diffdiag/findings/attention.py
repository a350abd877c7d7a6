"""Builder of ``attention_collapse``, shared by the offline attention check and the training hook.

Severity rule (docs/CONTRACT.md §3): ``warning`` — a collapsed token map hurts
prompt following but does not stop training.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..model import Finding

__all__ = ["attention_collapse"]

#: the flatness (coefficient of variation) at which a uniform collapse scores 0.5
_UNIFORM_CV = 0.01


def attention_collapse(layer: str, token: int, *, kind: str, stats: Any, steps: Sequence[Any], n_captures: int,
                       **evidence: Any) -> Finding:
    """Token ``token``'s cross-attention map in ``layer`` collapsed (to a point or to uniform).

    Parameters
    ----------
    layer : str
        The cross-attention layer's module name.
    token : int
        The conditioning token's index.
    kind : {"point", "uniform"}
    stats : TokenMapStats
        :func:`~diffdiag.analyzers.attention.token_map_stats` of the layer's latest capture.
    steps : sequence of int
        The captures (training steps) in which the token was collapsed this way.
    n_captures : int
        The layer's captures looked at (1 for the hook's live check).
    """
    t = int(token)
    if kind == "point":
        score = float(stats.peak[t])
        what = f"collapsed to a point ({stats.peak[t]:.0%} of its attention on one cell)"
    else:
        score = float(1.0 - min(1.0, stats.cv[t] / _UNIFORM_CV) * 0.5)
        what = f"collapsed to a uniform map (spatial variation {stats.cv[t]:.2%})"
    when = (f"at step {steps[0]}" if n_captures == 1 and len(steps) == 1 else
            f"in {len(steps)} of {n_captures} captures")
    ev: dict[str, Any] = {"kind": kind, "steps": list(steps), "entropy": float(stats.entropy[t]),
                          "peak": float(stats.peak[t]), "cv": float(stats.cv[t]), "mass": float(stats.mass[t]),
                          "periodicity": float(stats.periodicity[t]),
                          "period_cells": [int(v) for v in stats.period[t]], "grid": list(stats.shape)}
    ev.update(evidence)
    return Finding("attention_collapse", "warning", score,
                   f"The cross-attention map of token {t} in {layer} {what} {when}.",
                   {"layer": layer, "token": t}, ev)
