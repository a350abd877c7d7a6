"""Checkpoint check: stream the checkpoints, compare them, report non-finite, exploding and collapsing modules.

Findings (docs/CONTRACT.md §3): ``checkpoint_nonfinite`` (critical; location
``checkpoint``, ``modules``), ``checkpoint_norm_explosion`` and
``checkpoint_norm_collapse`` (location ``checkpoint``, ``modules``,
``growth``). ``checkpoint`` is the checkpoint's display name (file name, with
its folder when the file name carries no number, e.g.
``checkpoint-500/pytorch_lora_weights.safetensors``); ``evidence["path"]`` is
the full path and ``evidence["step"]`` the step.

An explosion is found from growth between checkpoints or from one
checkpoint's size alone (:func:`~diffdiag.analyzers.checkpoints.norm_events`):
``evidence["basis"]`` is ``"growth"``, ``"size"`` or ``"growth+size"``; a size
explosion at the first (or only) checkpoint has ``growth`` null, and its
evidence holds the absolute figures (``relative_size`` per module,
``median_relative_size``, ``median_norm``, ``median_effective_rank``,
``median_top1_energy``, the thresholds and the healthy maxima they were set by).

The checkpoints are streamed by :func:`diffdiag.sources.checkpoints.load_checkpoints`
into ``RunData.checkpoint_scan`` (parsed headers and the
:class:`~diffdiag.analyzers.checkpoints.Comparison`); this check only reads
it. Its ``CheckResult.data`` is that comparison (the report figures draw it).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ..analyzers.checkpoints import (HEALTHY_MEDIAN_SIZE, HEALTHY_MODULE_SIZE, LAYER_GAIN, OVERSIZE_MEDIAN,
                                     OVERSIZE_MODULE, Comparison, NormEvent, norm_events)
from ..model import CheckpointInfo, CheckResult, Finding, RunData, Settings
from ..registry import register
from ..textfmt import fmt

#: at most this many per-module numbers in one finding's evidence
_MAX_EVIDENCE_MODULES = 50

_REGULARISER_CONFIG_KEYS = ("weight_decay", "adam_weight_decay", "lora_dropout", "dropout", "network_dropout",
                            "scale_weight_norms", "max_grad_norm")


def _fmt_modules(mods: list[str], n: int = 3) -> str:
    shown = ", ".join(mods[:n])
    return shown + (f" and {len(mods) - n} more" if len(mods) > n else "")


def regularisation_settings(metadata: dict[str, str], config: dict[str, Any]) -> dict[str, Any]:
    """Regularisation hyper-parameters known from kohya ``ss_*`` metadata or the run config.

    Returns keys among ``weight_decay``, ``dropout``, ``network_dropout``,
    ``scale_weight_norms``, ``optimizer`` (only those found).
    """
    out: dict[str, Any] = {}
    opt = metadata.get("ss_optimizer")
    if opt:
        out["optimizer"] = opt
        m = re.search(r"weight_decay\s*=\s*([0-9.eE+-]+)", opt)
        if m:
            try:
                out["weight_decay"] = float(m.group(1))
            except ValueError:
                pass
    for key, name in (("ss_network_dropout", "network_dropout"), ("ss_scale_weight_norms", "scale_weight_norms"),
                      ("ss_weight_decay", "weight_decay")):
        v = metadata.get(key)
        if v not in (None, "", "None"):
            try:
                out[name] = float(v)
            except ValueError:
                out[name] = v
    for key in _REGULARISER_CONFIG_KEYS:
        if key in config and key not in out:
            out[key] = config[key]
    return out


def _median(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else None


def _size_evidence(ev: NormEvent, cmp: Comparison) -> dict[str, Any]:
    """The absolute figures of an explosion found from size (one checkpoint's ΔW against its layers)."""
    k = ev.index
    ref, from_base = cmp.reference_norms()
    ok = np.isfinite(cmp.fro[k]) & (cmp.fro[k] > 0)
    ranks = [cmp.shapes[m][2] for m in cmp.modules if m in cmp.shapes]
    rel = dict(sorted(ev.relative.items(), key=lambda kv: -kv[1])[:_MAX_EVIDENCE_MODULES])
    return {
        "relative_size": rel,
        "median_relative_size": None if not math.isfinite(ev.median_relative) else ev.median_relative,
        "median_relative_size_oversized": _median(np.array(list(ev.relative.values()))),
        "thresholds": {"median": OVERSIZE_MEDIAN, "module": OVERSIZE_MODULE},
        "healthy_max": {"median": HEALTHY_MEDIAN_SIZE, "module": HEALTHY_MODULE_SIZE},
        "reference": "base_weights" if bool(np.all(from_base[ok])) and ok.any() else "layer_gain",
        "layer_gain": LAYER_GAIN,
        "n_oversized": len(ev.relative),
        "n_compared": int(ok.sum()),
        "median_norm": _median(cmp.fro[k]),
        "max_norm": float(np.nanmax(cmp.fro[k])) if ok.any() else None,
        "median_spectral_norm": _median(cmp.spectral[k]),
        "median_effective_rank": _median(cmp.effective_rank[k]),
        "median_top1_energy": _median(cmp.top1_energy[k]),
        "median_rank": _median(np.array(ranks, dtype=np.float64)) if ranks else None,
        "first_checkpoint": k == 0,
        "n_checkpoints": len(cmp.names),
        "peak_checkpoint": cmp.names[ev.peak_index] if ev.peak_index is not None else None,
        "peak_step": cmp.steps[ev.peak_index] if ev.peak_index is not None else None,
        "peak_median_relative_size": None if not math.isfinite(ev.peak_median) else ev.peak_median,
        "peak_n_oversized": ev.peak_modules,
        "last_median_relative_size": _median(cmp.relative_size()[-1]),
    }


def _size_message(ev: NormEvent, cmp: Comparison, where: str) -> str:
    k = ev.index
    n, m = len(ev.relative), int(np.sum(np.isfinite(cmp.fro[k]) & (cmp.fro[k] > 0)))
    med = _median(np.array(list(ev.relative.values())))
    ref = ("their base layers' weights" if all(m in cmp.base_norms for m in ev.relative) else
           "a layer of their width")
    when = ""
    if len(cmp.names) > 1 and k == 0:
        when = " at the first checkpoint: the LoRA had blown up before it"
    elif ev.growth is not None:
        when = f", {ev.growth:.3g}x their size at {cmp.names[k - 1]}"
    mods = _fmt_modules(sorted(ev.relative, key=ev.relative.get, reverse=True))
    later = ""
    if ev.peak_index is not None and ev.peak_index != k:
        later = (f"; by {cmp.names[ev.peak_index]} {ev.peak_modules} modules are oversized, the median one "
                 f"{fmt(ev.peak_median)}x")
    return (f"{where}: the update (ΔW) of {n} of {m} LoRA module{'s' if m != 1 else ''} is {fmt(med)}x the norm "
            f"of {ref} ({'median; ' if n > 1 else ''}the adapter's median module: {fmt(ev.median_relative)}x; "
            f"healthy trainings stay below {fmt(HEALTHY_MODULE_SIZE)}x, median below {fmt(HEALTHY_MEDIAN_SIZE)}x)"
            f"{when} ({mods}){later}.")


def _event_finding(ev: NormEvent, cmp: Comparison, info: CheckpointInfo, reg: dict[str, Any]) -> Finding:
    k = ev.index
    what = "update (ΔW)" if cmp.kind == "lora" else "weights"
    step_txt = f" (step {info.step})" if info.step is not None else ""
    where = (f"Checkpoint {cmp.names[k]}{step_txt}" if len(cmp.names) > 1 else
             f"LoRA file {cmp.names[k]}{step_txt}")
    per = dict(sorted(ev.per_module.items(), key=lambda kv: kv[1], reverse=ev.kind == "explosion")
               [:_MAX_EVIDENCE_MODULES])
    totals = cmp.totals
    evidence: dict[str, Any] = {
        "path": str(info.path), "step": info.step, "previous_checkpoint": cmp.names[k - 1] if k else None,
        "previous_step": cmp.steps[k - 1] if k else None, "fraction_of_modules": round(ev.fraction, 4),
        "n_modules": len(ev.modules), "per_module_ratio": per,
        "total_norm": float(totals[k]), "total_norm_previous": float(totals[k - 1]) if k else None,
        "dominant_change": [{"module": m, "share": round(s, 4)} for m, s in cmp.dominant_modules(k)],
        "kind": cmp.kind,
    }
    if ev.kind == "explosion":
        evidence["basis"] = ev.basis
        evidence["exponent"] = dict(list(sorted(ev.exponent.items(), key=lambda kv: -kv[1]))
                                    [:_MAX_EVIDENCE_MODULES])
        fid = "checkpoint_norm_explosion"
        if ev.basis == "growth":
            severity = "critical" if ev.growth >= 10 or ev.fraction >= 0.5 else "warning"
            score = 1.0 - 1.0 / max(ev.growth, 1.0)
            later = ""
            if ev.peak_index is not None:
                evidence.update({k2: v for k2, v in _size_evidence(ev, cmp).items() if k2.startswith("peak")})
                later = (f"; by {cmp.names[ev.peak_index]} {ev.peak_modules} modules are oversized, the median one "
                         f"{fmt(ev.peak_median)}x the norm of its layer")
                if ev.peak_median >= OVERSIZE_MEDIAN:      # the adapter as a whole outgrew its layers
                    severity = "critical"
            msg = (f"{where}: the {what} of {len(ev.modules)} module"
                   f"{'s' if len(ev.modules) != 1 else ''} grew {ev.growth:.3g}x since {cmp.names[k - 1]} "
                   f"({_fmt_modules(ev.modules)}){later}.")
        else:
            evidence.update(_size_evidence(ev, cmp))
            big = evidence["median_relative_size_oversized"] or 1.0
            adapter = max(ev.median_relative, ev.peak_median if math.isfinite(ev.peak_median) else 0.0) \
                >= OVERSIZE_MEDIAN
            grown = ev.growth is not None and ev.growth >= 10
            severity = "critical" if adapter or big >= 10 * OVERSIZE_MODULE or grown else "warning"
            score = 0.5 + 0.5 * (1.0 - 1.0 / max(big, 1.0))
            if ev.basis == "growth+size":
                score = max(score, 1.0 - 1.0 / max(ev.growth, 1.0))
            msg = _size_message(ev, cmp, where)
        modules = sorted(set(ev.modules) | set(ev.relative))
        location = {"checkpoint": cmp.names[k], "modules": modules,
                    "growth": None if ev.growth is None else float(ev.growth)}
    else:
        peak_total = float(max(t for t in totals[:k] if math.isfinite(t))) if k else float("nan")
        evidence["total_norm_ratio_to_peak"] = float(totals[k] / peak_total) if peak_total > 0 else None
        ratio_total = evidence["total_norm_ratio_to_peak"]
        evidence["regularisation"] = reg
        evidence["collapsed_fraction_so_far"] = round(ev.cumulative_fraction, 4)
        # the adapter as a whole is being regularised away: most modules collapsed by now, or the total norm did
        evidence["over_regularisation"] = bool(ev.cumulative_fraction >= 0.5 or
                                               (ratio_total is not None and ratio_total < 0.4))
        severity = "warning"
        score = min(1.0, (1.0 - ev.growth) * (0.6 + 0.4 * min(1.0, 2 * ev.cumulative_fraction)))
        msg = (f"{where}: the {what} of {len(ev.modules)} module"
               f"{'s' if len(ev.modules) != 1 else ''} shrank to {ev.growth:.2g}x of its earlier peak "
               f"({_fmt_modules(ev.modules)})" + (" — the adapter is being regularised away." if
                                                  evidence["over_regularisation"] else "."))
        fid = "checkpoint_norm_collapse"
        location = {"checkpoint": cmp.names[k], "modules": list(ev.modules), "growth": float(ev.growth)}
    return Finding(fid, severity, score, msg, location, evidence)


#: at most this many loading/comparison notes
_MAX_NOTES = 200


@register("checkpoints", needs=lambda run: run.checkpoint_scan is not None, order=70)
def check_checkpoints(run: RunData, settings: Settings) -> CheckResult:
    """Report non-finite, exploding and collapsing modules from ``run.checkpoint_scan`` (see the module docstring)."""
    scan = run.checkpoint_scan
    assert scan is not None
    cmp, infos = scan.comparison, scan.checkpoints
    notes: list[str] = []
    for n in [*scan.notes, *cmp.notes]:
        if n not in notes and len(notes) < _MAX_NOTES:
            notes.append(n)
    findings: list[Finding] = []
    for k, mods in sorted(cmp.nonfinite.items()):
        info = infos[k]
        step_txt = f" (step {info.step})" if info.step is not None else ""
        findings.append(Finding(
            "checkpoint_nonfinite", "critical", 1.0,
            f"Checkpoint {cmp.names[k]}{step_txt} holds NaN/Inf values in {len(mods)} module"
            f"{'s' if len(mods) != 1 else ''} ({_fmt_modules(mods)}).",
            {"checkpoint": cmp.names[k], "modules": list(mods)},
            {"path": str(info.path), "step": info.step, "n_modules": len(mods),
             "first_nonfinite_checkpoint": cmp.names[min(cmp.nonfinite)]}))
    meta = next((i.metadata for i in reversed(infos) if i.metadata), {})
    reg = regularisation_settings(meta, run.config)
    for ev in norm_events(cmp):
        findings.append(_event_finding(ev, cmp, infos[ev.index], reg))
    return CheckResult(findings, data=cmp, notes=notes)
