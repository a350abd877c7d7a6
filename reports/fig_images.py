"""Image figures: error heatmaps with anomaly boxes, and spectra / autocorrelations with the detected periods.

One figure per analysed image (at most ``settings.max_images``), linked to the
findings about that image.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from diffdiag.analyzers import pixel, spectral
from diffdiag.model import Diagnosis, ImageInput, RunData, Settings

from .figures import Figure, figure_maker

_COLORS = {"stripes": "#f2c94c", "hf_noise_patch": "#eb5757", "crop_offset": "#56ccf2",
           "tiling_period_doubling": "#bb6bd9", "periodic_pattern": "#6fcf97", "image_degenerate": "#c0392b"}


def _show(ax, a: np.ndarray, title: str) -> None:
    a = np.where(np.isfinite(a), a, 0)
    ax.imshow(np.clip(a, 0, 1), cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _box(ax, bbox, color: str, label: str | None = None) -> None:
    x0, y0, x1, y1 = bbox
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=color, lw=1.6))
    if label:
        ax.text(x0, y0 - 2, label, color=color, fontsize=7, va="bottom")


def _acf_panel(ax, g: np.ndarray, findings) -> None:
    """Whitened autocorrelation along y and x, with the detected periods marked."""
    for axis, color, name in ((0, "#2d6cdf", "y"), (1, "#eb5757", "x")):
        r = spectral.autocorr_1d(g, axis=axis, whiten=True)
        ax.plot(np.arange(len(r)), r, lw=0.9, color=color, label=f"along {name}")
        est = spectral.estimate_period(g, axis=axis)
        if est.significant and est.period:
            ax.axvline(est.period, color=color, ls="--", lw=0.8)
            ax.plot([est.period], [r[est.period]], "o", color=color, ms=4)
    for f in findings:
        dp = f.location.get("doubled_period_px")
        if dp:
            for v in dp:
                if v:
                    ax.axvline(v, color=_COLORS["tiling_period_doubling"], lw=1.2, alpha=0.7)
    ax.set_xlim(0, max(8, min(g.shape) // 2))
    ax.set_ylim(-0.5, 1.05)
    ax.set_xlabel("lag (px)", fontsize=8)
    ax.set_title("whitened autocorrelation (periods dashed)", fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    ax.tick_params(labelsize=7)


def _spectrum_panel(ax, err: np.ndarray, findings) -> None:
    """Column/row power spectra of the analysed map, with stripe periods marked."""
    for axis, color, name in ((1, "#eb5757", "along x (vertical stripes)"), (0, "#2d6cdf", "along y")):
        s = spectral.power_spectrum(err, axis=axis)
        n = err.shape[axis]
        freq = np.arange(len(s)) / n
        ax.semilogy(freq[1:], s[1:] + 1e-12, lw=0.8, color=color, label=name)
    for f in findings:
        if f.id == "stripes" and f.location.get("period_px"):
            color = "#eb5757" if f.location["axis"] == "vertical" else "#2d6cdf"
            for h in (1, 2, 3):
                fr = h / float(f.location["period_px"])
                if fr <= 0.5:
                    ax.axvline(fr, color=color, ls=":", lw=1.0)
    ax.set_xlabel("frequency (cycles / px)", fontsize=8)
    ax.set_title("power spectrum (stripe harmonics dotted)", fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    ax.tick_params(labelsize=7)


def _figure_for(item: ImageInput, idx: list[int], findings, settings: Settings, k: int) -> Figure:
    pair = item.reference is not None and item.reference.shape == item.image.shape
    ncols = 5 if pair else 3
    fig, axes = plt.subplots(1, ncols, figsize=(3.2 * ncols, 3.4), dpi=90)
    g = spectral.to_gray(item.image)
    g = np.where(np.isfinite(g), g, 0).astype(np.float32)
    if pair:
        _show(axes[0], item.reference, "reference")
        _show(axes[1], item.image, "output")
        hm = pixel.heatmap(item.image, item.reference, scale=settings.heatmap_scale)
        axes[2].imshow(hm, cmap="inferno", vmin=0, vmax=1)
        axes[2].set_title(f"|error| × {settings.heatmap_scale:g}", fontsize=8)
        axes[2].axis("off")
        box_ax = axes[2]
        for b in pixel.anomaly_boxes(pixel.error_map(item.image, item.reference))[:4]:
            _box(box_ax, b, "#56ccf2")
        err = g - spectral.to_gray(item.reference)
        _spectrum_panel(axes[3], np.where(np.isfinite(err), err, 0), findings)
        _acf_panel(axes[4], g, findings)
        axes[4].set_title("output: whitened autocorrelation", fontsize=8)
    else:
        _show(axes[0], item.image, "image")
        box_ax = axes[0]
        _acf_panel(axes[1], g, findings)
        _spectrum_panel(axes[2], g - g.mean(), findings)
    for f in findings:
        bbox = f.location.get("bbox")
        if bbox:
            _box(box_ax, bbox, _COLORS.get(f.id, "#ffffff"), f.id.replace("_", " "))
    fig.suptitle(item.path, fontsize=9)
    fig.tight_layout()
    ids = sorted({f.id for f in findings})
    cap = ("Reference, output, the error heatmap (scaled by --heatmap-scale) with anomaly boxes (blue) and "
           "finding boxes, the error's power spectra (stripe harmonics dotted) and the output's whitened "
           "autocorrelation (detected periods dashed, doubled tiling periods in purple)." if pair else
           "The image with finding boxes, its whitened autocorrelation with detected periods, and its spectra.")
    if ids:
        cap += " Findings: " + ", ".join(ids) + "."
    return Figure(f"image_{k:02d}", f"Image: {item.path}", fig, cap, "images", idx)


@figure_maker("images", order=40)
def image_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """One figure per ``--images`` input (at most ``settings.max_images``)."""
    out: list[Figure] = []
    for k, item in enumerate(run.images[: max(1, int(settings.max_images))]):
        names = {item.path}
        idx = [i for i, f in enumerate(diagnosis.findings)
               if f.location.get("image") in names and f.id in _COLORS]
        out.append(_figure_for(item, idx, [diagnosis.findings[i] for i in idx], settings, k))
    return out
