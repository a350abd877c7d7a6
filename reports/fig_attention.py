"""Attention figure: the cross-attention maps of the layers with an ``attention_collapse`` finding.

One row per such layer (its latest capture, at most :data:`MAX_LAYERS` layers),
one column per conditioning token, each map drawn from 0 to its own maximum (a
flat map is one even colour); the collapsed tokens are framed in red and named
(``point``: the attention sits on one cell; ``uniform``: it is spread flat).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from diffdiag.model import Diagnosis, RunData, Settings

from .figures import Figure, figure_maker

MAX_LAYERS = 6
MAX_TOKENS = 8


def _latest(run: RunData) -> dict[str, tuple[int | None, np.ndarray]]:
    """Layer -> (step, maps (T, H, W)) of its latest capture."""
    out: dict[str, tuple[int | None, np.ndarray]] = {}
    for cap in run.attention or []:
        maps = np.asarray(cap.get("maps"))
        if maps.ndim != 3 or maps.size == 0:
            continue
        layer, step = str(cap.get("layer", "?")), cap.get("step")
        prev = out.get(layer)
        if prev is None or (step is not None and (prev[0] is None or step >= prev[0])):
            out[layer] = (step, maps)
    return out


@figure_maker("attention", order=70)
def attention_figures(run: RunData, diagnosis: Diagnosis, settings: Settings) -> list[Figure]:
    """The collapsed layers' token maps (from ``run.attention``, the hook's captures)."""
    idx = [i for i, f in enumerate(diagnosis.findings) if f.id == "attention_collapse"]
    if not idx or not run.attention:
        return []
    latest = _latest(run)
    collapsed: dict[str, dict[int, str]] = {}
    for i in idx:
        f = diagnosis.findings[i]
        layer = str(f.location.get("layer"))
        if layer in latest:
            collapsed.setdefault(layer, {})[int(f.location.get("token", -1))] = str(f.evidence.get("kind", ""))
    layers = list(collapsed)[:MAX_LAYERS]
    if not layers:
        return []
    n_tok = min(MAX_TOKENS, max(latest[la][1].shape[0] for la in layers))
    height = 2.0 * len(layers) + 0.2
    fig, axes = plt.subplots(len(layers), n_tok, figsize=(max(5.0, min(11.0, 1.6 * n_tok + 0.4)), height),
                             dpi=100, squeeze=False)
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.15 / height, top=1 - 0.55 / height, hspace=0.75, wspace=0.15)
    for r, layer in enumerate(layers):
        step, maps = latest[layer]
        for t in range(n_tok):
            ax = axes[r, t]
            ax.set_xticks([])
            ax.set_yticks([])
            if t >= maps.shape[0]:
                ax.axis("off")
                continue
            m = np.nan_to_num(np.asarray(maps[t], dtype=np.float64))
            top = float(m.max()) if m.size and m.max() > 0 else 1.0
            ax.imshow(m, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")  # from 0: flat reads as flat
            kind = collapsed[layer].get(t)
            title = f"token {t}" + (f": {kind}" if kind else "")
            ax.set_title(title, fontsize=7, color="#d7191c" if kind else "#333")
            if kind:
                for side in ax.spines.values():
                    side.set_edgecolor("#d7191c")
                    side.set_linewidth(2.0)
            if t == 0:  # the row's title: the layer, in full
                ax.text(0, 1.3, layer + (f"  (step {step})" if step is not None else ""), transform=ax.transAxes,
                        ha="left", va="bottom", fontsize=7.5, fontweight="bold")
    more = f" (the first {MAX_LAYERS} of {len(collapsed)} layers)" if len(collapsed) > MAX_LAYERS else ""
    return [Figure("attention_maps", "Cross-attention maps of the collapsed layers", fig,
                   f"Each row is a cross-attention layer{more} at its latest capture, each column a conditioning "
                   "token's map over the latent grid; collapsed tokens are framed in red (point: all attention on "
                   "one cell; uniform: spread flat).", "attention", idx)]
