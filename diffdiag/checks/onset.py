"""Artifact-onset check: run the image checks on the samples of every step, report when an artifact appears and stays.

Samples come from ``run.samples`` (tracker sources fill it, each with its
``step``) and from sample folders beside the checkpoints or inside
``--logdir`` (:mod:`diffdiag.sources.samples`). Every sample is analysed as a
lone image by the registered image checks (the ones that run on a run holding
only ``images``), so onset detection uses exactly the detectors (and
thresholds) the image analysis uses; when no image check is installed, the
stripe analyzer (:func:`diffdiag.analyzers.stripes.image_stripes`) and a
degenerate-image test stand in.

Finding: ``artifact_onset`` (warning; location ``step``, ``artifact``) per
artifact id whose onset :func:`diffdiag.analyzers.onset.find_onset` finds.
Evidence: ``last_clean_step``, ``stay_fraction``, ``transient_steps``,
``samples`` (where it was seen at the onset step), and — with checkpoints —
``checkpoint`` (the first at or after the onset) and ``last_clean_checkpoint``
(the last one before it: the one to ship). The per-step table is left in
``run.extra["onset"]`` for the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from ..analyzers.onset import find_onsets
from ..model import SEVERITY_RANK, Finding, ImageInput, RunData, Settings
from ..registry import register, registered_checks, strict_mode

#: finding ids that describe a lone image (docs/CONTRACT.md §3)
ARTIFACT_IDS = ("stripes", "periodic_pattern", "tiling_period_doubling", "hf_noise_patch", "image_degenerate")
MIN_STEPS = 3
_SKIP_CHECKS = {"onset", "checkpoints"}


def gather_samples(run: RunData) -> tuple[list[ImageInput], list[str]]:
    """``run.samples`` with a step, plus the images of discovered sample folders (deduplicated by path)."""
    from ..sources.samples import find_sample_dirs, load_step_samples

    samples = [s for s in run.samples if s.step is not None]
    seen = {s.path for s in samples}
    notes: list[str] = []
    dirs = find_sample_dirs(run)
    if dirs:
        found, notes = load_step_samples(dirs)
        samples += [s for s in found if s.path not in seen]
    samples.sort(key=lambda s: (s.step, s.path))
    return samples, notes


def _has_samples(run: RunData) -> bool:
    if sum(1 for s in {x.step for x in run.samples if x.step is not None}) >= MIN_STEPS:
        return True
    from ..sources.samples import find_sample_dirs

    return bool(find_sample_dirs(run))


def _registered_image_detector(settings: Settings) -> Callable[[list[ImageInput]], list[Finding]] | None:
    probe = RunData(images=[ImageInput(np.zeros((8, 8), np.float32), "probe")])
    specs = []
    for spec in registered_checks():
        if spec.name in _SKIP_CHECKS:
            continue
        try:
            if spec.needs(probe):
                specs.append(spec)
        except Exception:  # noqa: BLE001 - a needs() predicate must never break the analysis
            continue
    if not specs:
        return None
    sub_settings = dataclasses.replace(settings, max_images=10 ** 6)

    def detect(images: list[ImageInput]) -> list[Finding]:
        sub = RunData(name="samples", images=[ImageInput(i.image, i.path, step=i.step) for i in images])
        out: list[Finding] = []
        for spec in specs:
            try:
                out.extend(spec.func(sub, sub_settings))
            except Exception:  # noqa: BLE001
                if strict_mode():
                    raise
        return out

    return detect


def _fallback_detect(images: list[ImageInput], settings: Settings) -> list[Finding]:
    from ..analyzers.stripes import image_stripes

    out: list[Finding] = []
    for im in images:
        a = np.asarray(im.image, np.float32)
        if not np.all(np.isfinite(a)) or float(np.nanstd(a)) < 2e-3:
            out.append(Finding("image_degenerate", "warning", 1.0, f"{im.path} is degenerate.",
                               {"image": im.path, "problem": "uniform"}))
            continue
        for s in image_stripes(a, settings.fft_threshold):
            out.append(Finding("stripes", "warning", min(1.0, s.z / 20.0), f"Stripes in {im.path}.",
                               {"image": im.path, "axis": s.axis, "period_px": s.period_px, "bbox": s.bbox},
                               {"z": s.z, "amplitude": s.amplitude}))
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


def _checkpoint_steps(run: RunData) -> list[tuple[str, int]]:
    heads = run.extra.get("checkpoint_headers")
    if heads:
        return [(h["name"], h["step"]) for h in heads if h.get("step") is not None]
    if run.checkpoints:
        from ..sources.checkpoints import display_name, step_from_name

        return [(display_name(p), s) for p in run.checkpoints if (s := step_from_name(p)) is not None]
    return []


@register("onset", needs=_has_samples, order=80)
def check_onset(run: RunData, settings: Settings) -> list[Finding]:
    """Report ``artifact_onset`` findings (see the module docstring)."""
    samples, notes = gather_samples(run)
    run.warnings.extend(n for n in notes[:20] if n not in run.warnings)
    if len({s.step for s in samples}) < MIN_STEPS:
        return []
    detect = _registered_image_detector(settings)
    findings = detect(samples) if detect is not None else _fallback_detect(samples, settings)
    steps, presence, where = presence_table(samples, findings)
    onsets = find_onsets(steps, presence)
    first_image: dict[int, ImageInput] = {}
    by_path = {s.path: s for s in samples}
    for s in samples:
        first_image.setdefault(s.step, s)
    pairs: dict[str, tuple[ImageInput | None, ImageInput | None]] = {}
    for o in onsets:  # the sample where the artifact was seen, and the sample before it
        seen = [by_path[p] for p, _ in where.get((o.artifact, o.step), []) if p in by_path]
        pairs[o.artifact] = (first_image.get(o.last_clean_step), seen[0] if seen else first_image.get(o.step))
    run.extra["onset"] = {"steps": steps, "presence": presence, "onsets": onsets, "images": first_image,
                          "pairs": pairs, "detector": "checks" if detect is not None else "fallback"}
    cks = _checkpoint_steps(run)
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
    return out
