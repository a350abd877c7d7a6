"""Loss checks: spikes, plateaus, divergence, EMA breaks, non-finite values, gradient-norm
spikes and samples tied to high loss (wires :mod:`diffdiag.analyzers.loss_*` to the run)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analyzers.loss_levels import detect_divergence, detect_ema_divergence, detect_plateaus, level_curve
from ..analyzers.loss_samples import sample_loss_correlation
from ..analyzers.loss_spikes import SpikeResult, detect_spikes
from ..model import Finding, RunData, RunLog, Series, Settings
from ..registry import register

MAX_SPIKE_FINDINGS = 200

#: a whole run that never leaves its start level is a warning only when it is this long (logged steps)
FLAT_RUN_WARNING_STEPS = 5000


def _fmt(x: float) -> str:
    if x is None or not np.isfinite(x):
        return str(x)
    a = abs(x)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{x:.3g}"
    return f"{x:.4g}"


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


def _spike_score(z: float, sigma: float) -> float:
    return float(np.clip(0.5 + 0.5 * (z - sigma) / max(3.0 * sigma, 1e-9), 0.0, 1.0))


def nonfinite_findings(loss: Series) -> list[Finding]:
    bad = ~np.isfinite(loss.values)
    if not bad.any():
        return []
    steps = loss.steps[bad].tolist()
    n_nan = int(np.isnan(loss.values).sum())
    n_inf = int(bad.sum()) - n_nan
    kinds = " and ".join(k for k, c in (("NaN", n_nan), ("inf", n_inf)) if c)
    return [Finding("loss_nonfinite", "critical", 1.0,
                    f"The loss '{loss.key}' is non-finite ({kinds}) at {len(steps)} step{'s' if len(steps) != 1 else ''}, "
                    f"first at step {steps[0]}.",
                    {"step": steps[0], "steps": steps, "key": loss.key},
                    {"count": len(steps), "nan": n_nan, "inf": n_inf, "first_step": steps[0],
                     "last_step": steps[-1], "fraction": len(steps) / max(1, len(loss))})]


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
            "value": e.value, "baseline": e.baseline, "z": round(e.z, 2), "ratio": e.ratio,
            "level_before": before, "level_after": after, "peak_step": peak_step, "n_steps": e.length,
            "threshold_ratio": res.threshold_ratio, "sigma": settings.spike_sigma,
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
        ratio = f"{e.ratio:.1f}x its expected level {_fmt(e.baseline)}" if np.isfinite(e.ratio) else \
            f"expected {_fmt(e.baseline)}"
        length = f" for {e.length} steps" if e.length > 1 else ""
        out.append(Finding(
            "loss_spike", "warning", _spike_score(e.z, settings.spike_sigma),
            f"The loss '{loss.key}' spiked to {_fmt(e.value)} at step {step}{length} ({ratio}, z={e.z:.1f}).",
            {"step": step, "key": loss.key}, ev))
    return out


def _spike_rate(res: SpikeResult, lo: int, hi: int) -> float:
    n = max(1, hi - lo)
    return sum(1 for e in res.events if lo <= e.index < hi) / n * 1000.0


@register("loss", needs=lambda run: run.log is not None and run.log.loss is not None, order=10)
def check_loss(run: RunData, settings: Settings) -> list[Finding]:
    """All loss findings for ``run.log`` (see the module docstring)."""
    log = run.log
    loss = log.loss
    findings: list[Finding] = nonfinite_findings(loss)
    v = loss.values
    if np.isfinite(v).sum() < 8:
        return findings
    ts = timesteps_matrix(log, loss.steps)
    res = detect_spikes(v, sigma=settings.spike_sigma, timesteps=ts)
    findings += spike_findings(loss, res, log, settings)
    curve = level_curve(v)
    for d in detect_divergence(v, curve=curve):
        step = int(loss.steps[d.index])
        n = len(v)
        ev: dict[str, Any] = {"level_before": d.level_before, "level_after": d.level_after, "ratio": d.ratio,
                              "sustained_until_step": int(loss.steps[d.sustained_until]),
                              "spikes_per_1k_before": _spike_rate(res, 0, d.index),
                              "spikes_per_1k_after": _spike_rate(res, d.index, n)}
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
        findings.append(Finding(
            "loss_divergence", "warning", float(np.clip((np.log(max(d.ratio, 1.0)) / np.log(4.0)), 0.3, 1.0)),
            f"The loss '{loss.key}' jumped from {_fmt(d.level_before)} to {_fmt(d.level_after)} "
            f"({d.ratio:.2f}x) at step {step} and stayed there.",
            {"step": step, "key": loss.key}, ev))
    for p in detect_plateaus(v, curve=curve):
        s0, s1 = int(loss.steps[p.start]), int(loss.steps[p.end])
        severity = "warning"
        if p.kind == "flat_run":
            msg = (f"The loss '{loss.key}' never left its start level: it stayed at about {_fmt(p.level)} "
                   f"from step {s0} to {s1}.")
            score = 0.5
            # A short fine-tune that is merely flat is common and healthy (LoRA losses barely move);
            # only a long run that never moved is reported as a stall at warning.
            if p.end - p.start + 1 < FLAT_RUN_WARNING_STEPS:
                severity, score = "info", 0.3
        else:
            msg = (f"The loss '{loss.key}' sat on a shelf at {_fmt(p.level)} from step {s0} to {s1}, "
                   f"{p.ratio:.2f}x above the {_fmt(p.later_level)} it reached later.")
            score = float(np.clip(np.log(max(p.ratio, 1.0)) / np.log(3.0), 0.3, 1.0))
        findings.append(Finding("loss_plateau", severity, score, msg, {"start_step": s0, "end_step": s1,
                                                                          "key": loss.key},
                                {"level": p.level, "later_level": p.later_level, "ratio": p.ratio,
                                 "kind": p.kind, "span_steps": s1 - s0}))
    ema = log.ema
    if ema is not None and len(ema) >= 20:
        breaks, info = detect_ema_divergence(loss.steps, v, ema.steps, ema.values)
        for b in breaks:
            s0, s1 = int(ema.steps[b.start]), int(ema.steps[b.end])
            findings.append(Finding(
                "ema_divergence", "warning", float(np.clip(np.log(b.max_gap) / np.log(3.0), 0.3, 1.0)),
                f"The smoothed loss '{ema.key}' left the band the raw loss supports from step {s0} to {s1}: "
                f"up to {b.max_gap:.2f}x {b.direction} the raw loss's {info.get('reference', '')} level "
                f"{_fmt(b.raw_level)} (band {b.band:.2f}x).",
                {"start_step": s0, "end_step": s1, "key": ema.key},
                {"max_gap": b.max_gap, "band": b.band, "raw_level": b.raw_level, "ema_value": b.ema_value,
                 "direction": b.direction, "reference": info.get("reference"), "loss_key": loss.key}))
    g = log.grad_norm
    if g is not None and np.isfinite(g.values).sum() >= 8:
        gres = detect_spikes(g.values, sigma=settings.spike_sigma)
        for e in sorted(gres.events, key=lambda e: -e.z)[:MAX_SPIKE_FINDINGS]:
            step = int(g.steps[e.index])
            findings.append(Finding(
                "grad_norm_spike", "warning", _spike_score(e.z, settings.spike_sigma),
                f"The gradient norm '{g.key}' spiked to {_fmt(e.value)} at step {step} "
                f"({e.ratio:.1f}x its local level {_fmt(e.baseline)}, z={e.z:.1f})." if np.isfinite(e.ratio) else
                f"The gradient norm '{g.key}' spiked to {_fmt(e.value)} at step {step} (z={e.z:.1f}).",
                {"step": step, "key": g.key},
                {"value": e.value, "baseline": e.baseline, "z": round(e.z, 2), "ratio": e.ratio,
                 "loss": _value_at(loss, step)}))
    if log.sample_ids:
        ids = [log.sample_ids.get(int(s)) for s in loss.steps.tolist()]
        spike_mask = np.zeros(len(v), dtype=bool)
        for e in res.events:
            spike_mask[e.index:e.index + e.length] = True
        effects, n_tested = sample_loss_correlation(res.residual, ids, spike_mask=spike_mask)
        if effects:
            top = effects[:5]
            desc = ", ".join(f"{e.sample_id} ({e.ratio:.1f}x in {e.n_steps} steps, p={e.p_value:.1g})" for e in top)
            more = f" and {len(effects) - 5} more" if len(effects) > 5 else ""
            findings.append(Finding(
                "loss_sample_correlation", "warning",
                float(np.clip(-np.log10(max(effects[0].q_value, 1e-300)) / 20.0, 0.3, 1.0)),
                f"{len(effects)} sample{'s' if len(effects) != 1 else ''} raise{'s' if len(effects) == 1 else ''} "
                f"the loss when in the batch: {desc}{more}.",
                {"sample_ids": [e.sample_id for e in effects]},
                {"samples": {e.sample_id: {"ratio": e.ratio, "p_value": e.p_value, "q_value": e.q_value,
                                           "n_steps": e.n_steps, "n_spike_steps": e.n_spike_steps}
                             for e in effects},
                 "n_tested": n_tested, "test": "Fisher combination of per-step rank p-values, Benjamini-Hochberg",
                 "alpha": 1e-3}))
    return findings
