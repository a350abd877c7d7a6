"""Findings in words: a title per finding id and locations written for a person.

``diagnosis.json`` keeps each finding's ``location`` as data (docs/CONTRACT.md
§3); what a person reads — the report's findings table, the CLI summary, the
MLflow note, the W&B Report — goes through :func:`where`, which writes it
without Python reprs: ``step 7``, ``steps 100–250``, ``period 19 px along x``,
``box x 10–50, y 0–64``, file names without their folders, long lists cut.

Examples
--------
>>> where({"file": "sample_002.png", "period_px": [None, 19]})
'sample_002.png; period 19 px along x'
>>> where({"files": ["/a/run/lat_1.safetensors", "/a/run/lat_2.safetensors"], "channels": [2, 3]})
'2 files: lat_1.safetensors, lat_2.safetensors; channels 2, 3'
"""

from __future__ import annotations

import math
import os
from pathlib import PurePath
from typing import Any, Iterable, Sequence

from ..model import SEVERITY_RANK, Finding
from ..textfmt import fmt

__all__ = ["FINDING_TITLES", "finding_title", "where", "first_step", "display_path", "display_paths",
           "box_words", "period_words", "finding_order", "count_words", "message", "gist"]

#: finding id -> title (docs/CONTRACT.md §3 lists the ids)
FINDING_TITLES: dict[str, str] = {
    "loss_spike": "Loss spike",
    "loss_plateau": "Loss plateau",
    "loss_divergence": "Loss divergence",
    "ema_divergence": "EMA breaks from the loss",
    "loss_nonfinite": "Non-finite loss",
    "loss_sample_correlation": "Samples that raise the loss",
    "grad_norm_spike": "Gradient-norm spike",
    "periodic_pattern": "Periodic pattern",
    "tiling_period_doubling": "Doubled tiling period",
    "stripes": "Stripes",
    "hf_noise_patch": "High-frequency noise patch",
    "image_degenerate": "Degenerate image",
    "crop_offset": "Crop offset",
    "latent_batch_shift": "Latent batch shift",
    "latent_periodicity": "Periodic latents",
    "latent_stats_drift": "Latent statistics drift",
    "dataset_tiled_source": "Tiled training image",
    "dataset_invalid_mask": "Invalid mask",
    "dataset_brightness_skew": "Darker or brighter group of images",
    "dataset_contrast_skew": "Washed-out group of images",
    "checkpoint_nonfinite": "Non-finite weights",
    "checkpoint_norm_explosion": "Weight-norm explosion",
    "checkpoint_norm_collapse": "Weight-norm collapse",
    "sample_change": "Abrupt change of the samples",
    "artifact_onset": "Artifact onset",
    "attention_collapse": "Attention collapse",
}

#: at most this many items of a list are written out
MAX_ITEMS = 5


def finding_title(finding_id: str) -> str:
    """The finding id's title in words (an unknown id: spelled out)."""
    if finding_id in FINDING_TITLES:
        return FINDING_TITLES[finding_id]
    text = str(finding_id).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _is_tracker_label(p: str) -> bool:
    head = p.split("/", 1)[0]
    return ":" in head and not (len(head) == 2 and head[1] == ":")  # "wandb:…", "mlflow:…", not "C:"


def display_path(path: Any) -> str:
    """A file name for a person: relative paths as given, absolute ones as ``folder/name``.

    Tracker labels (``wandb:samples/grid@500``) are kept.
    """
    p = str(path)
    if _is_tracker_label(p) or not os.path.isabs(p):
        return p
    parts = PurePath(p).parts
    return "/".join(parts[-2:]) if len(parts) > 2 else PurePath(p).name


def display_paths(paths: Sequence[Any]) -> list[str]:
    """File names for a person: the common folder of absolute paths is dropped."""
    items = [str(p) for p in paths]
    absolute = [p for p in items if os.path.isabs(p) and not _is_tracker_label(p)]
    if len(absolute) == len(items) and len(items) > 1:
        try:
            common = os.path.commonpath(items)
        except ValueError:
            common = ""
        if common and common not in items:
            return [os.path.relpath(p, common).replace(os.sep, "/") for p in items]
    return [display_path(p) for p in items]


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu"):
        return str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if math.isfinite(f) and f == int(f) else fmt(f)


def _listing(items: Iterable[Any], noun: str | None = None, *, paths: bool = False) -> str:
    items = [x for x in items if x is not None]
    shown = display_paths(items) if paths else [_num(x) if not isinstance(x, str) else x for x in items]
    text = ", ".join(shown[:MAX_ITEMS])
    if len(shown) > MAX_ITEMS:
        text += f", … ({len(shown) - MAX_ITEMS} more)"
    if noun and len(shown) > 1:
        return f"{len(shown)} {noun}: {text}"
    return text


def period_words(period: Any, what: str = "period") -> str:
    """``[py, px]`` (either may be None) or one number, in pixels: ``period 19 px along x``."""
    if isinstance(period, (list, tuple)):
        parts = [f"{_num(v)} px along {ax}" for v, ax in zip(period, ("y", "x")) if v is not None]
        return f"{what} " + " and ".join(parts) if parts else ""
    return f"{what} {_num(period)} px" if period is not None else ""


def box_words(bbox: Any) -> str:
    """``[x0, y0, x1, y1]`` (pixels, end exclusive) as ``box x 10–50, y 0–64``."""
    try:
        x0, y0, x1, y1 = (int(v) for v in bbox)
    except (TypeError, ValueError):
        return ""
    return f"box x {x0}–{x1}, y {y0}–{y1}"


