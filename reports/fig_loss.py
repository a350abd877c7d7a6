"""Loss figures: raw loss with spikes marked, raw vs smoothed vs EMA, plateaus shaded."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from diffdiag.model import Diagnosis, RunData, Series, Settings

from .figures import Figure, figure_maker

_SPAN_IDS = {"loss_plateau": "#f2c94c", "ema_divergence": "#bb6bd9"}
_POINT_IDS = {"loss_spike": ("v", "#eb5757"), "loss_divergence": ("D", "#f2994a"),
              "grad_norm_spike": ("^", "#9b51e0")}


def _finite(s: Series) -> tuple[np.ndarray, np.ndarray]:
    m = np.isfinite(s.values)
    return s.steps[m], s.values[m]


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
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=100)
    x, y = _finite(loss)
    positive = bool(len(y)) and bool(np.all(y > 0))
    xd, yd = _decimate(x, y)
    ax.plot(xd, yd, lw=0.5, color="#9ab", alpha=0.8, label=f"raw ({loss.key})")
    if len(y) > 20:
        w = max(5, len(y) // 200)
        kernel = np.ones(w) / w
        sm = np.convolve(y, kernel, mode="valid")
        xs, sms = _decimate(x[w // 2: w // 2 + len(sm)], sm)
        ax.plot(xs, sms, lw=1.4, color="#2d6cdf", label=f"rolling mean ({w} steps)")
    if log.ema is not None:
        ex, ey = _finite(log.ema)
        ex, ey = _decimate(ex, ey)
        ax.plot(ex, ey, lw=1.4, color="#bb6bd9", label=f"logged smoothed/EMA ({log.ema.key})")
    used: list[int] = []
    labelled: set[str] = set()
    for i, f in enumerate(diagnosis.findings):
        loc = f.location
        if f.id in _SPAN_IDS and "start_step" in loc:
            ax.axvspan(loc["start_step"], loc["end_step"], color=_SPAN_IDS[f.id], alpha=0.25,
                       label=None if f.id in labelled else f.id.replace("_", " "))
            labelled.add(f.id)
            used.append(i)
        elif f.id in _POINT_IDS and "step" in loc and loc.get("key", loss.key) in (loss.key, log.ema_key):
            marker, color = _POINT_IDS[f.id]
            step = loc["step"]
            j = np.searchsorted(x, step)
            yv = y[min(j, len(y) - 1)] if len(y) else 0
            ax.plot([step], [yv], marker=marker, color=color, ls="none", ms=7,
                    label=None if f.id in labelled else f.id.replace("_", " "))
            labelled.add(f.id)
            used.append(i)
        elif f.id == "loss_nonfinite":
            for s in (loc.get("steps") or [loc.get("step")])[:200]:
                if s is not None:
                    ax.axvline(s, color="#c0392b", lw=0.8, alpha=0.7,
                               label=None if f.id in labelled else "non-finite loss")
                    labelled.add(f.id)
            used.append(i)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{run.name}: training loss")
    fig.tight_layout()
    figs.append(Figure("loss", "Training loss", fig,
                       "Raw loss (grey), its rolling mean (blue) and the logged smoothed/EMA loss (purple); "
                       "spikes are marked, plateaus and EMA breaks shaded.", "loss", used))
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
