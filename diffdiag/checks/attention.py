"""Cross-attention check: ``attention_collapse`` from maps captured during training.

The in-training hook (``diffdiag.integrations.hook``) puts its captures into
``run.attention``: a list of ``{"step", "layer", "maps"}`` with
``maps`` of shape (T, H, W). A token of a layer is reported when its map is
collapsed (to a point or to uniform) in the latest capture of that layer and
in at least half of that layer's captures (a one-off is not a trend).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..analyzers.attention import classify_collapse, token_map_stats
from ..findings.attention import attention_collapse
from ..model import Finding, RunData, Settings
from ..registry import register


def _has_attention(run: RunData) -> bool:
    return bool(run.attention)


@register("attention", needs=_has_attention, order=60)
def check_attention(run: RunData, settings: Settings) -> list[Finding]:
    by_layer: dict[str, list[dict]] = defaultdict(list)
    for cap in (run.attention or []):
        maps = np.asarray(cap.get("maps"))
        if maps.ndim != 3 or maps.size == 0:
            continue
        by_layer[str(cap.get("layer", "?"))].append({"step": cap.get("step"), "maps": maps})
    findings: list[Finding] = []
    for layer, caps in by_layer.items():
        caps.sort(key=lambda c: (c["step"] is None, c["step"] if c["step"] is not None else 0))
        labels, stats = [], []
        for c in caps:
            s = token_map_stats(c["maps"])
            stats.append(s)
            labels.append(classify_collapse(s))
        last = labels[-1]
        for tok, kind in enumerate(last):
            if kind is None:
                continue
            hits = [i for i, lab in enumerate(labels) if tok < len(lab) and lab[tok] == kind]
            if 2 * len(hits) < len(caps):
                continue
            findings.append(attention_collapse(layer, tok, kind=kind, stats=stats[-1],
                                               steps=[caps[i]["step"] for i in hits], n_captures=len(caps)))
    return findings
