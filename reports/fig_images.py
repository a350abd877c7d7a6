"""Image figures: each analysed image with its findings drawn on it, and its spectra / autocorrelation.

One figure per ``--images`` input (at most ``settings.max_images``) and per
logged sample that a finding is about. The findings are drawn where they are:
boxes (``bbox``) with their title, the stripe bands' period marks, the tile
grid of a periodic or doubled tiling; the error heatmap of a pair carries the
anomaly boxes too.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from diffdiag.analyzers import pixel, spectral
from diffdiag.findings.words import display_path, finding_title
from diffdiag.model import Diagnosis, ImageInput, RunData, Settings

from .figures import Figure, figure_maker

#: finding id -> colour of its marks (the finding ids drawn on images)
COLORS = {"stripes": "#f2c94c", "hf_noise_patch": "#eb5757", "crop_offset": "#56ccf2",
          "tiling_period_doubling": "#bb6bd9", "periodic_pattern": "#6fcf97", "image_degenerate": "#ff5a4f"}
#: at most this many period marks are drawn per stripe band
MAX_MARKS = 40


def _show(ax, a: np.ndarray, title: str) -> None:
    a = np.where(np.isfinite(a), a, 0)
    ax.imshow(np.clip(a, 0, 1), cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _label(ax, x: float, y: float, text: str, color: str, h: int) -> None:
    inside = y < 0.08 * h  # no room above the box: write inside it
    ax.text(x, y + (2 if inside else -2), text, color="black", fontsize=7, va="top" if inside else "bottom",
            bbox={"boxstyle": "round,pad=0.15", "fc": color, "ec": "none", "alpha": 0.85})


def _box(ax, bbox, color: str, label: str | None, h: int) -> None:
    x0, y0, x1, y1 = (float(v) for v in bbox)
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=color, lw=1.8))
    if label:
        _label(ax, x0 - 0.5, y0 - 0.5, label, color, h)


def _stripe_marks(ax, f, color: str) -> None:
    """Lines every period across the stripe band (vertical stripes: lines at x = x0 + k·period)."""
    bbox, period = f.location.get("bbox"), f.location.get("period_px")
    if not bbox or not period:
        return
    x0, y0, x1, y1 = (float(v) for v in bbox)
    p = float(period)
    if f.location.get("axis") == "vertical":
        for x in np.arange(x0, x1, p)[:MAX_MARKS]:
            ax.plot([x - 0.5, x - 0.5], [y0 - 0.5, y1 - 0.5], color=color, lw=0.7, ls="--", alpha=0.9)
    else:
        for y in np.arange(y0, y1, p)[:MAX_MARKS]:
            ax.plot([x0 - 0.5, x1 - 0.5], [y - 0.5, y - 0.5], color=color, lw=0.7, ls="--", alpha=0.9)


def _tile_grid(ax, period, shape, color: str) -> None:
    """The tile grid of a ``[py, px]`` period (either may be None)."""
    if not isinstance(period, (list, tuple)) or len(period) != 2:
        return
    h, w = shape[:2]
    py, px = period
    if px:
        for x in np.arange(float(px), w, float(px))[:MAX_MARKS]:
            ax.axvline(x - 0.5, color=color, lw=0.8, ls=":", alpha=0.9)
    if py:
        for y in np.arange(float(py), h, float(py))[:MAX_MARKS]:
            ax.axhline(y - 0.5, color=color, lw=0.8, ls=":", alpha=0.9)


def draw_findings(ax, findings, shape) -> None:
    """Draw the findings about one image on ``ax`` (the image shown with ``imshow``)."""
    h = shape[0]
    for f in findings:
        color = COLORS.get(f.id, "#ffffff")
        title = finding_title(f.id)
        if f.id == "stripes":
            _stripe_marks(ax, f, color)
        if f.id == "periodic_pattern":
            _tile_grid(ax, f.location.get("period_px"), shape, color)
        if f.id == "tiling_period_doubling":
            _tile_grid(ax, f.location.get("doubled_period_px"), shape, color)
        bbox = f.location.get("bbox")
        if bbox:
            _box(ax, bbox, color, title, h)
        elif f.id in ("periodic_pattern", "tiling_period_doubling", "image_degenerate", "crop_offset"):
            extra = f" ({str(f.location.get('problem', '')).replace('_', '-')})" if f.id == "image_degenerate" else ""
            _label(ax, 0, 0, title + extra, color, h)


def annotate(image: np.ndarray, findings, *, min_side: int = 256) -> np.ndarray:
    """The image with the findings drawn on it, as a picture to log into a tracker.

    Boxes (``bbox``) in the finding's colour with its title, stripe period marks
    inside the box. Small images are enlarged (nearest neighbour, an integer
    factor) until their short side reaches ``min_side`` so the marks stay readable.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C), C in {1, 3}
        Values in [0, 1] (non-finite values are drawn black).
    findings : sequence of Finding
        Findings about this image (locations in its pixels).

    Returns
    -------
    ndarray of float32, shape (k·H, k·W, 3)
        RGB in [0, 1].
    """
    from PIL import Image, ImageDraw

    a = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    k = max(1, int(np.ceil(min_side / max(1, min(a.shape[:2])))))
    pil = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)).resize(
        (a.shape[1] * k, a.shape[0] * k), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    for f in findings:
        bbox = f.location.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            continue
        color = COLORS.get(f.id, "#ffffff")
        x0, y0, x1, y1 = (float(v) * k for v in bbox)
        period = f.location.get("period_px") if f.id == "stripes" else None
        if isinstance(period, (int, float)) and period > 0:
            p = float(period) * k
            if f.location.get("axis") == "vertical":
                for x in np.arange(x0, x1, p)[:MAX_MARKS]:
                    draw.line([(x, y0), (x, y1 - 1)], fill=color, width=1)
            else:
                for y in np.arange(y0, y1, p)[:MAX_MARKS]:
                    draw.line([(x0, y), (x1 - 1, y)], fill=color, width=1)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=max(2, k // 2))
        title = finding_title(f.id)
        ty = y0 - 12 if y0 >= 12 else y0 + 2
        tw = draw.textlength(title)
        draw.rectangle([x0, ty, x0 + tw + 4, ty + 11], fill=color)
        draw.text((x0 + 2, ty), title, fill="black")
    return np.asarray(pil, dtype=np.float32) / 255.0


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
                    ax.axvline(v, color=COLORS["tiling_period_doubling"], lw=1.2, alpha=0.7)
    ax.set_xlim(0, max(8, min(g.shape) // 2))
    ax.set_ylim(-0.5, 1.05)
    ax.set_xlabel("lag (px)", fontsize=8)
    ax.set_title("whitened autocorrelation (periods dashed)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.tick_params(labelsize=7)


def _spectrum_panel(ax, err: np.ndarray, findings, what: str) -> None:
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
    ax.set_title(f"{what} power spectrum (stripe harmonics dotted)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.tick_params(labelsize=7)


def _name(item: ImageInput) -> str:
    name = display_path(item.path)
    return f"{name} (step {item.step})" if item.step is not None and f"{item.step}" not in name else name


def _figure_for(item: ImageInput, idx: list[int], findings, settings: Settings, k: int) -> Figure:
    pair = item.reference is not None and item.reference.shape == item.image.shape
    g = spectral.to_gray(item.image)
    g = np.where(np.isfinite(g), g, 0).astype(np.float32)
    if pair:
        fig = plt.figure(figsize=(11, 7.2), dpi=100)
        gs = fig.add_gridspec(2, 6, height_ratios=[1.25, 1.0])
        top = [fig.add_subplot(gs[0, 2 * c:2 * c + 2]) for c in range(3)]
        bottom = [fig.add_subplot(gs[1, 0:3]), fig.add_subplot(gs[1, 3:6])]
        _show(top[0], item.reference, f"reference: {display_path(item.reference_path or 'reference')}")
        _show(top[1], item.image, "output, with the findings")
        draw_findings(top[1], findings, item.image.shape)
        hm = pixel.heatmap(item.image, item.reference, scale=settings.heatmap_scale)
        top[2].imshow(hm, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        top[2].set_title(f"|error| × {settings.heatmap_scale:g}, anomaly boxes (blue)", fontsize=9)
        top[2].axis("off")
        for b in pixel.anomaly_boxes(pixel.error_map(item.image, item.reference))[:4]:
            _box(top[2], b, "#56ccf2", None, item.image.shape[0])
        draw_findings(top[2], [f for f in findings if f.location.get("bbox")], item.image.shape)
        err = g - spectral.to_gray(item.reference)
        _spectrum_panel(bottom[0], np.where(np.isfinite(err), err, 0), findings, "error")
        _acf_panel(bottom[1], g, findings)
        bottom[1].set_title("output: whitened autocorrelation (periods dashed)", fontsize=9)
        cap = ("The reference; the output with the findings drawn on it (boxes, stripe period marks, tile grid); "
               "the error heatmap (scaled by --heatmap-scale) with anomaly boxes (blue); the error's power spectra "
               "(stripe harmonics dotted) and the output's whitened autocorrelation (detected periods dashed, "
               "doubled tiling periods in purple).")
    else:
        fig = plt.figure(figsize=(11, 4.4), dpi=100)
        gs = fig.add_gridspec(1, 3, width_ratios=[1.15, 1, 1])
        axes = [fig.add_subplot(gs[0, c]) for c in range(3)]
        _show(axes[0], item.image, "image, with the findings")
        draw_findings(axes[0], findings, item.image.shape)
        _acf_panel(axes[1], g, findings)
        _spectrum_panel(axes[2], g - g.mean(), findings, "image")
        cap = ("The image with the findings drawn on it (boxes, stripe period marks, tile grid), its whitened "
               "autocorrelation with the detected periods and its power spectra.")
    fig.tight_layout()
    titles = sorted({finding_title(f.id) for f in findings})
    if titles:
        cap += " Drawn: " + ", ".join(titles) + "."
    return Figure(f"image_{k:02d}", f"Image {_name(item)}", fig, cap, "images", idx)


def _about(item: ImageInput, diagnosis: Diagnosis) -> list[int]:
    return [i for i, f in enumerate(diagnosis.findings) if f.location.get("image") == item.path and f.id in COLORS
            and (item.step is None or f.evidence.get("step", item.step) == item.step)]


@figure_maker("images", order=40)
def image_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """One figure per ``--images`` input (at most ``settings.max_images``) and per sample a finding is about."""
    n = max(1, int(settings.max_images))
    items = [(item, _about(item, diagnosis)) for item in run.images[:n]]
    samples = [(s, _about(s, diagnosis)) for s in run.samples]
    items += [(s, idx) for s, idx in samples if idx][:n]
    return [_figure_for(item, idx, [diagnosis.findings[i] for i in idx], settings, k)
            for k, (item, idx) in enumerate(items)]
