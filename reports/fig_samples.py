"""Sample strips: per source and key, the logged samples of each step in a row, findings marked.

One figure per series (``<source>:<key>``, e.g. ``tensorboard:validation``)
that the ``samples`` check analysed (``Diagnosis.details["samples"]``): a row
per step (at most :data:`MAX_ROWS`, the steps with findings first, the rest
spread over the run), its images side by side. A thumbnail that a finding at
warning or above is about gets a frame in that finding's colour (the colours
of the image figures) and its title underneath; the step where the samples
changed abruptly (``sample_change``) is marked at the row's label.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from diffdiag.findings.words import finding_title
from diffdiag.model import SEVERITY_RANK, Diagnosis, ImageInput, RunData, Settings
from diffdiag.sources.samples import spread

from .fig_images import COLORS
from .figures import Figure, figure_maker

#: at most this many steps (rows) and images per step (columns) are drawn per series
MAX_ROWS = 12
MAX_COLUMNS = 4
#: at most this many series get a figure
MAX_SERIES = 6
CHANGE_COLOR = "#d7191c"


def _label(item: ImageInput) -> str:
    return f"{item.source or 'samples'}:{item.key or ''}"


def _rows(steps: list[int], flagged: set[int]) -> list[int]:
    """The steps drawn: those with findings first (at most MAX_ROWS), the others spread, in step order."""
    marked = [s for s in steps if s in flagged][:MAX_ROWS]
    rest = spread([s for s in steps if s not in flagged], MAX_ROWS - len(marked))
    return sorted(marked + rest)


def _thumb(ax, item: ImageInput | None, marks: list[tuple[str, str]]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if item is None:
        return
    a = np.where(np.isfinite(item.image), item.image, 0)
    ax.imshow(np.clip(a, 0, 1), cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    h, w = a.shape[:2]
    if marks:
        color = marks[0][1]
        ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, ec=color, lw=3.0))
        ax.set_xlabel(", ".join(dict.fromkeys(t for t, _ in marks)), fontsize=7, color=color)
    ax.set_title(f"#{item.index}", fontsize=7, pad=2)


def _series_figure(k: int, label: str, by_step: dict[int, list[ImageInput]], diagnosis: Diagnosis,
                   change_step: int | None) -> Figure:
    paths = {s.path for lst in by_step.values() for s in lst}
    marks: dict[str, list[tuple[str, str]]] = {}
    idx: list[int] = []
    for i, f in enumerate(diagnosis.findings):
        img = f.location.get("image")
        if img in paths and SEVERITY_RANK[f.severity] >= SEVERITY_RANK["warning"]:
            title = finding_title(f.id)
            if f.id == "image_degenerate" and f.location.get("problem"):
                title = f"{f.location['problem']}"
            marks.setdefault(img, []).append((title, COLORS.get(f.id, "#f2994a")))
            idx.append(i)
        elif f.id == "sample_change" and f.location.get("key") == label:
            idx.append(i)
    flagged = {st for st, lst in by_step.items() if any(s.path in marks for s in lst)}
    if change_step is not None:
        flagged.add(change_step)
    rows = _rows(sorted(by_step), flagged)
    cols = max(1, min(MAX_COLUMNS, max(len(by_step[s]) for s in rows)))
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 + 1.25 * cols, 0.5 + 1.3 * len(rows)), dpi=100,
                             squeeze=False)
    for r, st in enumerate(rows):
        items = sorted(by_step[st], key=lambda s: s.index)[:cols]
        for c in range(cols):
            item = items[c] if c < len(items) else None
            _thumb(axes[r][c], item, marks.get(item.path, []) if item is not None else [])
        changed = st == change_step
        axes[r][0].set_ylabel(f"step {st}" + ("\nchanged" if changed else ""), fontsize=8, rotation=0,
                              ha="right", va="center", labelpad=10,
                              color=CHANGE_COLOR if changed else "black",
                              fontweight="bold" if changed else "normal")
    shown = len(rows) < len(by_step)
    fig.suptitle(f"{label}: {len(by_step)} step{'s' if len(by_step) != 1 else ''}"
                 + (f" ({len(rows)} shown)" if shown else ""), fontsize=9)
    fig.tight_layout()
    cap = (f"The samples logged as {label}, one row per step (the image index above each thumbnail). A frame marks "
           "an image that a finding at warning or above is about, its problem written underneath")
    cap += f"; the row of step {change_step} is where the samples changed abruptly." if change_step is not None \
        else "."
    if shown:
        cap += " Steps with findings are all shown; the others are spread over the run."
    return Figure(f"samples_{k:02d}", f"Samples {label}", fig, cap, "samples", sorted(set(idx)))


@figure_maker("samples", order=45)
def sample_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """One strip figure per series of logged samples (see the module docstring)."""
    info = diagnosis.details.get("samples")
    if not info or not info.get("series"):
        return []
    by_series: dict[str, dict[int, list[ImageInput]]] = {}
    for s in run.samples:
        if s.step is not None:
            by_series.setdefault(_label(s), {}).setdefault(int(s.step), []).append(s)
    out = []
    for k, (label, series) in enumerate(sorted(info["series"].items())[:MAX_SERIES]):
        by_step = by_series.get(label)
        if not by_step:
            continue
        change = series.get("change")
        out.append(_series_figure(k, label, by_step, diagnosis, None if change is None else change.step))
    return out
