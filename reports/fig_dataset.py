"""Dataset figures: brightness/contrast distribution with outliers, outlier and tiled-source grids,
mask problems overlaid on their images."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from diffdiag.model import Diagnosis, RunData, Settings

from .figures import Figure, figure_maker

_THUMB = 160


def _thumb(path: Path) -> np.ndarray | None:
    """An RGB uint8 thumbnail, decoded by diffdiag's one decoder (None when it cannot be read)."""
    from PIL import Image

    from diffdiag.errors import InputError
    from diffdiag.sources.decode import decode_image

    try:
        a = decode_image(path)
    except InputError:  # a thumbnail is optional
        return None
    a = np.nan_to_num(np.clip(a, 0.0, 1.0))
    im = Image.fromarray((a * 255 + 0.5).astype(np.uint8))
    im.thumbnail((_THUMB, _THUMB))
    return np.asarray(im.convert("RGB"))


def _mask_overlay(img_path: Path, mask_path: Path | None) -> np.ndarray | None:
    from PIL import Image

    from diffdiag.errors import InputError
    from diffdiag.sources.decode import decode_image

    img = _thumb(img_path)
    if img is None or mask_path is None:
        return img
    try:
        m = decode_image(mask_path, raw=True)
    except InputError:
        return img
    if m.ndim == 3 and m.shape[2] in (2, 4):
        m = m[..., :-1]  # alpha is no label
    m = (m != 0) if m.ndim == 2 else (m != 0).any(axis=2)
    mk = np.asarray(Image.fromarray(m).resize((img.shape[1], img.shape[0]), Image.NEAREST))
    out = img.astype(np.float32)
    out[mk] = 0.55 * out[mk] + 0.45 * np.array([235, 87, 87], np.float32)
    return out.astype(np.uint8)


def _grid(items: list[tuple[str, np.ndarray | None]], title: str, ncols: int = 6):
    n = len(items)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.1 * ncols, 2.3 * nrows + 0.4), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, img) in zip(axes.ravel(), items):
        if img is not None:
            ax.imshow(img)
        else:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@figure_maker("dataset", order=50)
def dataset_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """Brightness/contrast scatter with the skewed groups, their thumbnails and tiled sources, mask problems."""
    scan = diagnosis.details.get("dataset")
    if scan is None or not len(scan.files):
        return []
    root = Path(scan.root)
    limit = max(4, int(settings.max_images))
    figs: list[Figure] = []
    skew = [(i, f) for i, f in enumerate(diagnosis.findings)
            if f.id in ("dataset_brightness_skew", "dataset_contrast_skew")]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    ax.scatter(scan.mean, scan.std, s=8, color="#9ab", alpha=0.7, label=f"{len(scan.files)} images")
    index = {f: k for k, f in enumerate(scan.files)}
    for (i, f), col in zip(skew, ("#eb5757", "#9b51e0")):
        idx = [index[p] for p in f.location["files"] if p in index]
        ax.scatter(scan.mean[idx], scan.std[idx], s=24, color=col, label=f.id.replace("dataset_", ""))
    ax.set_xlabel("mean luminance")
    ax.set_ylabel("RMS contrast (std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs.append(Figure("dataset_brightness", "Dataset brightness and contrast", fig,
                       "Each dot is one training image; the separated groups of the brightness (white point) and "
                       "contrast (black/white point) tests are coloured.", "dataset", [i for i, _ in skew]))
    for i, f in skew:
        files = f.location["files"][:limit]
        items = [(Path(p).name[:22], _thumb(root / p)) for p in files]
        figs.append(Figure(f"{f.id}_grid", f"Separated group: {f.id.replace('dataset_', '').replace('_', ' ')}",
                           _grid(items, f.message[:110] + ("…" if len(f.message) > 110 else "")),
                           "The images of the group the test separates from the rest (most extreme first).", "dataset", [i]))
    tiled = [(i, f) for i, f in enumerate(diagnosis.findings)
             if f.id == "dataset_tiled_source" and f.location.get("file")]
    tiled.sort(key=lambda t: (t[1].severity != "warning", -t[1].score))
    if tiled:
        items = []
        for _, f in tiled[:limit]:
            per = "x".join(str(p) if p else "–" for p in f.location["period_px"])
            tag = "seamless" if f.evidence.get("seamless") else "texture"
            items.append((f"{Path(f.location['file']).name[:16]} {per}px {tag}", _thumb(root / f.location["file"])))
        figs.append(Figure("dataset_tiled", "Tiled sources", _grid(items, "Images with a repeating tile"),
                           "Seamless repeats (warning) teach the model the tile; natural periodic textures "
                           "are listed for information. Period [y x] in pixels.", "dataset",
                           [i for i, _ in tiled[:limit]]))
    masks = [(i, f) for i, f in enumerate(diagnosis.findings) if f.id == "dataset_invalid_mask"]
    if masks and scan.masks_dir is not None:
        from diffdiag.sources.dataset import index_masks

        mindex = index_masks(Path(scan.masks_dir))
        items = []
        for _, f in masks[:limit]:
            p = Path(f.location["file"])
            items.append((f"{p.name[:18]}: {f.location['problem']}",
                          _mask_overlay(root / p, mindex.get(p.stem))))
        figs.append(Figure("dataset_masks", "Mask problems", _grid(items, "Invalid masks (mask in red)"),
                           "Each invalid mask drawn over its image (resized to the image when sizes differ).",
                           "dataset", [i for i, _ in masks[:limit]]))
    return figs
