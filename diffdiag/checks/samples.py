"""Sample check: the images logged during training, analysed per step.

Samples are ``run.samples`` with a ``step`` — TensorBoard image summaries,
W&B media, MLflow images and artifacts, sample folders
(:mod:`diffdiag.sources.samples`), each labelled uniquely
(``tensorboard:validation@500#1``, or a folder sample's file path). For every
sample (one without a step only gets the first):

* the image findings of ``--images`` for a lone image
  (:func:`diffdiag.checks.images.analyze_images`): ``image_degenerate``
  (black, white, uniform, saturated, non-finite), ``stripes``,
  ``periodic_pattern``, ``hf_noise_patch`` — same detectors, same thresholds;
* per series (source and key), ``sample_change`` (warning; location ``step``,
  ``key`` = ``<source>:<key>``) at the first step whose images changed
  abruptly against the run's earlier samples of that series
  (:func:`diffdiag.analyzers.sample_change.find_change`);
* ``artifact_onset`` from those image findings (:mod:`diffdiag.checks.onset`).

``CheckResult.data`` (``Diagnosis.details["samples"]``) is the onset table
(``steps``, ``presence``, ``onsets``, ``images``, ``pairs``) plus ``series``:
per series label, its ``steps``, the ``stats`` of each step and the
``change`` (or None) — what the report's sample strips draw.
"""

from __future__ import annotations

from typing import Any

from ..analyzers.sample_change import Change, find_change, step_stats
from ..model import CheckResult, Finding, ImageInput, RunData, Settings
from ..registry import register
from ..textfmt import fmt
from .images import analyze_images
from .onset import checkpoint_steps, onset_result, step_samples

#: what the statistics are called in messages
_WORDS = {"clipped": "clipped share", "mean": "mean brightness", "contrast": "contrast", "detail": "fine detail"}


def series_label(item: ImageInput) -> str:
    """``<source>:<key>`` of a sample (``tensorboard:validation``; ``samples`` when the source is unknown)."""
    return f"{item.source or 'samples'}:{item.key or ''}"


def _series(samples: list[ImageInput]) -> dict[str, dict[int, list[ImageInput]]]:
    out: dict[str, dict[int, list[ImageInput]]] = {}
    for s in samples:
        out.setdefault(series_label(s), {}).setdefault(int(s.step), []).append(s)
    return out


def _change_finding(label: str, change: Change, at: list[ImageInput]) -> Finding:
    def word(k: str) -> str:
        a, b = change.baseline[k], change.at[k]
        if k in ("clipped",):
            return f"{_WORDS[k]} from {a:.0%} to {b:.0%}"
        return f"{_WORDS[k]} from {fmt(a)} to {fmt(b)}"

    what = "; ".join(word(k) for k in change.reasons)
    stays = [s for s in change.steps_changed if s != change.step]
    tail = f" It stays changed at {len(stays)} later step{'s' if len(stays) != 1 else ''}." if stays else ""
    return Finding(
        "sample_change", "warning", min(1.0, 0.5 + 0.25 * change.strength),
        f"The samples {label} changed abruptly at step {change.step} against the run's earlier samples: "
        f"{what} (step {change.previous_step} before it).{tail}",
        {"step": change.step, "key": label},
        {"previous_step": change.previous_step, "reasons": list(change.reasons),
         "baseline": {k: round(v, 5) for k, v in change.baseline.items()},
         "at": {k: round(v, 5) for k, v in change.at.items()},
         "previous": {k: round(v, 5) for k, v in change.previous.items()},
         "strength": round(change.strength, 3), "steps_changed": list(change.steps_changed),
         "images": [s.path for s in at]})


def _stepless(run: RunData) -> list[ImageInput]:
    """The samples without a step (an image artifact with no number in its name), first of each label."""
    seen: dict[str, ImageInput] = {}
    for s in run.samples:
        if s.step is None:
            seen.setdefault(s.path, s)
    return list(seen.values())


@register("samples", needs=lambda run: bool(run.samples), order=80)
def check_samples(run: RunData, settings: Settings) -> CheckResult:
    """Analyse the run's samples per step (see the module docstring); samples without a step as lone images."""
    samples = step_samples(run)
    findings, notes = analyze_images(samples + _stepless(run), settings)
    series: dict[str, dict[str, Any]] = {}
    changes: list[Finding] = []
    for label, by_step in _series(samples).items():
        steps = sorted(by_step)
        stats = [step_stats([s.image for s in by_step[st]]) for st in steps]
        change = find_change(steps, stats)
        series[label] = {"steps": steps, "stats": stats, "change": change}
        if change is not None:
            changes.append(_change_finding(label, change, by_step[change.step]))
    onset = onset_result(samples, findings, checkpoint_steps(run))
    data = {**onset.data, "series": series}
    return CheckResult(findings + changes + onset.findings, data=data,
                       notes=[n.replace("images:", "samples:", 1) for n in notes])
