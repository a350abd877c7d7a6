"""Loss figures: raw loss with spikes marked, raw vs smoothed vs EMA, plateaus shaded."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from diffdiag.analyzers.robust import rolling_median
from diffdiag.model import Diagnosis, RunData, Series, Settings

from .figures import Figure, figure_maker

_SPAN_IDS = {"loss_plateau": "#f2c94c", "ema_divergence": "#bb6bd9"}
_POINT_IDS = {"loss_spike": ("v", "#eb5757"), "loss_divergence": ("D", "#f2994a"),
              "grad_norm_spike": ("^", "#9b51e0")}


def _finite(s: Series) -> tuple[np.ndarray, np.ndarray]:
    m = np.isfinite(s.values)
    return s.steps[m], s.values[m]


def _decimate_minmax(x: np.ndarray, y: np.ndarray, max_points: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Keep each bucket's minimum and maximum (in step order), so decimation never hides a spike."""
    n = len(x)
    if n <= max_points:
        return x, y
    b = int(np.ceil(n / (max_points // 2)))
    k = n // b
    yy = y[: k * b].reshape(k, b)
    lo = np.argmin(yy, axis=1) + np.arange(k) * b
    hi = np.argmax(yy, axis=1) + np.arange(k) * b
    idx = np.sort(np.concatenate([lo, hi, np.arange(k * b, n)]))
    return x[idx], y[idx]


def _decimate(x: np.ndarray, y: np.ndarray, max_points: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= max_points:
        return x, y
    stride = int(np.ceil(len(x) / max_points))
    return x[::stride], y[::stride]


@figure_maker("loss", order=10)
def loss_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """The loss overview (raw, smoothed, EMA; findings marked) and the LR/grad-norm panel."""
    log = run.log
    if log is None or log.loss is None:
        return []
    loss = log.loss
    figs: list[Figure] = []
    fig, ax = plt.subplots(figsize=(12.5, 4.6), dpi=100)
    x, y = _finite(loss)
    positive = bool(len(y)) and bool(np.all(y > 0))
    xd, yd = _decimate_minmax(x, y)
    ax.plot(xd, yd, lw=0.4, color="#b8c4cc", alpha=0.9, label=f"raw ({loss.key})", zorder=1)
    w = 0
    if len(y) > 20:
        # a robust smoothed level: rolling median over ~2% of the run (at least 25 steps), on log values
        w = int(np.clip(len(y) // 50, 25, 5001))
        yl = np.log(y) if positive else y
        lev = rolling_median(yl, w)
        lev = np.exp(lev) if positive else lev
        xs, ls_ = _decimate(x, lev)
        ax.plot(xs, ls_, lw=1.8, color="#2d6cdf", label=f"rolling median ({w} steps)", zorder=3)
    if log.ema is not None:
        ex, ey = _finite(log.ema)
        ex, ey = _decimate(ex, ey)
        ax.plot(ex, ey, lw=1.3, color="#bb6bd9", ls="--", label=f"logged smoothed/EMA ({log.ema.key})", zorder=4)
    used: list[int] = []
    labelled: set[str] = set()
    spikes: list[tuple[float, int, float]] = []
    for i, f in enumerate(diagnosis.findings):
        loc = f.location
        if f.id in _SPAN_IDS and "start_step" in loc:
            ax.axvspan(loc["start_step"], loc["end_step"], color=_SPAN_IDS[f.id], alpha=0.22, zorder=0,
                       label=None if f.id in labelled else f.id.replace("_", " "))
            labelled.add(f.id)
            used.append(i)
        elif f.id in _POINT_IDS and "step" in loc and loc.get("key", loss.key) in (loss.key, log.ema_key):
            marker, color = _POINT_IDS[f.id]
            step = loc["step"]
            j = np.searchsorted(x, step)
            yv = y[min(j, len(y) - 1)] if len(y) else 0
            if f.id == "loss_spike":
                yv = float(f.evidence.get("value", yv))
                spikes.append((float(f.evidence.get("z", 0.0)), int(step), yv))
            ax.plot([step], [yv], marker=marker, color=color, ls="none", ms=8, mec="white", mew=0.6, zorder=5,
                    label=None if f.id in labelled else f.id.replace("_", " "))
            if f.id == "loss_divergence":
                ax.axvline(step, color=color, lw=1.0, ls=":", zorder=2)
            labelled.add(f.id)
            used.append(i)
        elif f.id == "loss_nonfinite":
            for s in (loc.get("steps") or [loc.get("step")])[:200]:
                if s is not None:
                    ax.axvline(s, color="#c0392b", lw=0.8, alpha=0.7,
                               label=None if f.id in labelled else "non-finite loss")
                    labelled.add(f.id)
            used.append(i)
    # label the strongest spikes with their steps (at most 12, so the labels stay readable)
    for _, step, yv in sorted(spikes, reverse=True)[:12]:
        ax.annotate(str(step), (step, yv), xytext=(0, 7), textcoords="offset points", ha="center",
                    fontsize=7, color="#b03a2e", zorder=6)
    if spikes and positive and len(y):
        lo = float(np.percentile(y, 0.5))
        hi = max(float(np.max(y)), max(v for _, _, v in spikes))
        ax.set_ylim(lo / 1.3, hi * 1.8)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    figs.append(Figure("loss", "Training loss", fig,
                       f"Raw loss (grey), its robust level (blue: rolling median over {w} steps) and the logged "
                       "smoothed/EMA loss (purple, dashed); spikes are marked with their steps, plateaus (yellow) "
                       "and EMA breaks (violet) shaded" + (", log scale." if positive else "."), "loss", used))
    extra = [s for s in (log.lr, log.grad_norm) if s is not None]
    if extra:
        fig, axes = plt.subplots(len(extra), 1, figsize=(11, 2.4 * len(extra)), dpi=100, squeeze=False)
        idx = []
        for ax, s in zip(axes[:, 0], extra):
            sx, sy = _finite(s)
            sx, sy = _decimate(sx, sy)
            ax.plot(sx, sy, lw=0.8, color="#27ae60")
            ax.set_ylabel(s.key)
            ax.grid(alpha=0.3)
            for i, f in enumerate(diagnosis.findings):
                if f.id == "grad_norm_spike" and f.location.get("key") == s.key:
                    ax.axvline(f.location["step"], color="#9b51e0", lw=0.8)
                    idx.append(i)
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        figs.append(Figure("lr_grad", "Learning rate and gradient norm", fig,
                           "Learning rate and gradient norm as logged; gradient-norm spikes are marked.",
                           "loss", idx))
    return figs
