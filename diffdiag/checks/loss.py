"""Loss checks: spikes, plateaus, divergence, EMA breaks, non-finite values, gradient-norm
spikes and samples tied to high loss (wires :mod:`diffdiag.analyzers.loss_*` to the run).

The findings themselves are built by :mod:`diffdiag.findings.loss` (one builder per id,
shared with the training hook's live monitor, so both apply the same severity rules)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analyzers.loss_levels import detect_divergence, detect_ema_divergence, detect_plateaus, level_curve
from ..analyzers.loss_samples import sample_loss_correlation
from ..analyzers.loss_spikes import SpikeResult, detect_spikes
from ..analyzers.streaming import JUMP_AFTER, jump_levels, locate_jump
from ..findings import loss as build
from ..model import CANNOT_JUDGE_NOTE, CheckResult, Finding, RunData, RunLog, Series, Settings
from ..registry import register

MAX_SPIKE_FINDINGS = 200


def _value_at(s: Series | None, step: int) -> float | None:
    """The series' value at ``step`` (the last one logged at or before it)."""
    if s is None or len(s) == 0:
        return None
    i = int(np.searchsorted(s.steps, step, side="right")) - 1
    if i < 0:
        return None
    v = float(s.values[i])
    return v if np.isfinite(v) else None


def timesteps_matrix(log: RunLog, steps: np.ndarray) -> np.ndarray | None:
    """The logged timesteps aligned to ``steps``: shape (n, B_max), NaN-padded; None if none."""
    if not log.timesteps:
        return None
    rows = [log.timesteps.get(int(s)) for s in steps.tolist()]
    width = max((len(r) for r in rows if r is not None), default=0)
    if width == 0:
        return None
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        if r is not None and len(r):
            out[i, :len(r)] = np.asarray(r, dtype=np.float64)[:width]
    return out