def first_step(location: dict[str, Any]) -> int | None:
    """The (first) training step a location names, or None."""
    for k in ("step", "start_step"):
        v = location.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return int(v)
    steps = location.get("steps")
    if isinstance(steps, (list, tuple)) and steps and isinstance(steps[0], (int, float)):
        return int(steps[0])
    return None


def _step_words(loc: dict[str, Any]) -> str:
    if "start_step" in loc or "end_step" in loc:
        a, b = loc.get("start_step"), loc.get("end_step")
        return f"steps {_num(a)}–{_num(b)}" if a is not None and b is not None else \
            f"step {_num(a if a is not None else b)}"
    steps = loc.get("steps")
    if isinstance(steps, (list, tuple)) and len(steps) > 1:
        return _listing(steps, "steps")
    step = loc.get("step", steps[0] if isinstance(steps, (list, tuple)) and steps else None)
    return f"step {_num(step)}" if step is not None else ""


def _one(key: str, v: Any) -> str:
    """One location entry in words ("" to leave it out)."""
    if v is None or v == [] or v == {}:
        return ""
    if key in ("file", "image", "latents", "checkpoint"):
        return display_path(v) if key != "image" else f"image {display_path(v)}"
    if key == "reference":
        return f"reference {display_path(v)}"
    if key == "files":
        return _listing(v, "files", paths=True) if isinstance(v, (list, tuple)) else display_path(v)
    if key == "period_px":
        return period_words(v)
    if key == "doubled_period_px":
        return period_words(v, "doubled period")
    if key == "period":
        return f"period {_num(v)} latent cells"
    if key == "bbox":
        return box_words(v)
    if key == "shift_px" and isinstance(v, (list, tuple)) and len(v) == 2:
        return f"shifted {_num(v[0])} px in y, {_num(v[1])} px in x"
    if key == "channels":
        return "channels " + _listing(v) if isinstance(v, (list, tuple)) else f"channel {_num(v)}"
    if key == "modules":
        return _listing(v, "modules") if isinstance(v, (list, tuple)) else str(v)
    if key == "sample_ids":
        return _listing(v, "samples") if isinstance(v, (list, tuple)) else str(v)
    if key == "growth":
        return f"growth ×{_num(v)}"
    if key == "key":
        return f"metric {v}"
    if key == "problem":
        return str(v).replace("_", "-")
    if key == "artifact":
        return f"artifact: {finding_title(str(v)).lower()}"
    if key == "axis":
        return f"{v}"
    if isinstance(v, (list, tuple)):
        flat = [x for x in v if not isinstance(x, (list, tuple, dict))]
        return f"{key.replace('_', ' ')} {_listing(flat)}" if flat else ""
    if isinstance(v, dict):
        return ""
    return f"{key.replace('_', ' ')} {_num(v) if not isinstance(v, str) else v}"


def where(location: dict[str, Any], *, steps: bool = True) -> str:
    """A finding's location in words (no brackets, no ``None``).

    Parameters
    ----------
    location : dict
        A finding's ``location`` (docs/CONTRACT.md §3).
    steps : bool
        Include the steps (False when a separate column shows :func:`first_step`).

    Returns
    -------
    str
        Entries joined by ``"; "`` (``""`` when there is nothing to say).
    """
    loc = dict(location or {})
    parts: list[str] = []
    if steps:
        parts.append(_step_words(loc))
    elif isinstance(loc.get("steps"), (list, tuple)) and len(loc["steps"]) > 1:
        parts.append(_listing(loc["steps"], "steps"))
    if not steps and ("end_step" in loc and loc.get("end_step") != loc.get("start_step")):
        parts.append(f"until step {_num(loc['end_step'])}")
    for k, v in loc.items():
        if k in ("step", "steps", "start_step", "end_step"):
            continue
        parts.append(_one(k, v))
    return "; ".join(p for p in parts if p)


def finding_order(findings: Sequence[Finding]) -> list[int]:
    """Finding indices in reading order: most severe first, then by (first) step, then as found."""
    big = float("inf")

    def key(i: int) -> tuple:
        f = findings[i]
        s = first_step(f.location)
        return (-SEVERITY_RANK[f.severity], big if s is None else s, i)

    return sorted(range(len(findings)), key=key)


def count_words(findings: Sequence[Finding]) -> str:
    """``"25 findings: 3 critical, 14 warnings, 8 notes"`` (``"0 findings"``)."""
    n = {s: sum(f.severity == s for f in findings) for s in ("critical", "warning", "info")}
    parts = [f"{n['critical']} critical"] if n["critical"] else []
    if n["warning"]:
        parts.append(f"{n['warning']} warning{'s' if n['warning'] != 1 else ''}")
    if n["info"]:
        parts.append(f"{n['info']} note{'s' if n['info'] != 1 else ''}")
    total = len(findings)
    return f"{total} finding{'s' if total != 1 else ''}" + (f": {', '.join(parts)}" if parts else "")


_PATH_KEYS = ("image", "reference", "file", "files", "latents", "checkpoint")


def message(finding: Finding) -> str:
    """The finding's message for a person: the absolute paths its location names written as
    :func:`display_path` does (``diagnosis.json`` keeps the message as the check wrote it)."""
    text = finding.message
    for key in _PATH_KEYS:
        v = finding.location.get(key)
        paths = v if isinstance(v, (list, tuple)) else [v]
        shown = display_paths(paths) if isinstance(v, (list, tuple)) else [display_path(v)]
        for p, d in sorted(zip(paths, shown), key=lambda t: -len(str(t[0]))):
            if isinstance(p, str) and p != d and os.path.isabs(p):
                text = text.replace(p, d)
    return text


def gist(text: str, n: int = 200) -> str:
    """``text`` cut to about ``n`` characters at a word boundary (``" …"`` marks the cut)."""
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0].rstrip(",;:(") + " …"
