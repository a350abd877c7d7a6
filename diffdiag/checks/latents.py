"""Latent checks: pre/post drift, batch-to-batch shift, periodicity and latent stripes.

Batch shift, periodicity and latent stripes are searched in every array a
file holds (location key ``array``): the latents themselves (``latents``, or
``pre``, the UNet's input), the UNet's prediction ``post``, and the model's
change ``post-pre`` (files with both arrays of one shape: image content the
input and the prediction share cancels there). A pattern found in several
arrays is reported once, under the first of them, with every array that
carries it in evidence ``arrays``; a batch shift in ``post`` that the drift
test already explains (same file and channel) is not repeated.

Findings (docs/CONTRACT.md §3):

- ``latent_stats_drift`` — location ``files``, ``channels``; evidence per file
  and channel: ``std_ratio`` (post/pre), ``mean_shift`` (in pre standard
  deviations), the run's median ratio, the limits, non-finite counts. A file
  drifts against wide absolute limits or against the run's other files
  (robust z); ``critical`` when the prediction holds non-finite values.
- ``latent_batch_shift`` — location ``files``, ``channels``, ``array``; evidence
  ``distance`` ({file: {channel: W1 in channel std}}), ``threshold`` (per
  channel), ``method``, ``alpha`` (the family-wise error of this array's test:
  :data:`ALPHA` split over the arrays tested), ``p_value``.
- ``latent_periodicity`` — location ``files``, ``axis``, ``period`` (latent
  cells), ``channel``, ``array``.
- ``stripes`` from latents — location ``latents`` (the first file that carries
  them), ``array``, ``axis``, ``period_px`` (**pixels**: period in cells x ``--vae-scale``,
  so it compares directly with image stripes), ``bbox`` (pixels, the whole
  decoded frame); evidence ``period_cells``, ``channel``, ``files``. Banding
  at fixed rows/columns (periodic or not) found on the channel's mean over all
  samples is reported the same way, with ``period_px`` null when aperiodic and
  the band's own ``bbox`` (pixels; ``bbox_cells`` in evidence).

Per-file channel statistics are the check's ``CheckResult.data``
(``Diagnosis.details["latents"]``:
``{file: {array: {"mean": [C], "std": [C], "nonfinite": [C], "batch"}}}``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..analyzers.latents import (MEAN_SHIFT_LIMIT, MIN_SHIFT_EFFECT, RELATIVE_RATIO_LIMIT, RELATIVE_SHIFT_LIMIT,
                                 STD_RATIO_LIMIT, DRIFT_Z, batch_shift, channel_stats, drift_over_files,
                                 latent_periodicity, latent_stripes)
from ..model import CheckResult, Finding, LatentFile, RunData, Settings
from ..registry import register

#: family-wise error rate of the batch-shift test over the whole run: files, channels and the arrays searched
#: (split evenly over the arrays: ``pre`` and ``post`` of one run are two tests)
ALPHA = 0.01


def main_array(lf: LatentFile) -> tuple[str, np.ndarray]:
    """The array describing the latents themselves: ``latents``, else ``pre``, else ``post``."""
    for key in ("latents", "pre", "post"):
        if key in lf.arrays:
            return key, lf.arrays[key]
    key = next(iter(lf.arrays))
    return key, lf.arrays[key]


#: how a message names each searched array (docs/CONTRACT.md §3 ``array``)
ARRAY_WORDS = {"latents": "", "pre": " of the UNet input (pre)", "post": " of the UNet output (post)",
               "post-pre": " of the UNet's change (post − pre)"}


def array_sets(latents: list[LatentFile]) -> list[tuple[str, list[str], list[np.ndarray]]]:
    """The arrays searched for batch shift, periodicity and stripes, one set per role.

    Parameters
    ----------
    latents : list of LatentFile

    Returns
    -------
    list of (array, paths, arrays)
        ``array`` is ``"latents"`` or ``"pre"`` (:func:`main_array` of every file; ``"latents"`` when
        the files mix kinds), then ``"post"`` (files with a prediction beside their input) and
        ``"post-pre"`` (files with both arrays of one shape). Each array has shape (B, C, H, W);
        a set keeps only the files of its most common channel count.
    """
    first = [(lf.path, *main_array(lf)) for lf in latents]
    kinds = {k for _, k, _ in first}
    sets = [(kinds.pop() if len(kinds) == 1 else "latents", [(p, a) for p, _, a in first])]
    post = [(lf.path, lf.arrays["post"]) for lf in latents if "post" in lf.arrays and "pre" in lf.arrays]
    if post:
        sets.append(("post", post))
    diff = [(lf.path, lf.arrays["post"] - lf.arrays["pre"]) for lf in latents
            if "post" in lf.arrays and "pre" in lf.arrays and lf.arrays["post"].shape == lf.arrays["pre"].shape]
    if diff:
        sets.append(("post-pre", diff))
    out = []
    for name, items in sets:
        c = Counter(a.shape[1] for _, a in items).most_common(1)[0][0]
        items = [(p, a) for p, a in items if a.shape[1] == c]
        out.append((name, [p for p, _ in items], [a for _, a in items]))
    return out


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


def _shift_findings(paths: list[str], arrays: list[np.ndarray], array: str = "latents",
                    explained: set[tuple[str, int]] | frozenset = frozenset(), *, alpha: float = ALPHA
                    ) -> list[Finding]:
    """``latent_batch_shift`` over one array set at family-wise error ``alpha``; (file, channel) pairs in
    ``explained`` are left out."""
    res = batch_shift(arrays, alpha=alpha)
    for f, c in zip(*np.nonzero(res.shifted)):
        if (paths[f], int(c)) in explained:
            res.shifted[f, c] = False
    if not res.shifted.any():
        return []
    fi, ci = np.nonzero(res.shifted)
    files = [paths[i] for i in sorted(set(fi.tolist()))]
    channels = sorted(set(ci.tolist()))
    dist = {paths[f]: {int(c): round(float(res.distance[f, c]), 4) for c in range(res.distance.shape[1])}
            for f in range(len(paths))}
    excess = float((res.distance / res.file_threshold)[res.shifted].max())
    msg = (f"Latent batch{'es' if len(files) > 1 else ''} {_fmt_files(files)} differ{'' if len(files) > 1 else 's'} "
           f"in distribution from the other files in channel{'s' if len(channels) > 1 else ''}{ARRAY_WORDS[array]} "
           f"{', '.join(map(str, channels))} (Wasserstein distance {excess:.1f}x the threshold).")
    per_file = {paths[f]: sorted(int(c) for c in ci[fi == f]) for f in sorted(set(fi.tolist()))}
    return [Finding("latent_batch_shift", "warning", min(1.0, 0.4 + 0.3 * (excess - 1.0)), msg,
                    {"files": files, "channels": channels, "array": array},
                    {"distance": dist, "threshold": np.round(res.threshold, 4), "method": res.method,
                     "file_threshold": {paths[f]: np.round(res.file_threshold[f], 4) for f in sorted(set(fi.tolist()))},
                     "alpha": alpha, "min_effect": MIN_SHIFT_EFFECT, "shifted_channels": per_file,
                     "p_value": {paths[f]: np.round(res.p_value[f], 4) for f in sorted(set(fi.tolist()))}
                     if res.p_value.size else {}})]


def _same_pattern(f: Finding, channel: int, axis: str, period: int) -> bool:
    return (f.location.get("channel", f.evidence.get("channel")) == channel and f.location.get("axis") == axis
            and f.evidence.get("period_cells", f.location.get("period")) == period)


def _periodic_findings(paths: list[str], arrays: list[np.ndarray], settings: Settings, array: str = "latents",
                       found: list[Finding] | None = None) -> list[Finding]:
    """``latent_periodicity`` (and banded ``stripes``) over one array set.

    A pattern already in ``found`` (an earlier array: same channel, axis and period) only adds
    ``array`` to that finding's evidence ``arrays``.
    """
    out: list[Finding] = []
    scale = int(settings.vae_scale)
    # the change post - pre shows image content with little noise: only patterns shared across files count there
    for hit in latent_periodicity(arrays, threshold=settings.fft_threshold, per_file=array != "post-pre"):
        earlier = [f for f in (found or []) if f.id in ("latent_periodicity", "stripes")
                   and f.evidence.get("source", "latents") == "latents"
                   and _same_pattern(f, hit.channel, hit.axis, hit.period)]
        if earlier:
            for f in earlier:
                seen_in = f.evidence.setdefault("arrays", [f.location.get("array", "latents")])
                if array not in seen_in:
                    seen_in.append(array)
            continue
        files = [paths[i] for i in hit.files]
        h, w = arrays[hit.files[0]].shape[2:]
        score = min(1.0, max(0.0, hit.strength))
        kind = "bands" if hit.banded else "a grid"
        out.append(Finding(
            "latent_periodicity", "warning", score,
            f"Latent channel {hit.channel}{ARRAY_WORDS[array]} repeats every {hit.period} cells along "
            f"{'x' if hit.axis == 'vertical' else 'y'} ({kind}) in {len(files)} file{'s' if len(files) > 1 else ''} "
            f"({_fmt_files(files)}).",
            {"files": files, "axis": hit.axis, "period": hit.period, "channel": hit.channel, "array": array},
            {"strength": round(hit.strength, 4), "snr": hit.snr, "period_px": hit.period * scale,
             "banded": hit.banded, "latent_size": [int(h), int(w)], "arrays": [array]}))
        if hit.banded:
            out.append(Finding(
                "stripes", "warning", score,
                f"{hit.axis.capitalize()} stripes in the latents (channel {hit.channel}{ARRAY_WORDS[array]}): a band "
                f"pattern every {hit.period} cells, {hit.period * scale} px once decoded.",
                {"latents": files[0], "array": array, "axis": hit.axis, "period_px": hit.period * scale,
                 "bbox": [0, 0, int(w) * scale, int(h) * scale]},
                {"strength": round(hit.strength, 4), "period_cells": hit.period, "channel": hit.channel,
                 "files": files, "source": "latents", "vae_scale": scale, "arrays": [array]}))
    return out


def channel_stats_table(run: RunData) -> dict[str, dict[str, dict]]:
    """Per latent file and array: channel means, standard deviations, non-finite counts and batch size."""
    stats = {}
    for lf in run.latents:
        entry = {}
        for key, arr in lf.arrays.items():
            s = channel_stats(arr)
            entry[key] = {"mean": np.round(s["mean"], 5).tolist(), "std": np.round(s["std"], 5).tolist(),
                          "nonfinite": s["nonfinite"].tolist(), "batch": int(arr.shape[0])}
        stats[lf.path] = entry
    return stats


@register("latents", needs=lambda run: bool(run.latents), order=40)
def check_latents(run: RunData, settings: Settings) -> CheckResult:
    """Drift (pre/post files), batch shift and periodicity over the run's latent files."""
    findings = _drift_findings(run)
    drifted = {(p, int(c)) for f in findings if f.id == "latent_stats_drift" for p in f.location["files"]
               for c in f.evidence["per_file"][p]["channels"]}
    sets = array_sets(run.latents)
    n_shift = sum(array != "post-pre" for array, _, _ in sets)  # a shift of the change is the drift test's question
    for array, paths, arrays in sets:
        if array != "post-pre":
            findings += _shift_findings(paths, arrays, array, drifted if array == "post" else frozenset(),
                                        alpha=ALPHA / n_shift)
        hw = Counter(a.shape[2:] for a in arrays).most_common(1)[0][0]
        same = [(p, a) for p, a in zip(paths, arrays) if a.shape[2:] == hw]
        sp, sa = [p for p, _ in same], [a for _, a in same]
        findings += _periodic_findings(sp, sa, settings, array, findings)
        findings += _banding_findings(sp, sa, settings, findings, array)
    return CheckResult(findings, data=channel_stats_table(run))


