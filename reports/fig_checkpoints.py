"""Checkpoint figures: per-layer norms (bars, paired dots or a heat-map for 1, 2, many checkpoints),
growth curves, the artifact-onset timeline."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from diffdiag.model import Diagnosis, RunData, Settings

from .figures import Figure, figure_maker

_CK_IDS = ("checkpoint_nonfinite", "checkpoint_norm_explosion", "checkpoint_norm_collapse")
_CK_COLORS = {"checkpoint_nonfinite": "#d7191c", "checkpoint_norm_explosion": "#fdae61",
              "checkpoint_norm_collapse": "#8e44ad"}
#: at most this many layers (rows) are drawn: the flagged ones, then the largest (change)
MAX_ROWS = 60
#: layer names longer than this are cut in the middle (they are written out in full up to it)
MAX_NAME = 96
_LABEL_PT = 6.5


def _short(name: str, n: int = MAX_NAME) -> str:
    """A layer name cut in the middle when longer than ``n`` (both ends stay readable)."""
    if len(name) <= n:
        return name
    head = (n - 1) // 3
    return name[:head] + "…" + name[-(n - 1 - head):]


def _xlabels(cmp) -> list[str]:
    """Tick labels: the step; ``final`` for the one last checkpoint without a step (a trainer's final
    ``pytorch_lora_weights.safetensors``); else the file's stem (its folder when stems repeat), cut at the end."""
    def stem(name: str, folder: bool) -> str:
        parts = name.replace("\\", "/").split("/")
        text = parts[-2] if folder and len(parts) > 1 else parts[-1].rsplit(".", 1)[0]
        return text if len(text) <= 16 else text[:15] + "…"

    stepless = [i for i, s in enumerate(cmp.steps) if s is None]
    if stepless == [len(cmp.names) - 1] and len(cmp.names) > 1:
        return [str(s) for s in cmp.steps[:-1]] + ["final"]
    stems = [stem(n, False) for n in cmp.names]
    return [str(s) if s is not None else stem(n, stems.count(stems[i]) > 1)
            for i, (n, s) in enumerate(zip(cmp.names, cmp.steps))]


def _rows(cmp, flagged: set[str], score: np.ndarray) -> list[int]:
    """Module indices to draw: flagged first, then by ``score`` (descending); at most MAX_ROWS."""
    n_mod = len(cmp.modules)
    return sorted(range(n_mod), key=lambda j: (cmp.modules[j] not in flagged,
                                               np.inf if np.isnan(score[j]) else -score[j]))[:MAX_ROWS]


def _flag_labels(ax, names: list[str], flagged: set[str]) -> None:
    for lab, name in zip(ax.get_yticklabels(), names):
        if name in flagged:
            lab.set_color("#d7191c")
            lab.set_fontweight("bold")


def _what(cmp) -> str:
    return "‖ΔW‖_F" if cmp.kind == "lora" else "‖W‖_F"


def _layer_figure(n_rows: int, width_in: float, *, height_per_row: float = 0.16) -> Any:
    """A figure for ``n_rows`` layer rows and a plot ``width_in`` wide (:func:`_fit` sets its margins)."""
    fig_h = min(max(1.2 + height_per_row * n_rows, 3.0), 13.0)
    return plt.figure(figsize=(width_in + 3.0, fig_h), dpi=100)


