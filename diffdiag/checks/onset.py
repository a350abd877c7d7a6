"""Artifact onset: from the image analysis of the samples of every step, when an artifact appears and stays.

Samples are ``run.samples`` with a ``step``: the tracker sources, the
TensorBoard image summaries and the sample folders
(:mod:`diffdiag.sources.samples`) fill it. The ``samples`` check
(:mod:`diffdiag.checks.samples`) analyses every sample as a lone image with
:func:`diffdiag.checks.images.analyze_images` — the detectors (and thresholds)
of the image analysis — and calls :func:`onset_result` with those findings.

Finding: ``artifact_onset`` (warning; location ``step``, ``artifact``) per
artifact id whose onset :func:`diffdiag.analyzers.onset.find_onset` finds.
Evidence: ``last_clean_step``, ``stay_fraction``, ``transient_steps``,
``samples`` (where it was seen at the onset step), and — with checkpoints
(their steps come from ``run.checkpoint_scan``, the parsed headers) —
``checkpoint`` (the first at or after the onset) and ``last_clean_checkpoint``
(the last one before it: the one to ship). The result's data is the
per-step table the report draws: ``steps``, ``presence``, ``onsets``,
``images`` (the first sample of each step) and ``pairs`` (per artifact, the
sample before and at its onset).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analyzers.onset import find_onsets
from ..model import SEVERITY_RANK, CheckResult, Finding, ImageInput, RunData, Settings
from .images import analyze_images

#: finding ids that describe a lone image (docs/CONTRACT.md §3)
ARTIFACT_IDS = ("stripes", "periodic_pattern", "tiling_period_doubling", "hf_noise_patch", "image_degenerate")
MIN_STEPS = 3


def step_samples(run: RunData) -> list[ImageInput]:
    """The run's samples that carry a step, as lone images, sorted by step then path (first of each path kept)."""
    out: list[ImageInput] = []
    seen: set[str] = set()
    for s in sorted((s for s in run.samples if s.step is not None), key=lambda s: (s.step, s.path)):
        if s.path in seen:
            continue
        seen.add(s.path)
        out.append(ImageInput(s.image, s.path, step=s.step, notes=list(s.notes), source=s.source, key=s.key,
                              index=s.index))
    return out


def presence_table(samples: list[ImageInput], findings: list[Finding]
                   ) -> tuple[list[int], dict[str, list[bool]], dict[tuple[str, int], list[tuple[str, float]]]]:
    """Per step, which artifact ids were found (severity ≥ warning) in any of its samples.

    Returns
    -------
    steps : list of int
    presence : dict of str to list of bool
    where : dict of (artifact, step) to list of (image path, score)
    """
    step_of = {s.path: s.step for s in samples}
    steps = sorted({s.step for s in samples})
    pos = {st: i for i, st in enumerate(steps)}
    presence: dict[str, list[bool]] = {}
    where: dict[tuple[str, int], list[tuple[str, float]]] = {}
    for f in findings:
        if f.id not in ARTIFACT_IDS or SEVERITY_RANK[f.severity] < SEVERITY_RANK["warning"]:
            continue
        img = f.location.get("image")
        if img not in step_of:
            continue
        st = step_of[img]
        presence.setdefault(f.id, [False] * len(steps))[pos[st]] = True
        where.setdefault((f.id, st), []).append((img, float(f.score)))
    return steps, presence, where


def checkpoint_steps(run: RunData) -> list[tuple[str, int]]:
    """``(name, step)`` of the run's checkpoints with a known step (from the loaded headers)."""
    scan = run.checkpoint_scan
    if scan is None:
        return []
    return [(c.name, c.step) for c in scan.checkpoints if c.step is not None]


def onset_result(samples: list[ImageInput], findings: list[Finding],
                 checkpoints: list[tuple[str, int]] = ()) -> CheckResult:
    """``artifact_onset`` findings and the per-step table from the image findings of the samples.

    Parameters
    ----------
    samples : list of ImageInput
        Lone images with a ``step`` (:func:`step_samples`), labelled uniquely.
    findings : list of Finding
        Their image findings (:func:`diffdiag.checks.images.analyze_images`).
    checkpoints : list of (str, int)
        ``(name, step)`` of the run's checkpoints (:func:`checkpoint_steps`).

    Returns
    -------
    CheckResult
        The onset findings (none with fewer than :data:`MIN_STEPS` steps) and the table (module docstring).
    """
    steps, presence, where = presence_table(samples, findings)
    onsets = find_onsets(steps, presence) if len(steps) >= MIN_STEPS else []
    first_image: dict[int, ImageInput] = {}
    by_path = {s.path: s for s in samples}
    for s in samples:
        first_image.setdefault(s.step, s)
    pairs: dict[str, tuple[ImageInput | None, ImageInput | None]] = {}
    for o in onsets:  # the sample where the artifact was seen, and the sample before it
        seen = [by_path[p] for p, _ in where.get((o.artifact, o.step), []) if p in by_path]
        pairs[o.artifact] = (first_image.get(o.last_clean_step), seen[0] if seen else first_image.get(o.step))
    table = {"steps": steps, "presence": presence, "onsets": onsets, "images": first_image, "pairs": pairs}
    cks = list(checkpoints)
    out: list[Finding] = []
    for o in onsets:
        after = [where.get((o.artifact, st), []) for st in steps[o.index:]]
        scores = [sc for lst in after for _, sc in lst]
        evidence: dict[str, Any] = {
            "last_clean_step": o.last_clean_step, "stay_fraction": round(o.stay_fraction, 4),
            "transient_steps": o.transient_steps, "before_fraction": round(o.before_fraction, 4),
            "samples": [p for p, _ in where.get((o.artifact, o.step), [])],
            "n_steps": len(steps), "steps_with_artifact": [st for st, pr in zip(steps, presence[o.artifact]) if pr],
        }
        if cks:
            at_or_after = [(n, s) for n, s in cks if s >= o.step]
            before = [(n, s) for n, s in cks if s < o.step]
            if at_or_after:
                evidence["checkpoint"] = at_or_after[0][0]
            if before:
                evidence["last_clean_checkpoint"] = before[-1][0]
        score = float(np.mean(scores)) * o.stay_fraction if scores else o.stay_fraction
        ship = f" The last checkpoint before it is {evidence['last_clean_checkpoint']}." \
            if "last_clean_checkpoint" in evidence else ""
        out.append(Finding(
            "artifact_onset", "warning", score,
            f"'{o.artifact}' appears in the samples from step {o.step} on (clean at step {o.last_clean_step}) "
            f"and stays in {o.stay_fraction:.0%} of the later samples.{ship}",
            {"step": o.step, "artifact": o.artifact}, evidence))
    return CheckResult(out, data=table)


def check_onset(run: RunData, settings: Settings) -> CheckResult:
    """Only the ``artifact_onset`` findings of the run's samples (the ``samples`` check reports them with the
    image findings they come from; see the module docstring)."""
    samples = step_samples(run)
    findings, notes = analyze_images(samples, settings)
    res = onset_result(samples, findings, checkpoint_steps(run))
    return CheckResult(res.findings, res.data, [n.replace("images:", "onset:", 1) for n in notes])
