"""Cause indicators: findings -> ranked causes per symptom.

A symptom is *observed* when one of its trigger findings is present
(docs/CONTRACT.md §3); only then are its causes scored. Each symptom has a module
(``loss_spikes``, ``stripes``, ``tiling``) with a ``score_causes`` function::

    score_causes(findings, trigger_indices, run, settings, *, priors=None) -> list[Cause]

and a ``PRIORS`` dict (cause id -> prior probability). Scores are comparable
within one symptom; the list returned by :func:`rank_causes` is grouped by
symptom, highest score first. ``rank_causes(..., priors={cause_id: p})``
replaces some priors (e.g. to check that the evidence, not the prior, decides);
without it the modules' own priors hold.
"""

from __future__ import annotations

from importlib import import_module
from typing import Mapping

from ..model import Cause, Finding, RunData, Settings

#: symptom -> the finding ids that make it observed (docs/CONTRACT.md §3)
SYMPTOM_TRIGGERS: dict[str, frozenset[str]] = {
    "loss_spikes": frozenset({"loss_spike", "loss_divergence", "ema_divergence", "loss_nonfinite",
                              "checkpoint_norm_explosion", "checkpoint_nonfinite"}),
    "tiling_doubling": frozenset({"tiling_period_doubling"}),
    "stripes": frozenset({"stripes"}),
}

_MODULES = {"loss_spikes": "loss_spikes", "tiling_doubling": "tiling", "stripes": "stripes"}


def observed_symptoms(findings: list[Finding]) -> dict[str, list[int]]:
    """Map each observed symptom to the indices of its trigger findings."""
    out: dict[str, list[int]] = {}
    for symptom, ids in SYMPTOM_TRIGGERS.items():
        idx = [i for i, f in enumerate(findings) if f.id in ids and f.severity != "info"]
        if idx:
            out[symptom] = idx
    return out


def default_priors() -> dict[str, float]:
    """Every cause id -> its prior probability, as the cause modules set it."""
    out: dict[str, float] = {}
    for mod_name in _MODULES.values():
        out.update(import_module(f"{__name__}.{mod_name}").PRIORS)
    return out


def _check_priors(priors: Mapping[str, float]) -> dict[str, float]:
    known = default_priors()
    unknown = sorted(set(priors) - set(known))
    if unknown:
        raise ValueError(f"unknown cause id(s) in priors: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    bad = {k: v for k, v in priors.items() if not 0.0 < float(v) < 1.0}
    if bad:
        raise ValueError(f"priors must lie strictly between 0 and 1: {bad}")
    return {k: float(v) for k, v in priors.items()}


def rank_causes(findings: list[Finding], run: RunData, settings: Settings, *,
                priors: Mapping[str, float] | None = None) -> list[Cause]:
    """Score the causes of every observed symptom.

    Parameters
    ----------
    findings : list of Finding
    run : RunData
    settings : Settings
    priors : mapping of str to float, optional
        Cause id -> prior probability in (0, 1), replacing the module's prior for that cause
        (the others keep theirs). Default: every module's own :data:`PRIORS`.

    Returns
    -------
    list of Cause
        Grouped by symptom (in the contract's order), highest score first.
    """
    override = _check_priors(priors) if priors else None
    causes: list[Cause] = []
    for symptom, idx in observed_symptoms(findings).items():
        try:
            mod = import_module(f"{__name__}.{_MODULES[symptom]}")
        except ModuleNotFoundError:
            continue
        scored = list(mod.score_causes(findings, idx, run, settings, priors=override))
        # a cause whose mechanism is known to be absent is no more probable than any cause that may hold
        present = [c.score for c in scored if c.missing_precondition is None]
        for c in scored:
            if c.missing_precondition is not None and present:
                c.score = min(c.score, 0.999 * min(present))
        scored.sort(key=lambda c: (c.missing_precondition is not None, -c.score))
        causes.extend(scored)
    return causes
