"""Builders of the loss findings (``loss_*``, ``ema_divergence``, ``grad_norm_spike``).

Used by the offline loss check (:mod:`diffdiag.checks.loss`) and by the
training hook's live monitor (:mod:`diffdiag.integrations.hook_stream`): one
function per finding id, so a live line and the final report give the same
id, location keys, message shape and — from the same numbers — the same
severity.

Severity rules (docs/CONTRACT.md §3)
------------------------------------
* ``loss_nonfinite``: always ``critical`` (the run is broken from that step).
* ``loss_divergence``: ``critical`` when its *jump ratio* is at least
  :data:`DIVERGENCE_CRITICAL_RATIO` (7) — the loss went back most of the way to
  an untrained model's; otherwise ``warning``. The jump ratio is measured the
  same way live and offline (:func:`diffdiag.analyzers.streaming.jump_levels`
  at the change point :func:`~diffdiag.analyzers.streaming.locate_jump` finds:
  the median of the 48 finite values from it over the median of the 96 before).
* ``loss_spike``, ``grad_norm_spike``: ``warning`` (one bad step does not
  break a run; the detectors keep healthy runs free of them).
* ``ema_divergence``: ``warning``.
* ``loss_plateau``: ``warning`` for a shelf; a run that never left its start
  level (``kind="flat_run"``) is a ``warning`` (a stall) only when something
  besides the loss says the weights were not trained (``stall_evidence``: the
  learning rate or the gradient norm was 0 over it, or the loss repeated one
  exact value), else ``info``: a healthy LoRA fine-tune's loss drops a little
  early and then barely moves, and on its noise that drop cannot be told from
  none.
* ``loss_sample_correlation``: ``warning``.

Every argument is a plain number, string or list; extra keyword arguments go
into the finding's evidence unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ..model import Finding, Severity
from ..textfmt import fmt

__all__ = ["DIVERGENCE_CRITICAL_RATIO", "STALL_EVIDENCE", "divergence_severity", "plateau_severity",
           "loss_nonfinite", "loss_spike", "grad_norm_spike", "loss_divergence", "loss_plateau", "ema_divergence",
           "loss_sample_correlation"]

#: a divergence whose level ratio (after / before) reaches this is ``critical``
DIVERGENCE_CRITICAL_RATIO = 7.0

#: what, besides a loss that never left its start level, shows a stall (the words of each reason)
STALL_EVIDENCE = {
    "lr_zero": "the learning rate was 0",
    "grad_norm_zero": "the gradient norm was 0",
    "loss_constant": "the loss repeated one exact value",
}


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if not x >= lo else (hi if x > hi else x)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _ratio(value: float | None, baseline: float | None) -> float:
    """``value / baseline`` for two positive numbers, else NaN."""
    if _finite(value) and _finite(baseline) and value > 0 and baseline > 0:
        return value / baseline
    return float("nan")


def _spike_score(z: float, sigma: float) -> float:
    return _clip(0.5 + 0.5 * (z - sigma) / max(3.0 * sigma, 1e-9), 0.0, 1.0)


# --------------------------------------------------------------------------- severity rules

def divergence_severity(ratio: float | None) -> Severity:
    """``critical`` when the level ratio (after / before) is at least :data:`DIVERGENCE_CRITICAL_RATIO`."""
    return "critical" if _finite(ratio) and ratio >= DIVERGENCE_CRITICAL_RATIO else "warning"


def plateau_severity(kind: str, stall_evidence: Sequence[str] = ()) -> Severity:
    """``warning`` for a shelf, and for a flat run with stall evidence (:data:`STALL_EVIDENCE`); else ``info``."""
    return "info" if kind == "flat_run" and not stall_evidence else "warning"


# --------------------------------------------------------------------------- builders

def loss_nonfinite(key: str, steps: Sequence[int], *, n_nan: int, n_inf: int, n_values: int | None = None,
                   **evidence: Any) -> Finding:
    """The loss is NaN/inf at ``steps`` (ascending; the live hook gives the first one only).

    Parameters
    ----------
    key : str
        The loss key.
    steps : sequence of int
        The non-finite steps, ascending (at least one).
    n_nan, n_inf : int
        How many of them are NaN / infinite.
    n_values : int, optional
        Logged values in all (adds ``fraction`` to the evidence).
    """
    steps = [int(s) for s in steps]
    kinds = " and ".join(k for k, c in (("NaN", n_nan), ("inf", n_inf)) if c)
    where = (f"at step {steps[0]}" if len(steps) == 1 else
             f"at {len(steps)} steps, first at step {steps[0]}")
    ev: dict[str, Any] = {"count": len(steps), "nan": int(n_nan), "inf": int(n_inf), "first_step": steps[0],
                          "last_step": steps[-1]}
    if n_values is not None:
        ev["fraction"] = len(steps) / max(1, int(n_values))
    ev.update(evidence)
    return Finding("loss_nonfinite", "critical", 1.0, f"The loss '{key}' is non-finite ({kinds}) {where}.",
                   {"step": steps[0], "steps": steps, "key": key}, ev)


def loss_spike(key: str, step: int, *, value: float, baseline: float, z: float, sigma: float,
               ratio: float | None = None, n_steps: int = 1, start_step: int | None = None,
               end_step: int | None = None, **evidence: Any) -> Finding:
    """The loss spiked, peaking at ``step``.

    Parameters
    ----------
    step : int
        The spike's peak step (``location.step``): where the loss was ``value``.
    value : float
        The loss at the spike's peak.
    baseline : float
        The loss expected there (the detector's local or running level).
    z : float
        The detector's significance of the peak (robust standard deviations).
    sigma : float
        The spike threshold in use (``--spike-sigma``); sets the score.
    ratio : float, optional
        ``value / baseline`` (default: computed; NaN when undefined).
    n_steps : int
        Consecutive steps in the event.
    start_step, end_step : int, optional
        The event's first and last step (default: ``step``); in the evidence.
    """
    ratio = _ratio(value, baseline) if ratio is None else float(ratio)
    start = int(step) if start_step is None else int(start_step)
    end = int(step) if end_step is None else int(end_step)
    rel = (f"{ratio:.1f}x its expected level {fmt(baseline, 4)}" if math.isfinite(ratio) else
           f"expected {fmt(baseline, 4)}")
    span = f"the {n_steps}-step event spans steps {start}–{end}, " if n_steps > 1 or start != end else ""
    ev: dict[str, Any] = {"value": value, "baseline": baseline, "z": round(float(z), 2), "ratio": ratio,
                          "start_step": start, "end_step": end}
    ev.update(evidence)
    ev.setdefault("n_steps", int(n_steps))
    ev.setdefault("sigma", sigma)
    return Finding("loss_spike", "warning", _spike_score(z, sigma),
                   f"The loss '{key}' spiked to {fmt(value, 4)} at step {int(step)} ({span}{rel}, z={z:.1f}).",
                   {"step": int(step), "key": key}, ev)


def grad_norm_spike(key: str, step: int, *, value: float, baseline: float, z: float, sigma: float,
                    ratio: float | None = None, **evidence: Any) -> Finding:
    """The gradient norm spiked at ``step`` (arguments as :func:`loss_spike`)."""
    ratio = _ratio(value, baseline) if ratio is None else float(ratio)
    rel = (f" ({ratio:.1f}x its local level {fmt(baseline, 4)}, z={z:.1f})" if math.isfinite(ratio) else
           f" (z={z:.1f})")
    ev: dict[str, Any] = {"value": value, "baseline": baseline, "z": round(float(z), 2), "ratio": ratio}
    ev.update(evidence)
    return Finding("grad_norm_spike", "warning", _spike_score(z, sigma),
                   f"The gradient norm '{key}' spiked to {fmt(value, 4)} at step {int(step)}{rel}.",
                   {"step": int(step), "key": key}, ev)


def loss_divergence(key: str, step: int, *, level_before: float, level_after: float, jump_ratio: float | None = None,
                    climb_start: int | None = None, **evidence: Any) -> Finding:
    """The loss jumped (or climbed) to a higher level at ``step`` and stayed there.

    Parameters
    ----------
    step : int
        The change point: the first step of the new level.
    level_before, level_after : float
        Typical loss (median) before the change — before the climb began when
        ``climb_start`` is given — and from the change point on, in the loss's
        units; the message quotes them and their ratio (the evidence's ``ratio``, which sets the score).
    jump_ratio : float, optional
        The jump ratio at the change point (``jump_levels``): sets the severity
        (:func:`divergence_severity`). Default: ``level_after / level_before``.
    climb_start : int, optional
        The step where a climb in several level changes began (before ``step``).
    """
    ratio = _ratio(level_after, level_before)
    jump = ratio if jump_ratio is None else float(jump_ratio)
    by = f" ({ratio:.2f}x)" if math.isfinite(ratio) else ""
    ev: dict[str, Any] = {"level_before": level_before, "level_after": level_after, "ratio": ratio,
                          "jump_ratio": jump}
    if climb_start is not None:
        ev["climb_start_step"] = int(climb_start)
    ev.update(evidence)
    score = _clip(math.log(max(ratio, 1.0)) / math.log(4.0), 0.3, 1.0) if math.isfinite(ratio) else 0.3
    if climb_start is not None and int(climb_start) < int(step):
        msg = (f"The loss '{key}' climbed from {fmt(level_before, 4)} before step {int(climb_start)} to "
               f"{fmt(level_after, 4)} from step {int(step)} on{by} and stayed there.")
    else:
        msg = (f"The loss '{key}' jumped from {fmt(level_before, 4)} to {fmt(level_after, 4)}{by} at step "
               f"{int(step)} and stayed there.")
    return Finding("loss_divergence", divergence_severity(jump), score, msg, {"step": int(step), "key": key}, ev)


def loss_plateau(key: str, start_step: int, end_step: int, *, kind: str, level: float, later_level: float,
                 ratio: float, stall_evidence: Sequence[str] = (), **evidence: Any) -> Finding:
    """A shelf (``kind="shelf"``) or a run that never left its start level (``kind="flat_run"``).

    Parameters
    ----------
    level, later_level, ratio : float
        The shelf's level, the lowest level reached later (flat run: the end level), their ratio.
    stall_evidence : sequence of str
        Keys of :data:`STALL_EVIDENCE` that held over a flat run (sets its severity,
        :func:`plateau_severity`).
    """
    reasons = [r for r in stall_evidence if r in STALL_EVIDENCE]
    severity = plateau_severity(kind, reasons)
    if kind == "flat_run" and reasons:
        msg = (f"The loss '{key}' never left its start level (about {fmt(level, 4)} from step {start_step} "
               f"to {end_step}) and {' and '.join(STALL_EVIDENCE[r] for r in reasons)}: the run stalled.")
        score = 0.6
    elif kind == "flat_run":
        msg = (f"The loss '{key}' barely moved: it stayed at about {fmt(level, 4)} from step {start_step} "
               f"to {end_step} (usual for a LoRA fine-tune; if it should have fallen, check that the "
               f"adapter's weights are trained).")
        score = 0.2
    else:
        msg = (f"The loss '{key}' sat on a shelf at {fmt(level, 4)} from step {start_step} to {end_step}, "
               f"{ratio:.2f}x above the {fmt(later_level, 4)} it reached later.")
        score = _clip(math.log(max(ratio, 1.0)) / math.log(3.0), 0.3, 1.0)
    ev: dict[str, Any] = {"level": level, "later_level": later_level, "ratio": ratio, "kind": kind,
                          "span_steps": int(end_step) - int(start_step)}
    if kind == "flat_run":
        ev["stall_evidence"] = reasons
    ev.update(evidence)
    return Finding("loss_plateau", severity, score, msg,
                   {"start_step": int(start_step), "end_step": int(end_step), "key": key}, ev)


def ema_divergence(key: str, start_step: int, end_step: int, *, max_gap: float, band: float, raw_level: float,
                   ema_value: float, direction: str, reference: str | None, loss_key: str,
                   **evidence: Any) -> Finding:
    """The smoothed loss ``key`` left the band the raw loss ``loss_key`` supports.

    Parameters
    ----------
    max_gap : float
        Largest EMA / reference ratio (> 1, or its inverse when below).
    band : float
        The tolerated ratio.
    raw_level, ema_value : float
        The raw loss's reference level and the EMA where the gap is largest.
    direction : {"above", "below"}
    reference : str
        Name of the reference the EMA was compared with.
    """
    ev: dict[str, Any] = {"max_gap": max_gap, "band": band, "raw_level": raw_level, "ema_value": ema_value,
                          "direction": direction, "reference": reference, "loss_key": loss_key}
    ev.update(evidence)
    return Finding("ema_divergence", "warning", _clip(math.log(max_gap) / math.log(3.0), 0.3, 1.0),
                   f"The smoothed loss '{key}' left the band the raw loss supports from step {start_step} to "
                   f"{end_step}: up to {max_gap:.2f}x {direction} the raw loss's {reference or ''} level "
                   f"{fmt(raw_level, 4)} (band {band:.2f}x).",
                   {"start_step": int(start_step), "end_step": int(end_step), "key": key}, ev)


def loss_sample_correlation(effects: Sequence[Any], *, n_tested: int, alpha: float, test: str) -> Finding:
    """Samples that raise the loss when in the batch.

    Parameters
    ----------
    effects : sequence
        :class:`~diffdiag.analyzers.loss_samples.SampleEffect`-like objects (``sample_id``,
        ``ratio``, ``p_value``, ``q_value``, ``n_steps``, ``n_spike_steps``), strongest first.
    n_tested : int
        Samples tested.
    alpha : float
        The false-discovery rate the effects passed.
    test : str
        The test's name, for the evidence.
    """
    top = effects[:5]
    desc = ", ".join(f"{e.sample_id} ({e.ratio:.1f}x in {e.n_steps} steps, p={e.p_value:.1g})" for e in top)
    more = f" and {len(effects) - 5} more" if len(effects) > 5 else ""
    n = len(effects)
    return Finding(
        "loss_sample_correlation", "warning",
        _clip(-math.log10(max(effects[0].q_value, 1e-300)) / 20.0, 0.3, 1.0),
        f"{n} sample{'s' if n != 1 else ''} raise{'s' if n == 1 else ''} the loss when in the batch: {desc}{more}.",
        {"sample_ids": [e.sample_id for e in effects]},
        {"samples": {e.sample_id: {"ratio": e.ratio, "p_value": e.p_value, "q_value": e.q_value,
                                   "n_steps": e.n_steps, "n_spike_steps": e.n_spike_steps} for e in effects},
         "n_tested": n_tested, "test": test, "alpha": alpha})