def _banding_findings(paths: list[str], arrays: list[np.ndarray], settings: Settings,
                      found: list[Finding], array: str = "latents") -> list[Finding]:
    """Aperiodic (and any periodic not yet reported) latent stripes at fixed rows/columns of one array set
    (a band already reported on the same channel and axis, in any array, is not repeated)."""
    scale = int(settings.vae_scale)
    seen = {(f.evidence.get("channel"), f.location.get("axis")): f for f in found
            if f.id == "stripes" and f.evidence.get("source") == "latents"}
    out = []
    for hit in latent_stripes(arrays, threshold=settings.fft_threshold):
        st = hit.stripe
        if (hit.channel, st.axis) in seen:
            prev = seen[(hit.channel, st.axis)]
            arrays_seen = prev.evidence.setdefault("arrays", [prev.location.get("array", "latents")])
            if array not in arrays_seen:
                arrays_seen.append(array)
            continue
        files = [paths[i] for i in hit.files]
        period = None if st.period_px is None else int(st.period_px) * scale
        kind = f"every {st.period_px} cells ({period} px)" if period else "aperiodic"
        out.append(Finding(
            "stripes", "warning", min(1.0, 0.4 + st.z / 50.0),
            f"{st.axis.capitalize()} stripes fixed in latent space (channel {hit.channel}{ARRAY_WORDS[array]}, {kind}, "
            f"{st.columns} {'columns' if st.axis == 'vertical' else 'rows'}) in {len(files)} file"
            f"{'s' if len(files) > 1 else ''}.",
            {"latents": files[0], "array": array, "axis": st.axis, "period_px": period,
             "bbox": [int(v) * scale for v in st.bbox]},
            {"z": round(float(st.z), 2), "amplitude": round(float(st.amplitude), 5), "channel": hit.channel,
             "bbox_cells": list(st.bbox), "period_cells": st.period_px, "files": files, "source": "latents",
             "vae_scale": scale, "arrays": [array]}))
        seen[(hit.channel, st.axis)] = out[-1]
    return out
