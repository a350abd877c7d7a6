"""Latent checks: pre/post drift, batch-to-batch shift, periodicity and latent stripes.

Findings (docs/CONTRACT.md §3):

- ``latent_stats_drift`` — location ``files``, ``channels``; evidence per file
  and channel: ``std_ratio`` (post/pre), ``mean_shift`` (in pre standard
  deviations), the run's median ratio, the limits, non-finite counts. A file
  drifts against wide absolute limits or against the run's other files
  (robust z); ``critical`` when the prediction holds non-finite values.
- ``latent_batch_shift`` — location ``files``, ``channels``; evidence
  ``distance`` ({file: {channel: W1 in channel std}}), ``threshold`` (per
  channel), ``method``, ``alpha``, ``p_value``.
- ``latent_periodicity`` — location ``files``, ``axis``, ``period`` (latent
  cells), ``channel``.
- ``stripes`` from latents — location ``latents`` (the first file that carries
  them), ``axis``, ``period_px`` (**pixels**: period in cells x ``--vae-scale``,
  so it compares directly with image stripes), ``bbox`` (pixels, the whole
  decoded frame); evidence ``period_cells``, ``channel``, ``files``. Banding
  at fixed rows/columns (periodic or not) found on the channel's mean over all
  samples is reported the same way, with ``period_px`` null when aperiodic and
  the band's own ``bbox`` (pixels; ``bbox_cells`` in evidence).

Per-file channel statistics go to ``run.model_info["latent_channel_stats"]``
(``{file: {"array", "mean": [C], "std": [C], "nonfinite": [C]}}``) for the
cause model (e.g. ``stripes.batchnorm_imbalance``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..analyzers.latents import (MEAN_SHIFT_LIMIT, MIN_SHIFT_EFFECT, RELATIVE_RATIO_LIMIT, RELATIVE_SHIFT_LIMIT,
                                 STD_RATIO_LIMIT, DRIFT_Z, batch_shift, channel_stats, drift_over_files,
                                 latent_periodicity, latent_stripes)
from ..model import Finding, LatentFile, RunData, Settings
from ..registry import register

ALPHA = 0.01


def main_array(lf: LatentFile) -> tuple[str, np.ndarray]:
    """The array describing the latents themselves: ``latents``, else ``pre``, else ``post``."""
    for key in ("latents", "pre", "post"):
        if key in lf.arrays:
            return key, lf.arrays[key]
    key = next(iter(lf.arrays))
    return key, lf.arrays[key]


def _fmt_files(files: list[str], n: int = 3) -> str:
    from pathlib import Path

    names = [Path(f).name for f in files]
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _drift_findings(run: RunData) -> list[Finding]:
    paired = [lf for lf in run.latents if "pre" in lf.arrays and "post" in lf.arrays]
    results = drift_over_files([(lf.arrays["pre"], lf.arrays["post"]) for lf in paired])
    files, chans, ev, crit = [], set(), {}, False
    for lf, d in zip(paired, results):
        if not d.drifting.any():
            continue
        files.append(lf.path)
        chans.update(d.channels)
        crit = crit or bool(((d.nonfinite_post > 0) & (d.nonfinite_pre == 0)).any())
        ev[lf.path] = {"channels": d.channels, "std_ratio": np.round(d.std_ratio, 4),
                       "mean_shift": np.round(d.mean_shift, 4), "nonfinite_post": d.nonfinite_post}
    if not files:
        return []
    ratios = np.array([r.std_ratio for r in results], np.float64)
    med_ratio = np.round(np.nanmedian(ratios, axis=0), 4) if ratios.size else []
    worst = max(float(np.nanmax(np.abs(np.log(np.maximum(e["std_ratio"], 1e-6))))) / np.log(RELATIVE_RATIO_LIMIT)
                for e in ev.values())
    channels = sorted(chans)
    msg = (f"The UNet output's statistics drift from its input in channel{'s' if len(channels) > 1 else ''} "
           f"{', '.join(map(str, channels))} in {len(files)} of {len(paired)} latent file"
           f"{'s' if len(paired) > 1 else ''} ({_fmt_files(files)})"
           + (", with non-finite predictions." if crit else "."))
    return [Finding("latent_stats_drift", "critical" if crit else "warning",
                    1.0 if crit else min(1.0, 0.5 + 0.2 * max(0.0, worst - 1.0)), msg,
                    {"files": files, "channels": channels},
                    {"per_file": ev, "median_std_ratio": med_ratio, "std_ratio_limit": STD_RATIO_LIMIT,
                     "mean_shift_limit": MEAN_SHIFT_LIMIT, "relative_ratio_limit": RELATIVE_RATIO_LIMIT,
                     "relative_shift_limit": RELATIVE_SHIFT_LIMIT, "robust_z": DRIFT_Z})]


def _shift_findings(paths: list[str], arrays: list[np.ndarray]) -> list[Finding]:
    res = batch_shift(arrays, alpha=ALPHA)
    if not res.shifted.any():
        return []
    fi, ci = np.nonzero(res.shifted)
    files = [paths[i] for i in sorted(set(fi.tolist()))]
    channels = sorted(set(ci.tolist()))
    dist = {paths[f]: {int(c): round(float(res.distance[f, c]), 4) for c in range(res.distance.shape[1])}
            for f in range(len(paths))}
    excess = float((res.distance / res.threshold[None])[res.shifted].max())
    msg = (f"Latent batch{'es' if len(files) > 1 else ''} {_fmt_files(files)} differ{'' if len(files) > 1 else 's'} "
           f"in distribution from the other files in channel{'s' if len(channels) > 1 else ''} "
           f"{', '.join(map(str, channels))} (Wasserstein distance {excess:.1f}x the threshold).")
    per_file = {paths[f]: sorted(int(c) for c in ci[fi == f]) for f in sorted(set(fi.tolist()))}
    return [Finding("latent_batch_shift", "warning", min(1.0, 0.4 + 0.3 * (excess - 1.0)), msg,
                    {"files": files, "channels": channels},
                    {"distance": dist, "threshold": np.round(res.threshold, 4), "method": res.method,
                     "alpha": ALPHA, "min_effect": MIN_SHIFT_EFFECT, "shifted_channels": per_file,
                     "p_value": {paths[f]: np.round(res.p_value[f], 4) for f in sorted(set(fi.tolist()))}
                     if res.p_value.size else {}})]


def _periodic_findings(paths: list[str], arrays: list[np.ndarray], settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    scale = int(settings.vae_scale)
    for hit in latent_periodicity(arrays, threshold=settings.fft_threshold):
        files = [paths[i] for i in hit.files]
        h, w = arrays[hit.files[0]].shape[2:]
        score = min(1.0, max(0.0, hit.strength))
        kind = "bands" if hit.banded else "a grid"
        out.append(Finding(
            "latent_periodicity", "warning", score,
            f"Latent channel {hit.channel} repeats every {hit.period} cells along "
            f"{'x' if hit.axis == 'vertical' else 'y'} ({kind}) in {len(files)} file{'s' if len(files) > 1 else ''} "
            f"({_fmt_files(files)}).",
            {"files": files, "axis": hit.axis, "period": hit.period, "channel": hit.channel},
            {"strength": round(hit.strength, 4), "snr": hit.snr, "period_px": hit.period * scale,
             "banded": hit.banded, "latent_size": [int(h), int(w)]}))
        if hit.banded:
            out.append(Finding(
                "stripes", "warning", score,
                f"{hit.axis.capitalize()} stripes in the latents (channel {hit.channel}): a band pattern every "
                f"{hit.period} cells, {hit.period * scale} px once decoded.",
                {"latents": files[0], "axis": hit.axis, "period_px": hit.period * scale,
                 "bbox": [0, 0, int(w) * scale, int(h) * scale]},
                {"strength": round(hit.strength, 4), "period_cells": hit.period, "channel": hit.channel,
                 "files": files, "source": "latents", "vae_scale": scale}))
    return out


def _record_stats(run: RunData) -> None:
    stats = {}
    for lf in run.latents:
        entry = {}
        for key, arr in lf.arrays.items():
            s = channel_stats(arr)
            entry[key] = {"mean": np.round(s["mean"], 5).tolist(), "std": np.round(s["std"], 5).tolist(),
                          "nonfinite": s["nonfinite"].tolist(), "batch": int(arr.shape[0])}
        stats[lf.path] = entry
    run.model_info["latent_channel_stats"] = stats


@register("latents", needs=lambda run: bool(run.latents), order=40)
def check_latents(run: RunData, settings: Settings) -> list[Finding]:
    """Drift (pre/post files), batch shift and periodicity over the run's latent files."""
    _record_stats(run)
    findings = _drift_findings(run)
    chosen = [(lf.path, main_array(lf)[1]) for lf in run.latents]
    counts = Counter(a.shape[1] for _, a in chosen)
    c = counts.most_common(1)[0][0]
    chosen = [(p, a) for p, a in chosen if a.shape[1] == c]
    paths = [p for p, _ in chosen]
    arrays = [a for _, a in chosen]
    findings += _shift_findings(paths, arrays)
    shapes = Counter(a.shape[2:] for a in arrays)
    hw = shapes.most_common(1)[0][0]
    same = [(p, a) for p, a in chosen if a.shape[2:] == hw]
    findings += _periodic_findings([p for p, _ in same], [a for _, a in same], settings)
    findings += _banding_findings([p for p, _ in same], [a for _, a in same], settings, findings)
    return findings


