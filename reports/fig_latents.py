"""Latent figures: per-file channel statistics (pre vs post) and the profile of periodic channels."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from diffdiag.model import Diagnosis, RunData, Settings

from .figures import Figure, figure_maker

_IDS = ("latent_batch_shift", "latent_stats_drift", "latent_periodicity")


def _label(lf) -> str:
    return f"{lf.step}" if lf.step is not None else Path(lf.path).stem[-10:]


@figure_maker("latents", order=40)
def latent_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """Channel mean ± std per file (pre/latents solid, post dashed), flagged files marked;
    and, for each periodic channel found, its mean band profile."""
    if not run.latents:
        return []
    from diffdiag.analyzers.latents import channel_stats

    files = run.latents[:200]
    keys = [k for k in ("latents", "pre", "post") if any(k in lf.arrays for lf in files)]
    nch = max(lf.arrays[k].shape[1] for lf in files for k in keys if k in lf.arrays)
    stats = {k: [(i, channel_stats(lf.arrays[k])) for i, lf in enumerate(files) if k in lf.arrays] for k in keys}
    flagged: dict[str, set[str]] = {}
    used = []
    for i, f in enumerate(diagnosis.findings):
        if f.id in _IDS:
            used.append(i)
            for p in f.location.get("files") or []:
                flagged.setdefault(p, set()).add(f.id)
    ncols = min(nch, 4)
    nrows = int(np.ceil(nch / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols + 1, 2.6 * nrows + 0.6), dpi=100,
                             squeeze=False, sharex=True)
    x = np.arange(len(files))
    styles = {"latents": ("-", "#2d6cdf"), "pre": ("-", "#2d6cdf"), "post": ("--", "#eb5757")}
    for c in range(nch):
        ax = axes[c // ncols, c % ncols]
        for k in keys:
            pts = [(i, s["mean"][c], s["std"][c]) for i, s in stats[k] if c < len(s["mean"])]
            if not pts:
                continue
            xi, mu, sd = (np.array(v) for v in zip(*pts))
            ls, col = styles[k]
            ax.plot(xi, mu, ls=ls, color=col, lw=1.2, marker="o", ms=3, label=k if c == 0 else None)
            ax.fill_between(xi, mu - sd, mu + sd, color=col, alpha=0.12)
        for i, lf in enumerate(files):
            if lf.path in flagged:
                ax.axvspan(i - 0.4, i + 0.4, color="#f2c94c", alpha=0.35, lw=0)
        ax.set_title(f"channel {c}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xticks(x[:: max(1, len(x) // 8)])
        ax.set_xticklabels([_label(files[i]) for i in x[:: max(1, len(x) // 8)]], fontsize=7, rotation=30)
        ax.set_xlabel("file (step)")
    for j in range(nch, nrows * ncols):
        axes[j // ncols, j % ncols].axis("off")
    if keys:
        fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    figs = [Figure("latent_channels", "Latent channel statistics", fig,
                   "Per-channel mean ± standard deviation of each latent file: the UNet input (or plain "
                   "latents, solid) and its prediction (dashed). Files with a batch shift, drift or "
                   "periodicity finding are shaded.", "latents", used)]
    periodic = [(i, f) for i, f in enumerate(diagnosis.findings) if f.id == "latent_periodicity"][:4]
    if periodic:
        by_path = {lf.path: lf for lf in run.latents}
        fig, axes = plt.subplots(len(periodic), 1, figsize=(9, 2.3 * len(periodic)), dpi=100, squeeze=False)
        for ax, (i, f) in zip(axes[:, 0], periodic):
            lf = by_path.get((f.location.get("files") or [None])[0])
            if lf is None:
                continue
            key = f.location.get("array") or ("latents" if "latents" in lf.arrays else
                                              ("pre" if "pre" in lf.arrays else "post"))
            arr = lf.arrays["post"] - lf.arrays["pre"] if key == "post-pre" else lf.arrays[key]
            a = np.nan_to_num(arr[:, f.location["channel"]])
            prof = a.mean(axis=(0, 1)) if f.location["axis"] == "vertical" else a.mean(axis=(0, 2))
            ax.plot(prof, color="#2d6cdf", lw=1.2, marker=".")
            p = int(f.location["period"])
            for m in range(0, len(prof), p):
                ax.axvline(m, color="#eb5757", lw=0.6, alpha=0.5)
            ax.set_title(f"{Path(lf.path).name} ({key}): channel {f.location['channel']}, period {p} cells "
                         f"along {'x' if f.location['axis'] == 'vertical' else 'y'}", fontsize=9)
            ax.set_xlabel("latent cell")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        figs.append(Figure("latent_periodicity", "Periodic latent channels", fig,
                           "Mean band profile of each periodic channel; red lines every detected period.",
                           "latents", [i for i, _ in periodic]))
    return figs