def _median(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else None


def stall_evidence(log: RunLog, start_step: int, end_step: int, *, zero: float = 1e-9) -> list[str]:
    """What, besides a flat loss, says the weights were not trained from ``start_step`` to ``end_step``.

    Parameters
    ----------
    log : RunLog
    start_step, end_step : int
        The flat span (logged steps, inclusive).
    zero : float
        Largest learning rate (per step, the optimizer's units) and gradient norm counted as 0.

    Returns
    -------
    list of str
        Keys of :data:`diffdiag.findings.loss.STALL_EVIDENCE`: ``lr_zero`` (every finite logged LR in
        the span is at most ``zero``), ``grad_norm_zero`` (the same for the gradient norm),
        ``loss_constant`` (at least half of the span's finite loss values are one exact value).
    """
    def span(s: Series | None) -> np.ndarray:
        if s is None:
            return np.empty(0)
        x = s.values[(s.steps >= start_step) & (s.steps <= end_step)]
        return x[np.isfinite(x)]

    out = []
    for reason, series in (("lr_zero", log.lr), ("grad_norm_zero", log.grad_norm)):
        x = span(series)
        if x.size and float(np.max(np.abs(x))) <= zero:
            out.append(reason)
    x = span(log.loss)
    if x.size >= 2:
        _, counts = np.unique(x, return_counts=True)
        if counts.max() * 2 >= x.size:
            out.append("loss_constant")
    return out


def nonfinite_findings(loss: Series) -> list[Finding]:
    bad = ~np.isfinite(loss.values)
    if not bad.any():
        return []
    n_nan = int(np.isnan(loss.values).sum())
    return [build.loss_nonfinite(loss.key, loss.steps[bad].tolist(), n_nan=n_nan, n_inf=int(bad.sum()) - n_nan,
                                 n_values=len(loss))]


def spike_findings(loss: Series, res: SpikeResult, log: RunLog, settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    v = loss.values
    w = max(res.window, 10)
    events = sorted(res.events, key=lambda e: -e.z)[:MAX_SPIKE_FINDINGS]
    events.sort(key=lambda e: e.index)
    for e in events:
        step = int(loss.steps[e.index])
        peak_step = int(loss.steps[e.peak_index])
        end = e.index + e.length
        before = _median(v[max(0, e.index - w):e.index])
        after = _median(v[end:end + w])
        ev: dict[str, Any] = {
            "level_before": before, "level_after": after, "peak_step": peak_step,
            "threshold_ratio": res.threshold_ratio,
            "timestep_normalised": res.timestep_normalised,
        }
        lr = _value_at(log.lr, peak_step)
        if lr is not None:
            ev["lr"] = lr
        gn = _value_at(log.grad_norm, peak_step)
        if gn is not None:
            ev["grad_norm"] = gn
        ids = log.sample_ids.get(peak_step)
        if ids:
            ev["sample_ids"] = list(ids)
        ts = log.timesteps.get(peak_step)
        if ts is not None and len(ts):
            ts = np.asarray(ts, dtype=np.float64)
            ev["timestep"] = float(ts[0]) if ts.size == 1 else float(np.median(ts))
            ev["timesteps"] = ts.tolist()
        out.append(build.loss_spike(loss.key, peak_step, value=e.value, baseline=e.baseline, z=e.z,
                                    sigma=settings.spike_sigma, ratio=e.ratio, n_steps=e.length, start_step=step,
                                    end_step=int(loss.steps[end - 1]), **ev))
    return out


def _spike_rate(res: SpikeResult, lo: int, hi: int) -> float:
    n = max(1, hi - lo)
    return sum(1 for e in res.events if lo <= e.index < hi) / n * 1000.0


#: fewest finite loss values a run is judged on: below, the check notes that the log is too short to
#: judge (the verdict is then "cannot judge" unless a finding reaches warning); below MIN_POINTS only
#: non-finite values are looked for
MIN_JUDGE_POINTS = 50
MIN_POINTS = 8


def too_short_note(loss: Series) -> str | None:
    """The note for a loss log too short to judge, or None (docs/CONTRACT.md §3 ``outputs.warnings``)."""
    n = int(np.isfinite(loss.values).sum())
    if n >= MIN_JUDGE_POINTS:
        return None
    done = ("only non-finite values were looked for" if n < MIN_POINTS else
            "what could be seen is reported; shelves, divergence and spikes need a longer log")
    return (f"loss '{loss.key}': {CANNOT_JUDGE_NOTE}: {n} finite point{'s' if n != 1 else ''}, "
            f"need >= {MIN_JUDGE_POINTS} ({done})")


@register("loss", needs=lambda run: run.log is not None and run.log.loss is not None, order=10)
def check_loss(run: RunData, settings: Settings) -> CheckResult:
    """All loss findings for ``run.log`` (see the module docstring)."""
    log = run.log
    loss = log.loss
    findings: list[Finding] = nonfinite_findings(loss)
    note = too_short_note(loss)
    notes = [note] if note else []
    v = loss.values
    if np.isfinite(v).sum() < MIN_POINTS:
        return CheckResult(findings, notes=notes)
    ts = timesteps_matrix(log, loss.steps)
    res = detect_spikes(v, sigma=settings.spike_sigma, timesteps=ts)
    findings += spike_findings(loss, res, log, settings)
    curve = level_curve(v)
    finite = np.flatnonzero(np.isfinite(v))
    positive = bool(np.all(v[finite] > 0))
    log_v = np.log(np.maximum(v[finite], 1e-30))
    located: list[int] = []
    for d in detect_divergence(v, curve=curve):
        index, jump, climb = d.index, None, None
        before, after = d.level_before, d.level_after
        if positive:
            # Located and sized as the live monitor does it (same change point -> same jump ratio, hence
            # the same severity): medians of the finite values just before and from the change point.
            cp = locate_jump(log_v, int(np.searchsorted(finite, d.index)))
            if any(abs(cp - c) <= JUMP_AFTER for c in located):
                continue          # two level changes of one climb located at the same point: one finding
            located.append(cp)
            before, after = jump_levels(log_v, cp)
            index, jump = int(finite[cp]), after / before
            # a climb in steps (the detector's first level change of it comes before the change point, e.g.
            # while a too-high LR warms up): the message quotes the level before the climb began
            start = int(np.searchsorted(finite, d.index))
            if 0 < start < cp:
                before, climb = jump_levels(log_v, start)[0], int(loss.steps[finite[start]])
            # a climb that goes on rising past the change point's short window (a ramp over a few hundred
            # steps): the message quotes the sustained levels the detector measured; jump_ratio (the
            # severity basis, the same as live) stays the change point's own
            if d.ratio > after / before:
                before, after = d.level_before, d.level_after
        step = int(loss.steps[index])
        n = len(v)
        ev: dict[str, Any] = {"sustained_until_step": int(loss.steps[d.sustained_until]),
                              "spikes_per_1k_before": _spike_rate(res, 0, index),
                              "spikes_per_1k_after": _spike_rate(res, index, n)}
        lr = _value_at(log.lr, step)
        if lr is not None:
            ev["lr_at_step"] = lr
            lr_s = log.lr
            fin = np.isfinite(lr_s.values)
            if fin.any():
                ev["lr_max"] = float(np.max(lr_s.values[fin]))
        if log.grad_norm is not None:
            g = log.grad_norm
            gb = _median(g.values[(g.steps < step) & (g.steps >= step - (loss.steps[-1] - loss.steps[0]) // 10)])
            ga = _median(g.values[g.steps >= step])
            if gb and ga:
                ev["grad_norm_before"], ev["grad_norm_after"], ev["grad_norm_ratio"] = gb, ga, ga / gb
        findings.append(build.loss_divergence(loss.key, step, level_before=before, level_after=after,
                                              jump_ratio=jump, climb_start=climb, **ev))
    for p in detect_plateaus(v, curve=curve):
        # A flat loss alone is no stall: a healthy LoRA fine-tune's loss drops a little early and then
        # barely moves. Only other evidence that the weights were not trained makes it a warning.
        s0, s1 = int(loss.steps[p.start]), int(loss.steps[p.end])
        stall = stall_evidence(log, s0, s1) if p.kind == "flat_run" else []
        findings.append(build.loss_plateau(loss.key, s0, s1, kind=p.kind, level=p.level,
                                           later_level=p.later_level, ratio=p.ratio, stall_evidence=stall))
    ema = log.ema
    if ema is not None and len(ema) >= 20:
        breaks, info = detect_ema_divergence(loss.steps, v, ema.steps, ema.values)
        for b in breaks:
            findings.append(build.ema_divergence(
                ema.key, int(ema.steps[b.start]), int(ema.steps[b.end]), max_gap=b.max_gap, band=b.band,
                raw_level=b.raw_level, ema_value=b.ema_value, direction=b.direction,
                reference=info.get("reference"), loss_key=loss.key))
    g = log.grad_norm
    if g is not None and np.isfinite(g.values).sum() >= 8:
        gres = detect_spikes(g.values, sigma=settings.spike_sigma)
        for e in sorted(gres.events, key=lambda e: -e.z)[:MAX_SPIKE_FINDINGS]:
            step = int(g.steps[e.index])
            findings.append(build.grad_norm_spike(g.key, step, value=e.value, baseline=e.baseline, z=e.z,
                                                  sigma=settings.spike_sigma, ratio=e.ratio,
                                                  loss=_value_at(loss, step)))
    if log.sample_ids:
        ids = [log.sample_ids.get(int(s)) for s in loss.steps.tolist()]
        spike_mask = np.zeros(len(v), dtype=bool)
        for e in res.events:
            spike_mask[e.index:e.index + e.length] = True
        effects, n_tested = sample_loss_correlation(res.residual, ids, spike_mask=spike_mask)
        if effects:
            findings.append(build.loss_sample_correlation(
                effects, n_tested=n_tested, alpha=1e-3,
                test="Fisher combination of per-step rank p-values, Benjamini-Hochberg"))
    return CheckResult(findings, notes=notes)