def _banding_findings(paths: list[str], arrays: list[np.ndarray], settings: Settings,
                      found: list[Finding]) -> list[Finding]:
    """Aperiodic (and any periodic not yet reported) latent stripes at fixed rows/columns."""
    scale = int(settings.vae_scale)
    seen = {(f.evidence.get("channel"), f.location.get("axis")) for f in found if f.id == "stripes"}
    out = []
    for hit in latent_stripes(arrays, threshold=settings.fft_threshold):
        st = hit.stripe
        if (hit.channel, st.axis) in seen:
            continue
        seen.add((hit.channel, st.axis))
        files = [paths[i] for i in hit.files]
        period = None if st.period_px is None else int(st.period_px) * scale
        kind = f"every {st.period_px} cells ({period} px)" if period else "aperiodic"
        out.append(Finding(
            "stripes", "warning", min(1.0, 0.4 + st.z / 50.0),
            f"{st.axis.capitalize()} stripes fixed in latent space (channel {hit.channel}, {kind}, "
            f"{st.columns} {'columns' if st.axis == 'vertical' else 'rows'}) in {len(files)} file"
            f"{'s' if len(files) > 1 else ''}.",
            {"latents": files[0], "axis": st.axis, "period_px": period,
             "bbox": [int(v) * scale for v in st.bbox]},
            {"z": round(float(st.z), 2), "amplitude": round(float(st.amplitude), 5), "channel": hit.channel,
             "bbox_cells": list(st.bbox), "period_cells": st.period_px, "files": files, "source": "latents",
             "vae_scale": scale}))
    return out