def _fit(fig, ax, width_in: float, *, right_in: float = 0.3, cax=None, bottom_in: float = 0.75) -> None:
    """Widen the figure so the layer names (``ax``'s y tick labels, as drawn) fit left of a plot
    ``width_in`` wide, with ``right_in`` kept free right of it (a colour bar ``cax`` goes there)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t.get_window_extent(renderer).width for t in ax.get_yticklabels() if t.get_text()]
    label_w = (max(labels, default=0.0) / fig.dpi) + 0.35  # ticks and padding
    fig_w, fig_h = label_w + width_in + right_in, fig.get_size_inches()[1]
    fig.set_size_inches(fig_w, fig_h)
    bottom, top = bottom_in / fig_h, 0.3 / fig_h
    ax.set_position((label_w / fig_w, bottom, width_in / fig_w, 1 - top - bottom))
    if cax is not None:
        cax.set_position(((label_w + width_in + 0.15) / fig_w, bottom, 0.15 / fig_w, 1 - top - bottom))


def _bars_one(cmp, flagged: set[str], nonfinite: set[str]):
    """One checkpoint: each layer's norm as a horizontal bar (flagged layers red)."""
    fro = cmp.fro[0]
    order = _rows(cmp, flagged, np.where(np.isnan(fro), np.inf, fro))  # NaN/Inf layers right after the flagged
    fig = _layer_figure(len(order), 6.0)
    ax = fig.add_axes((0.3, 0.1, 0.65, 0.8))
    vals = np.array([fro[j] for j in order], dtype=float)
    finite = np.isfinite(vals) & (vals > 0)
    colors = ["#d7191c" if cmp.modules[j] in flagged else "#2d6cdf" for j in order]
    y = np.arange(len(order))
    ax.barh(y[finite], vals[finite], color=[c for c, ok in zip(colors, finite) if ok], height=0.7)
    top = float(vals[finite].max()) if finite.any() else 1.0
    for r in np.flatnonzero(~finite):
        name = cmp.modules[order[r]]
        ax.text(top * 0.01 if finite.any() else 0.01, r, "NaN/Inf" if name in nonfinite else "0 / absent",
                va="center", fontsize=_LABEL_PT, color="#d7191c")
    ax.set_yticks(y)
    ax.set_yticklabels([_short(cmp.modules[j]) for j in order], fontsize=_LABEL_PT)
    _flag_labels(ax, [cmp.modules[j] for j in order], flagged)
    ax.invert_yaxis()
    if finite.any() and vals[finite].max() / max(vals[finite].min(), 1e-30) > 50:
        ax.set_xscale("log")
    ax.set_xlabel(f"{_what(cmp)} of each layer ({cmp.names[0]})")
    ax.grid(alpha=0.3, axis="x")
    _fit(fig, ax, 6.0)
    return fig


def _dumbbell_two(cmp, flagged: set[str]):
    """Two checkpoints: each layer's norm at both, joined (sorted by growth, flagged first)."""
    fro = cmp.fro
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = np.where(fro[0] > 0, fro[1] / fro[0], np.nan)
    score = np.abs(np.log(np.where(np.isfinite(growth) & (growth > 0), growth, 1.0)))
    order = _rows(cmp, flagged, np.where(np.isfinite(growth), score, np.inf))
    fig = _layer_figure(len(order), 6.5)
    ax = fig.add_axes((0.3, 0.1, 0.65, 0.8))
    y = np.arange(len(order))
    a = np.array([fro[0, j] for j in order], dtype=float)
    b = np.array([fro[1, j] for j in order], dtype=float)
    labels = _xlabels(cmp)
    for r in range(len(order)):
        if np.isfinite(a[r]) and np.isfinite(b[r]):
            ax.plot([a[r], b[r]], [r, r], color="#d7191c" if cmp.modules[order[r]] in flagged else "#aab",
                    lw=1.2, zorder=1)
    ax.scatter(a, y, s=16, color="#9aa7b8", zorder=2, label=f"checkpoint {labels[0]}")
    ax.scatter(b, y, s=16, color="#2d6cdf", zorder=3, label=f"checkpoint {labels[1]}")
    ax.set_yticks(y)
    ax.set_yticklabels([_short(cmp.modules[j]) for j in order], fontsize=_LABEL_PT)
    _flag_labels(ax, [cmp.modules[j] for j in order], flagged)
    ax.invert_yaxis()
    vals = np.concatenate([a, b])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size and vals.max() / vals.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"{_what(cmp)} of the layer")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    _fit(fig, ax, 6.5)
    return fig


