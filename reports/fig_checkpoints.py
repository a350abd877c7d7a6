"""Checkpoint figures: per-layer norm heatmap across checkpoints, growth curves, artifact-onset timeline."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from diffdiag.model import Diagnosis, RunData, Settings

from .figures import Figure, figure_maker

_CK_IDS = ("checkpoint_nonfinite", "checkpoint_norm_explosion", "checkpoint_norm_collapse")
MAX_ROWS = 60


def _short(name: str, n: int = 48) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def _xlabels(cmp) -> list[str]:
    return [str(s) if s is not None else _short(n, 14) for n, s in zip(cmp.names, cmp.steps)]


@figure_maker("checkpoints", order=60)
def checkpoint_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """The norm heatmap and growth curves (from ``diagnosis.details["checkpoints"]``, the comparison)."""
    cmp = diagnosis.details.get("checkpoints")
    if cmp is None or not cmp.names:
        return []
    idx = [i for i, f in enumerate(diagnosis.findings) if f.id in _CK_IDS]
    flagged: set[str] = set()
    for i in idx:
        flagged.update(diagnosis.findings[i].location.get("modules", []))
    figs: list[Figure] = []
    fro = cmp.fro
    n_ck, n_mod = fro.shape
    if n_mod:
        change = np.nan_to_num(cmp.change, nan=0.0).max(axis=0) if n_ck > 1 else np.nan_to_num(fro[0])
        order = sorted(range(n_mod), key=lambda j: (cmp.modules[j] not in flagged, -change[j]))[:MAX_ROWS]
        order.sort()
        sub = fro[:, order].T
        with np.errstate(divide="ignore", invalid="ignore"):
            logv = np.where(sub > 0, np.log10(sub), np.nan)
        fig, ax = plt.subplots(figsize=(min(4 + 0.45 * n_ck, 16), min(2 + 0.18 * len(order), 13)), dpi=100)
        finite = logv[np.isfinite(logv)]
        vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0, 1))
        im = ax.imshow(logv, aspect="auto", cmap="viridis", vmin=vmin, vmax=max(vmax, vmin + 1e-6),
                       interpolation="nearest")
        for k, mods in cmp.nonfinite.items():
            for r, j in enumerate(order):
                if cmp.modules[j] in mods:
                    ax.add_patch(plt.Rectangle((k - 0.5, r - 0.5), 1, 1, color="#d7191c"))
        ax.set_xticks(range(n_ck))
        ax.set_xticklabels(_xlabels(cmp), rotation=60, fontsize=7)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([_short(cmp.modules[j]) for j in order], fontsize=6)
        for lab, j in zip(ax.get_yticklabels(), order):
            if cmp.modules[j] in flagged:
                lab.set_color("#d7191c")
                lab.set_fontweight("bold")
        ax.set_xlabel("checkpoint (step)")
        what = "‖ΔW‖_F" if cmp.kind == "lora" else "‖W‖_F"
        fig.colorbar(im, ax=ax, label=f"log10 {what}", fraction=0.05, pad=0.02)
        ax.set_title(f"Per-layer {what} across checkpoints"
                     + (f" ({len(order)} of {n_mod} layers: flagged + largest change)" if n_mod > len(order) else ""))
        fig.tight_layout()
        figs.append(Figure("checkpoint_norms", "Per-layer norms across checkpoints", fig,
                           "Each row is a layer, each column a checkpoint; colour is the log norm of the layer's "
                           "update. Flagged layers are in red; red cells hold NaN/Inf.", "checkpoints", idx))
    # growth curves
    x = np.array([s if s is not None else i for i, s in enumerate(cmp.steps)], dtype=float) \
        if all(s is not None for s in cmp.steps) else np.arange(n_ck, dtype=float)
    fig, axes = plt.subplots(2, 1, figsize=(11, 6), dpi=100, sharex=True)
    ax = axes[0]
    ax.plot(x, cmp.totals, "-o", color="#2d6cdf", lw=1.6, ms=4, label="all layers (total)")
    for name in sorted(flagged)[:8]:
        if name in cmp.modules:
            j = cmp.modules.index(name)
            ax.plot(x, fro[:, j], "-", lw=1, alpha=0.8, label=_short(name, 40))
    for i in idx:
        f = diagnosis.findings[i]
        k = cmp.names.index(f.location["checkpoint"]) if f.location.get("checkpoint") in cmp.names else None
        if k is not None:
            color = {"checkpoint_nonfinite": "#d7191c", "checkpoint_norm_explosion": "#fdae61",
                     "checkpoint_norm_collapse": "#8e44ad"}[f.id]
            ax.axvline(x[k], color=color, lw=1.2, ls="--")
    finite = cmp.totals[np.isfinite(cmp.totals) & (cmp.totals > 0)]
    if finite.size and finite.max() / finite.min() > 20:
        ax.set_yscale("log")
    ax.set_ylabel("Frobenius norm")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Norm growth across checkpoints (dashed: flagged checkpoints)")
    ax = axes[1]
    if n_ck > 1:
        with np.errstate(all="ignore"):
            g = np.nanmedian(cmp.growth()[1:], axis=1) if np.any(np.isfinite(cmp.growth()[1:])) else None
        if g is not None:
            ax.plot(x[1:], g, "-o", ms=3, color="#27ae60", label="median layer growth (×, vs previous)")
        if cmp.kind == "lora" and np.any(np.isfinite(cmp.cos_prev[1:])):
            with np.errstate(all="ignore"):
                ax.plot(x[1:], np.nanmedian(cmp.cos_prev[1:], axis=1), "-s", ms=3, color="#e67e22",
                        label="median cosine(ΔW, previous ΔW)")
        ax.axhline(1.0, color="#999", lw=0.8)
    ax.set_xlabel("step" if all(s is not None for s in cmp.steps) else "checkpoint")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    figs.append(Figure("checkpoint_growth", "Norm growth across checkpoints", fig,
                       "Top: total update norm and the flagged layers' norms per checkpoint. Bottom: median "
                       "per-layer growth against the previous checkpoint and (LoRA) the cosine similarity of "
                       "consecutive updates.", "checkpoints", idx))
    return figs


def _show(ax, img: np.ndarray, title: str) -> None:
    a = np.asarray(img, dtype=np.float32)
    ax.imshow(np.clip(a, 0, 1), cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


@figure_maker("checkpoints", order=61)
def onset_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """The artifact-onset timeline and the samples just before and at each onset."""
    info = diagnosis.details.get("onset")
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
