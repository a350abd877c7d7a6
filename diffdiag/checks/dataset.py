"""Dataset-health checks (``--dataset``, ``--masks``).

Findings (docs/CONTRACT.md §3), file paths relative to the dataset folder:

- ``dataset_tiled_source`` — one per image with a repeating tile; location
  ``file``, ``period_px`` [py, px] (null for an axis that does not repeat);
  evidence ``strength`` [y, x], ``seamless``, ``bands`` (periods seen only
  as stripes), ``consistency``. A seamless (exact) repeat is a warning; a
  stripe overlay shared by the whole picture is info; a natural periodic
  texture (bricks, coins, text lines) raises nothing.
- ``dataset_invalid_mask`` — one per invalid mask; location ``file`` (the
  image), ``problem``; evidence ``mask`` (its path) and the numbers.
- ``dataset_brightness_skew`` / ``dataset_contrast_skew`` — a *separated
  subgroup* of the set (:func:`diffdiag.analyzers.dataset.separated_subgroup`):
  at least ``MIN_GROUP`` images, at most ``MAX_GROUP_SHARE`` of the set, whose
  log white point (brightness) or log(1 − black/white point) (contrast) lies
  beyond an empty interval from the rest's values, wide in absolute terms and
  against the rest's robust spread, with the medians far apart. A warning;
  location ``files`` (the subgroup, most extreme first); evidence the medians,
  gap, separation, effect, thresholds and the statistics per file. One odd
  image (a naturally dark photo) is not a skew and raises nothing. Washed-out
  images (the contrast subgroup) are not also reported as dark; garbage images
  (below) are left out.
- ``dataset_garbage_image`` — one warning per unusable image; location ``file``,
  ``problem``: ``constant`` (RMS contrast below ``CONSTANT_STD``: all black,
  one flat colour), ``noise`` (lag-1 neighbour correlation below
  ``NOISE_CORR``: natural images are > 0.5) or ``clipped`` (most pixels at
  channel values at 0 or full scale); evidence the numbers
  (:func:`diffdiag.analyzers.dataset.classify_garbage`).

The scan (compact per-image statistics, ``RunData.dataset``) is read by
:func:`diffdiag.sources.dataset.load_dataset`; this check only reads it.
Unreadable images and unmatched masks become notes (``CheckResult.notes``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..analyzers.dataset import (BRIGHTNESS_GAP, BRIGHTNESS_SEPARATION, CLIPPED_SHARE, CONSTANT_STD, CONTRAST_EFFECT,
                                 CONTRAST_GAP, CONTRAST_SEPARATION, MAX_GROUP_SHARE, MIN_BRIGHTNESS_RATIO, MIN_GROUP,
                                 NOISE_CORR, black_point_contrast, brightness_subgroup, classify_garbage,
                                 classify_tiling, contrast_subgroup, exposure)
from ..errors import InputError
from ..model import CheckResult, DatasetScan, Finding, RunData, Settings
from ..registry import register
from ..textfmt import fmt

#: at most this many info-level tiled-source findings (stripe overlays); warnings are never capped
MAX_INFO_TILED = 20

_PROBLEM_TEXT = {
    "non_binary": "is not a two-level 0/foreground mask",
    "empty": "is empty (no foreground)",
    "full": "is full (foreground everywhere)",
    "size_mismatch": "does not have the image's size",
    "misaligned": "does not line up with the image",
    "unreadable": "cannot be read",
}


def _tiled(scan: DatasetScan) -> list[Finding]:
    out, infos = [], 0
    for i, feats in sorted(scan.tiling.items()):
        kind, score = classify_tiling(feats)
        if kind is None:
            continue
        seamless = kind == "seamless"
        if not seamless:
            infos += 1
            if infos > MAX_INFO_TILED:
                continue
        per = feats["period"]
        desc = " x ".join(f"{p} px" for p in per if p) or "?"
        axes = "both axes" if all(per) else ("y" if per[0] else "x")
        msg = (f"{scan.files[i]} is a seamlessly repeated tile ({desc}, along {axes}); training on it teaches the "
               f"model the repeat." if seamless else
               f"{scan.files[i]} carries regular stripes over the whole picture ({desc}, along {axes}) — an overlay "
               f"or augmentation pattern.")
        out.append(Finding("dataset_tiled_source", "warning" if seamless else "info", score, msg,
                           {"file": scan.files[i], "period_px": per},
                           {"strength": feats["strength"], "snr": feats["snr"], "seamless": seamless,
                            "bands": feats.get("bands"), "consistency": feats.get("consistency"),
                            "size": list(scan.sizes[i])}))
    if infos > MAX_INFO_TILED:
        out.append(Finding("dataset_tiled_source", "info", 0.3,
                           f"{infos - MAX_INFO_TILED} more images carry regular stripes (not listed).",
                           {"file": None, "period_px": None}, {"more": infos - MAX_INFO_TILED}))
    return out


def _masks(scan: DatasetScan, masks_dir: Path | None) -> list[Finding]:
    out = []
    for i, (problem, ev) in sorted(scan.masks.items()):
        f = scan.files[i]
        extra = ""
        if problem == "misaligned":
            al = ev.get("alignment", {})
            extra = (f" (it matches the image edges when flipped {'left-right' if al.get('flip') == 'lr' else 'up-down'})"
                     if al.get("flip") else f" (it matches the image edges when shifted by {al.get('best_shift')} px)")
        elif problem == "size_mismatch":
            extra = f" (mask {ev.get('mask_size')} vs image {ev.get('image_size')})"
        out.append(Finding("dataset_invalid_mask", "warning", 0.9 if problem != "misaligned" else 0.7,
                           f"The mask of {f} {_PROBLEM_TEXT[problem]}{extra}.",
                           {"file": f, "problem": problem}, {**ev, "masks_dir": str(masks_dir) if masks_dir else None}))
    return out


_GARBAGE_TEXT = {
    "constant": "is constant (RMS contrast {std}, mean luminance {mean}): it carries no content to learn",
    "noise": "is noise (neighbour correlation {corr}; natural images are above 0.5)",
    "clipped": "is heavily clipped ({lo} of its channel values at black, {hi} at full scale)",
}


def _garbage(scan: DatasetScan) -> tuple[list[Finding], np.ndarray]:
    n = len(scan.files)
    if not (len(scan.std) == len(scan.clip_lo) == len(scan.clip_hi) == len(scan.corr) == n):
        return [], np.zeros(0, int)
    out, idx = [], []
    for i in range(n):
        problem = classify_garbage(float(scan.std[i]), float(scan.clip_lo[i]), float(scan.clip_hi[i]),
                                   float(scan.corr[i]))
        if problem is None:
            continue
        idx.append(i)
        ev = {"mean": round(float(scan.mean[i]), 4), "std": round(float(scan.std[i]), 4),
              "clip_lo": round(float(scan.clip_lo[i]), 4), "clip_hi": round(float(scan.clip_hi[i]), 4),
              "corr": round(float(scan.corr[i]), 4), "constant_std": CONSTANT_STD, "noise_corr": NOISE_CORR,
              "clipped_share": CLIPPED_SHARE}
        text = _GARBAGE_TEXT[problem].format(std=fmt(ev["std"]), mean=fmt(ev["mean"]), corr=fmt(ev["corr"]),
                                             lo=f"{ev['clip_lo']:.0%}", hi=f"{ev['clip_hi']:.0%}")
        out.append(Finding("dataset_garbage_image", "warning", 0.8, f"{scan.files[i]} {text}.",
                           {"file": scan.files[i], "problem": problem}, ev))
    return out, np.asarray(idx, int)


def _without(scan: DatasetScan, idx: np.ndarray) -> DatasetScan:
    """The scan with the images ``idx`` left out of the set statistics (their values NaN)."""
    if len(idx) == 0:
        return scan
    masked = {}
    for k in ("p01", "p99"):
        a = np.array(getattr(scan, k), np.float32)
        a[idx] = np.nan
        masked[k] = a
    return dataclasses.replace(scan, **masked)


def _skew(scan: DatasetScan, which: str, exclude: np.ndarray | None = None) -> tuple[list[Finding], np.ndarray]:
    """The brightness or contrast subgroup of the set (garbage images already NaN in ``scan``)."""
    if which == "brightness":
        grp = brightness_subgroup(scan.p99, exclude)
        feature = exposure(scan.p99)
        gap, sep, eff = BRIGHTNESS_GAP, BRIGHTNESS_SEPARATION, float(np.log(MIN_BRIGHTNESS_RATIO))
    else:
        grp = contrast_subgroup(scan.p01, scan.p99)
        feature = black_point_contrast(scan.p01, scan.p99)
        gap, sep, eff = CONTRAST_GAP, CONTRAST_SEPARATION, CONTRAST_EFFECT
    if len(grp.index) == 0:
        return [], grp.index
    files = [scan.files[i] for i in grp.index]
    n, n_set = len(files), int(np.isfinite(feature).sum())
    if which == "brightness":
        word = "darker" if grp.direction < 0 else "brighter"
        med = (f"white point median {float(np.exp(grp.group_median)):.2f} against {float(np.exp(grp.rest_median)):.2f}"
               f" for the other {n_set - n}")
    else:
        word = "lower-contrast (washed-out)" if grp.direction < 0 else "higher-contrast"
        med = (f"black/white point ratio median {1 - float(np.exp(grp.group_median)):.2f} against "
               f"{1 - float(np.exp(grp.rest_median)):.2f} for the other {n_set - n}")
    shown = ", ".join(files[:4]) + (f" and {n - 4} more" if n > 4 else "")
    msg = f"{n} images form a separate group, much {word} than the rest of the dataset ({med}): {shown}."
    ev = {"feature": "log white point (p99 luminance)" if which == "brightness" else "log(1 - p01/p99)",
          "direction": "below" if grp.direction < 0 else "above",
          "group_median": round(grp.group_median, 4), "rest_median": round(grp.rest_median, 4),
          "rest_scale": round(grp.rest_scale, 4), "gap": round(grp.gap, 4), "separation": round(grp.separation, 3),
          "effect": round(grp.effect, 4), "n_images": n_set,
          "thresholds": {"min_gap": gap, "min_separation": sep, "min_effect": round(eff, 4),
                         "min_group": MIN_GROUP, "max_share": MAX_GROUP_SHARE},
          "per_file": {scan.files[i]: {"feature": round(float(feature[i]), 4), "mean": round(float(scan.mean[i]), 4),
                                       "std": round(float(scan.std[i]), 4), "p01": round(float(scan.p01[i]), 4),
                                       "p99": round(float(scan.p99[i]), 4)}
                       for i in grp.index[:200]}}
    score = min(1.0, 0.5 + 0.05 * (grp.separation - sep) + 0.2 * (grp.effect / eff - 1))
    return [Finding(f"dataset_{which}_skew", "warning", round(max(0.5, score), 3), msg, {"files": files}, ev)], grp.index


def dataset_notes(scan: DatasetScan) -> list[str]:
    """Notes on unmatched masks (unreadable images and masks are input errors: ``diffdiag.sources.load_run``)."""
    notes: list[str] = []
    if scan.masks_dir is not None:
        if scan.images_without_mask:
            notes.append(f"dataset: {scan.images_without_mask} of {scan.images_without_mask + scan.n_masks_matched}"
                         f" images have no mask in {scan.masks_dir} (matched by file stem)")
        if scan.n_masks_matched == 0:
            notes.append(f"dataset: no mask in {scan.masks_dir} matches an image stem")
    return notes


@register("dataset", needs=lambda run: run.dataset is not None, order=50)
def check_dataset(run: RunData, settings: Settings) -> CheckResult:
    """Report tiled sources, invalid masks, garbage images and brightness/contrast skew from ``run.dataset``."""
    scan = run.dataset
    assert scan is not None
    notes = dataset_notes(scan)
    if not scan.files:
        first = scan.unreadable[0] if scan.unreadable else ("?", "?")
        err = InputError(f"none of the {len(scan.unreadable)} images could be read (first: {first[0]}: {first[1]})",
                         scan.root)
        return CheckResult([], data=scan, notes=[*notes, f"dataset: {err}"])
    garbage, bad = _garbage(scan)
    clean = _without(scan, bad)
    contrast, low = _skew(clean, "contrast")
    brightness, _ = _skew(clean, "brightness", exclude=low)
    findings = _tiled(scan) + _masks(scan, scan.masks_dir) + garbage + brightness + contrast
    return CheckResult(findings, data=scan, notes=notes)