def _heatmap_many(cmp, flagged: set[str]):
    """Three or more checkpoints: layers × checkpoints, colour = log10 norm (NaN/Inf cells red)."""
    fro = cmp.fro
    n_ck = fro.shape[0]
    change = np.nan_to_num(cmp.change, nan=0.0).max(axis=0)
    order = sorted(_rows(cmp, flagged, change))
    sub = fro[:, order].T
    with np.errstate(divide="ignore", invalid="ignore"):
        logv = np.where(sub > 0, np.log10(sub), np.nan)
    plot_w = min(2.5 + 0.4 * n_ck, 9.0)
    fig = _layer_figure(len(order), plot_w)
    ax = fig.add_axes((0.3, 0.1, 0.5, 0.8))
    cax = fig.add_axes((0.85, 0.1, 0.02, 0.8))
    finite = logv[np.isfinite(logv)]
    vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0, 1))
    im = ax.imshow(logv, aspect="auto", cmap="viridis", vmin=vmin, vmax=max(vmax, vmin + 1e-6),
                   interpolation="nearest")
    for k, mods in cmp.nonfinite.items():
        for r, j in enumerate(order):
            if cmp.modules[j] in mods:
                ax.add_patch(plt.Rectangle((k - 0.5, r - 0.5), 1, 1, color="#d7191c"))
    ax.set_xticks(range(n_ck))
    ax.set_xticklabels(_xlabels(cmp), rotation=60 if n_ck > 8 else 0, fontsize=7)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([_short(cmp.modules[j]) for j in order], fontsize=_LABEL_PT)
    _flag_labels(ax, [cmp.modules[j] for j in order], flagged)
    ax.set_xlabel("checkpoint (step)")
    fig.colorbar(im, cax=cax, label=f"log10 {_what(cmp)}")
    _fit(fig, ax, plot_w, right_in=1.1, cax=cax, bottom_in=1.2 if n_ck > 8 else 0.75)
    return fig


def _growth_many(cmp, diagnosis: Diagnosis, idx: list[int], flagged: set[str]):
    """Three or more checkpoints: total and flagged layers' norms, median growth and update cosine."""
    fro = cmp.fro
    n_ck = fro.shape[0]
    steps_known = all(s is not None for s in cmp.steps)
    x = np.array(cmp.steps, dtype=float) if steps_known else np.arange(n_ck, dtype=float)
    fig, axes = plt.subplots(2, 1, figsize=(11, 6), dpi=100, sharex=True)
    ax = axes[0]
    ax.plot(x, cmp.totals, "-o", color="#2d6cdf", lw=1.6, ms=4, label="all layers (total)")
    for name in sorted(flagged)[:8]:
        if name in cmp.modules:
            j = cmp.modules.index(name)
            ax.plot(x, fro[:, j], "-", lw=1, alpha=0.8, label=_short(name, 60))
    for i in idx:
        f = diagnosis.findings[i]
        if f.location.get("checkpoint") in cmp.names:
            ax.axvline(x[cmp.names.index(f.location["checkpoint"])], color=_CK_COLORS[f.id], lw=1.2, ls="--")
    finite = cmp.totals[np.isfinite(cmp.totals) & (cmp.totals > 0)]
    if finite.size and finite.max() / finite.min() > 20:
        ax.set_yscale("log")
    ax.set_ylabel("Frobenius norm")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("norms per checkpoint (dashed: flagged checkpoints)", fontsize=9)
    ax = axes[1]
    with np.errstate(all="ignore"):
        grow = cmp.growth()[1:]
        if np.any(np.isfinite(grow)):
            ax.plot(x[1:], np.nanmedian(grow, axis=1), "-o", ms=3, color="#27ae60",
                    label="median layer growth (×, vs previous)")
        if cmp.kind == "lora" and np.any(np.isfinite(cmp.cos_prev[1:])):
            ax.plot(x[1:], np.nanmedian(cmp.cos_prev[1:], axis=1), "-s", ms=3, color="#e67e22",
                    label="median cosine(ΔW, previous ΔW)")
    ax.axhline(1.0, color="#999", lw=0.8)
    ax.set_xlabel("step" if steps_known else "checkpoint")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.set_title("change between consecutive checkpoints", fontsize=9)
    fig.tight_layout()
    return fig


