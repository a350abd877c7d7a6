"""One triage row per run (docs/CONTRACT.md §5) and the loss curve the overview draws.

A row is a pure function of the run's :class:`~diffdiag.model.Diagnosis` (and the
run's name and report folder), so it is the same whichever engine or worker made it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..model import SEVERITY_RANK, Diagnosis, RunData

SCHEMA = "diffdiag.triage/1"
#: points of the loss curve kept for the overview's small multiples
CURVE_POINTS = 160
#: finding marks kept per run for the small multiples
MAX_MARKS = 60


def finding_step(location: dict[str, Any]) -> int | None:
    """The training step a finding's location names (``step``, ``start_step``, the first of ``steps``)."""
    for key in ("step", "start_step"):
        v = location.get(key)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return int(v)
    steps = location.get("steps")
    if isinstance(steps, (list, tuple)) and steps and all(isinstance(s, (int, np.integer)) for s in steps):
        return int(min(steps))
    return None


def first_bad_step(diagnosis: Diagnosis) -> int | None:
    """The earliest step of a finding at ``warning`` or above (None when none names a step)."""
    steps = [finding_step(f.location) for f in diagnosis.findings if SEVERITY_RANK[f.severity] >= 1]
    steps = [s for s in steps if s is not None]
    return min(steps) if steps else None


def top_causes(diagnosis: Diagnosis) -> dict[str, str]:
    """Symptom -> the id of its highest-scoring cause (the first listed on a tie)."""
    best: dict[str, Any] = {}
    for c in diagnosis.causes:
        if c.symptom not in best or c.score > best[c.symptom].score:
            best[c.symptom] = c
    return {s: c.id for s, c in best.items()}


def finding_counts(diagnosis: Diagnosis) -> dict[str, int]:
    """Finding id -> how many, in the order ids first appear."""
    out: dict[str, int] = {}
    for f in diagnosis.findings:
        out[f.id] = out.get(f.id, 0) + 1
    return out


def worst_by_id(diagnosis: Diagnosis) -> dict[str, str]:
    """Finding id -> its worst severity in this run (the overview colours its cells with it)."""
    out: dict[str, str] = {}
    for f in diagnosis.findings:
        if f.id not in out or SEVERITY_RANK[f.severity] > SEVERITY_RANK[out[f.id]]:
            out[f.id] = f.severity
    return out


def one_line(lines: list[str] | str) -> str:
    """One line of at most ~300 characters for a row's ``error`` (several problems: the first, and how many more)."""
    items = [lines] if isinstance(lines, str) else list(lines)
    items = [" ".join(str(x).split()) for x in items if str(x).strip()]
    if not items:
        return ""
    first = items[0] if len(items[0]) <= 300 else items[0][:297] + "..."
    return first + (f" (and {len(items) - 1} more)" if len(items) > 1 else "")


def analysed_row(ref: str, name: str, diagnosis: Diagnosis, report: str | None,
                 input_errors: list[str]) -> dict[str, Any]:
    """The row of an analysed run (``error``: its unreadable inputs, when some were skipped)."""
    return {
        "run": ref,
        "name": name,
        "verdict": diagnosis.verdict().id,
        "worst_severity": diagnosis.worst_severity(),
        "findings": finding_counts(diagnosis),
        "top_causes": top_causes(diagnosis),
        "first_bad_step": first_bad_step(diagnosis),
        "report": report,
        "error": one_line(input_errors) or None,
    }


def error_row(ref: str, name: str | None, error: str) -> dict[str, Any]:
    """The row of a run that could not be analysed."""
    return {"run": ref, "name": name or ref, "verdict": None, "worst_severity": None, "findings": {},
            "top_causes": {}, "first_bad_step": None, "report": None, "error": one_line(error) or "failed"}


def loss_curve(run: RunData, diagnosis: Diagnosis, *, points: int = CURVE_POINTS) -> dict[str, Any] | None:
    """The run's loss reduced for a small multiple, with its findings' steps.

    Returns
    -------
    dict or None
        ``key``; ``steps``, ``lo``, ``mid``, ``hi``: per bucket of steps (at most ``points``)
        the first step and the min/median/max of the finite loss (None when a bucket has
        none); ``marks``: ``[step, severity, finding id]`` of findings that name a step.
        None when the run logged no loss.
    """
    log = run.log
    series = log.loss if log is not None else None
    if series is None or len(series) == 0:
        return None
    steps, values = series.steps, series.values
    edges = np.linspace(0, len(steps), min(points, len(steps)) + 1).astype(int)
    out_s, lo, mid, hi = [], [], [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        v = values[a:b]
        v = v[np.isfinite(v)]
        out_s.append(int(steps[a]))
        if v.size:
            lo.append(float(v.min()))
            mid.append(float(np.median(v)))
            hi.append(float(v.max()))
        else:
            lo.append(None)
            mid.append(None)
            hi.append(None)
    marks = []
    for f in sorted(diagnosis.findings, key=lambda f: -SEVERITY_RANK[f.severity]):
        s = finding_step(f.location)
        if s is not None and len(marks) < MAX_MARKS:
            marks.append([s, f.severity, f.id])
    return {"key": series.key, "steps": out_s, "lo": lo, "mid": mid, "hi": hi, "marks": sorted(marks)}


__all__ = ["SCHEMA", "analysed_row", "error_row", "loss_curve", "first_bad_step", "top_causes", "finding_counts",
           "finding_step", "one_line", "worst_by_id"]