@figure_maker("checkpoints", order=60)
def checkpoint_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """Per-layer norms, drawn for the number of checkpoints (``diagnosis.details["checkpoints"]``).

    One checkpoint: a bar per layer. Two: each layer's norm at both, joined.
    Three or more: a layers × checkpoints heat-map and the growth curves.
    Full layer names; flagged layers in red.
    """
    cmp = diagnosis.details.get("checkpoints")
    if cmp is None or not cmp.names or not cmp.modules:
        return []
    idx = [i for i, f in enumerate(diagnosis.findings) if f.id in _CK_IDS]
    flagged: set[str] = set()
    for i in idx:
        flagged.update(diagnosis.findings[i].location.get("modules", []))
    nonfinite = {m for mods in cmp.nonfinite.values() for m in mods}
    n_ck, n_mod = cmp.fro.shape
    what = _what(cmp)
    shown = min(n_mod, MAX_ROWS)
    part = f" ({shown} of {n_mod} layers: the flagged ones, then the largest)" if n_mod > shown else ""
    if n_ck == 1:
        return [Figure("checkpoint_norms", f"Per-layer {what} of checkpoint {cmp.names[0]}",
                       _bars_one(cmp, flagged, nonfinite),
                       f"Each bar is one layer's {what}{part}; flagged layers are red, NaN/Inf layers marked.",
                       "checkpoints", idx)]
    if n_ck == 2:
        return [Figure("checkpoint_norms", f"Per-layer {what} at both checkpoints",
                       _dumbbell_two(cmp, flagged),
                       f"Each row is one layer{part}: its {what} at the first checkpoint (grey) and the second "
                       "(blue), joined; the layers that changed most come first, flagged layers in red.",
                       "checkpoints", idx)]
    return [Figure("checkpoint_norms", f"Per-layer {what} across checkpoints", _heatmap_many(cmp, flagged),
                   f"Each row is a layer{part}, each column a checkpoint; colour is the log norm. Flagged layers "
                   "are in red; red cells hold NaN/Inf.", "checkpoints", idx),
            Figure("checkpoint_growth", "Norm growth across checkpoints", _growth_many(cmp, diagnosis, idx, flagged),
                   "Top: total norm and the flagged layers' norms per checkpoint. Bottom: median per-layer growth "
                   "against the previous checkpoint and (LoRA) the cosine similarity of consecutive updates.",
                   "checkpoints", idx)]


def _show(ax, img: np.ndarray, title: str) -> None:
    a = np.asarray(img, dtype=np.float32)
    ax.imshow(np.clip(a, 0, 1), cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


@figure_maker("checkpoints", order=61)
def onset_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """The artifact-onset timeline and the samples just before and at each onset."""
    info = diagnosis.details.get("samples")  # the samples check: the onset table (diffdiag.checks.samples)
    if not info or not info.get("presence"):
        return []
    steps = info["steps"]
    arts = sorted(info["presence"])
    idx = [i for i, f in enumerate(diagnosis.findings) if f.id == "artifact_onset"]
    onsets = info.get("onsets", [])
    chosen = info.get("pairs", {})
    pairs = [(o, *chosen.get(o.artifact, (info["images"].get(o.last_clean_step), info["images"].get(o.step))))
             for o in onsets][:3]
    rows = 1 + len(pairs)
    fig = plt.figure(figsize=(11, 1.2 + 0.35 * len(arts) + 3.0 * len(pairs)), dpi=100)
    gs = fig.add_gridspec(rows, 2, height_ratios=[0.6 + 0.35 * len(arts)] + [3.0] * len(pairs))
    ax = fig.add_subplot(gs[0, :])
    for r, a in enumerate(arts):
        pres = np.asarray(info["presence"][a], dtype=bool)
        ax.scatter(np.asarray(steps)[~pres], [r] * int((~pres).sum()), marker="o", facecolors="none",
                   edgecolors="#999", s=30)
        ax.scatter(np.asarray(steps)[pres], [r] * int(pres.sum()), marker="o", color="#d7191c", s=30)
    for o in onsets:
        r = arts.index(o.artifact)
        ax.axvline(o.step, color="#d7191c", lw=1, ls="--")
        ax.annotate(f"onset {o.artifact} @ {o.step}", (o.step, r), xytext=(4, 6), textcoords="offset points",
                    fontsize=8, color="#d7191c")
    ax.set_yticks(range(len(arts)))
    ax.set_yticklabels(arts, fontsize=8)
    ax.set_ylim(-0.7, len(arts) - 0.3)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title("Artifacts seen in the samples per step (filled = seen)")
    for r, (o, before, after) in enumerate(pairs, start=1):
        for c, (img, lab) in enumerate(((before, f"step {o.last_clean_step} (before)"),
                                        (after, f"step {o.step} ({o.artifact} appears)"))):
            axi = fig.add_subplot(gs[r, c])
            if img is not None:
                _show(axi, img.image, lab)
            else:
                axi.axis("off")
    fig.tight_layout()
    return [Figure("artifact_onset", "Artifact onset", fig,
                   "When each artifact is seen in the training samples; the dashed line is the first step from "
                   "which it stays. Below: the sample just before and at the onset.", "checkpoints", idx)]
