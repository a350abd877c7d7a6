"""Causes of stripes / banding (seed §7.1): normalisation imbalance, latent periodicity, augmentation pattern.

The symptom is observed when a ``stripes`` finding is raised (on the error map
of a pair, a lone image or latents).

How the causes differ, as the evidence terms below encode it:

- **batchnorm imbalance** — normalisation that depends on the batch (BatchNorm
  with small or unbalanced batches, a mis-calibrated running mean, fp16 stats)
  shifts channel statistics from batch to batch: ``latent_batch_shift`` /
  ``latent_stats_drift`` fire, the model has batch-dependent norm layers, and
  the banding often has no fixed period.
- **latent periodicity** — the UNet's output carries a period of *k* latent
  cells, which the VAE decodes to *k × vae_scale* pixels: a
  ``latent_periodicity`` (or latent ``stripes``) finding whose period times
  ``--vae-scale`` equals the pixel stripe period ("48 px = 6 cells × 8 px").
- **augmentation pattern** — the training images themselves carry the pattern
  (a stripe overlay, a grid crop, a moiré from resizing): dataset findings with
  the same period and axis.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..model import Cause, Finding, RunData, Settings
from ..textfmt import fmt
from .evidence import (CauseScore, harmonic_match, indexed, max_number, num, period_along, periods,
                       periods_match, pick, severity_factor)

SYMPTOM = "stripes"

# ----------------------------------------------------------------- priors
# Without evidence, the three §7.1 causes are about equally common in LoRA
# practice; augmentation artefacts slightly less (most pipelines only flip/crop).
PRIOR_BATCHNORM = 0.35
PRIOR_LATENT = 0.35
PRIOR_AUGMENT = 0.30
#: cause id -> prior (``rank_causes(..., priors=...)`` replaces some of them)
PRIORS = {
    "stripes.batchnorm_imbalance": PRIOR_BATCHNORM,
    "stripes.latent_periodicity": PRIOR_LATENT,
    "stripes.augmentation_pattern": PRIOR_AUGMENT,
}

# ----------------------------------------------------------------- weights (ln likelihood ratios)
#: a latent period × vae_scale equal to the stripe period (within 12 %): the
#: decoder maps a k-cell latent period to k·vae_scale pixels — a coincidence of
#: two independent period estimates is ~20× (e^3) more likely under this cause.
W_LATENT_MATCH = 3.0
#: the latent period is a small integer multiple/fraction of the stripe period
#: (a harmonic): still tied, but less specific.
W_LATENT_HARMONIC = 1.2
#: the pixel stripes have no measurable period, but the latents repeat along the
#: same axis: tied by axis only (~4.5×).
W_LATENT_SAME_AXIS = 1.5
#: latents are periodic but at an unrelated period: weak support.
W_LATENT_OTHER = 0.4
#: latents were given and analysed, with no periodicity found: against.
W_LATENTS_CLEAN = -1.2
#: all pixel stripes aperiodic (period null): a period-based cause is unlikely
#: (−1), batch-dependent offsets give irregular bands (+0.7).
W_APERIODIC_AGAINST, W_APERIODIC_BN = -1.0, 0.7
#: batch-to-batch channel-statistics shift in the latents: what batch-dependent
#: normalisation produces (~7×, e^2).
W_BATCH_SHIFT = 2.0
#: post-vs-pre channel-statistics drift of the UNet output: normalisation
#: mis-calibration, less specific than a batch shift (~3×).
W_STATS_DRIFT = 1.2
#: the model has BatchNorm-style (batch-dependent) layers: ~4.5× (e^1.5).
W_BATCHNORM_LAYERS = 1.5
#: the model's norm layers are all batch-independent (GroupNorm/LayerNorm), or it has none: batch
#: statistics cannot leak through them — the cause's mechanism is absent (its precondition,
#: :meth:`~diffdiag.causes.evidence.CauseScore.precondition_absent`: the cause ranks below the others).
#: latents analysed with no batch shift or drift: against.
W_LATENT_STATS_CLEAN = -1.2
#: training images carry a periodic pattern with the stripes' period: the model
#: learned it from the data (~20×).
W_DATASET_MATCH = 3.0
W_DATASET_HARMONIC = 1.0
W_DATASET_OTHER = 0.4
#: a dataset was given and analysed, with no periodic pattern in it: against.
W_DATASET_CLEAN = -1.2

ADVICE_BATCHNORM = (
    "Make normalisation batch-independent or balanced: replace BatchNorm with GroupNorm, or freeze its running "
    "statistics (model.eval() for norm layers) during LoRA training; use larger or bucket-balanced batches "
    "(same resolution and content mix per batch), and keep the VAE/UNet norm layers in fp32."
)
ADVICE_LATENT = (
    "The UNet output carries a periodic pattern in latent space that the VAE decodes to pixel stripes: check "
    "the LoRA rank/alpha and target modules on the up-blocks (conv and resnet layers), look for a "
    "transposed-conv/upsampling checkerboard, compare latents of earlier checkpoints to find when the period "
    "appeared, and lower the LR or stop before it. Make sure --vae-scale matches your VAE (8 for SD/SDXL/Flux)."
)
ADVICE_AUGMENT = (
    "The training images carry the pattern: inspect the files named in the evidence and the augmentation "
    "pipeline (stripe/grid overlays, resize with nearest-neighbour, JPEG/moiré from rescaling, tiled crops). "
    "Remove or fix those images, resize with antialiasing, and disable the augmentation that draws the pattern."
)

_BATCH_NORMS = ("batchnorm", "syncbatchnorm", "batch_norm")
_INDEPENDENT_NORMS = ("groupnorm", "layernorm", "instancenorm", "rmsnorm", "adagroupnorm", "adalayernorm")


def _stripe_info(f: Finding, vae_scale: int) -> tuple[str | None, float | None, bool]:
    """(axis, period in pixels or None, is_latent) of a stripes finding."""
    axis = pick(f, "axis")
    is_latent = "latents" in f.location and "image" not in f.location
    if is_latent:
        cells = num(pick(f, "period_cells", "period"))
        px = cells * vae_scale if cells else None
        if px is None:  # latent stripes report period_px in pixels already (cells x --vae-scale)
            px = period_along(pick(f, "period_px"), axis)
        return axis, px, True
    return axis, period_along(pick(f, "period_px"), axis), False


def _axes_compatible(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


def score_causes(findings: Sequence[Finding], trigger_indices: Sequence[int], run: RunData,
                 settings: Settings, *, priors: Mapping[str, float] | None = None) -> list[Cause]:
    """Score the three stripe causes.

    Parameters
    ----------
    findings : list of Finding
        All findings (indices refer to this list).
    trigger_indices : list of int
        The ``stripes`` findings that made the symptom observed.
    run : RunData
        Read for ``latents`` (were they analysed?), ``dataset_dir`` and ``model_info``.
    settings : Settings
        ``vae_scale`` converts latent periods (cells) into pixels.
    priors : mapping of str to float, optional
        Cause id -> prior, replacing :data:`PRIORS` for those causes (keyword only).

    Returns
    -------
    list of Cause
        ``batchnorm_imbalance``, ``latent_periodicity``, ``augmentation_pattern`` (unsorted).
    """
    prior = {**PRIORS, **(priors or {})}
    scale = int(settings.vae_scale or 8)
    bn = CauseScore("stripes.batchnorm_imbalance", SYMPTOM,
                     prior["stripes.batchnorm_imbalance"], ADVICE_BATCHNORM)
    lat = CauseScore("stripes.latent_periodicity", SYMPTOM,
                      prior["stripes.latent_periodicity"], ADVICE_LATENT)
    aug = CauseScore("stripes.augmentation_pattern", SYMPTOM,
                      prior["stripes.augmentation_pattern"], ADVICE_AUGMENT)

    stripes = [(i, findings[i]) for i in trigger_indices]
    info = {i: _stripe_info(f, scale) for i, f in stripes}
    pixel = [(i, info[i][0], info[i][1]) for i, _ in stripes if not info[i][2]]
    latent_stripes = [(i, info[i][0], info[i][1]) for i, _ in stripes if info[i][2]]
    targets = pixel or latent_stripes  # the stripes to explain: pixel ones when there are any
    periodic_targets = [(i, a, p) for i, a, p in targets if p]

    # --- latent periodicity
    lat_obs: list[tuple[int, str | None, float, float]] = []  # (index, axis, period px, weight factor)
    for i, f in indexed(findings, "latent_periodicity"):
        cells = num(pick(f, "period", "period_cells"))
        if cells:
            lat_obs.append((i, pick(f, "axis"), cells * scale, severity_factor(f)))
    if pixel:  # latent stripes explain pixel stripes the same way
        for i, a, p in latent_stripes:
            if p:
                lat_obs.append((i, a, p, severity_factor(findings[i])))
    best = None  # (weight, sentence, indices)
    for j, a, p_lat, k in lat_obs:
        for i, ta, tp in periodic_targets:
            if not _axes_compatible(a, ta):
                continue
            if periods_match(p_lat, tp):
                cand = (W_LATENT_MATCH * k,
                        f"the latent period {fmt(p_lat / scale)} cells × {scale} px per cell = {fmt(p_lat)} px "
                        f"matches the {ta or ''} stripe period {fmt(tp)} px.".replace("  ", " "), [j, i])
            elif harmonic_match(p_lat, tp):
                h = harmonic_match(p_lat, tp)
                cand = (W_LATENT_HARMONIC * k,
                        f"the latent period {fmt(p_lat / scale)} cells ({fmt(p_lat)} px) is a ×{h} harmonic of the "
                        f"stripe period {fmt(tp)} px.", [j, i])
            else:
                cand = (W_LATENT_OTHER * k,
                        f"the latents are periodic ({fmt(p_lat / scale)} cells = {fmt(p_lat)} px), but not at the "
                        f"stripe period {fmt(tp)} px.", [j])
            if best is None or cand[0] > best[0]:
                best = cand
        for i, ta, tp in targets:
            if tp or not (a and ta and a == ta):
                continue
            cand = (W_LATENT_SAME_AXIS * k,
                    f"the latents repeat every {fmt(p_lat / scale)} cells ({fmt(p_lat)} px decoded) along the axis "
                    f"of the {ta} stripes, whose own period could not be measured.", [j, i])
            if best is None or cand[0] > best[0]:
                best = cand
        if best is None or W_LATENT_OTHER * k > best[0]:
            best = (W_LATENT_OTHER * k, f"the latents are periodic ({fmt(p_lat / scale)} cells).", [j])
    if best is not None:
        lat.add("latent_period", *best)
    if not pixel and any(p for _, _, p in latent_stripes) and best is None:
        # stripes found in the latents themselves, periodic: periodicity in latent space, directly observed
        i, a, p = next(x for x in latent_stripes if x[2])
        lat.add("latent_stripes", W_LATENT_MATCH * severity_factor(findings[i]),
                f"the latents themselves carry {a or ''} stripes with a period of {fmt(p / scale)} cells "
                f"({fmt(p)} px after decoding).".replace("  ", " "), [i])
    if run.latents and not lat_obs and not latent_stripes:
        lat.add("latents_clean", W_LATENTS_CLEAN,
                f"{len(run.latents)} latent file{'s' if len(run.latents) > 1 else ''} were analysed and show no "
                "periodicity.", [])
    if targets and not periodic_targets and not any(p for _, _, p in latent_stripes):
        lat.add("aperiodic", W_APERIODIC_AGAINST, "the stripes have no fixed period.", [i for i, _, _ in targets])
        aug.add("aperiodic", W_APERIODIC_AGAINST,
                "the stripes have no fixed period, unlike a drawn pattern.", [i for i, _, _ in targets])
        bn.add("aperiodic", W_APERIODIC_BN,
               "the bands are irregular (no fixed period), as batch-dependent offsets are.",
               [i for i, _, _ in targets])

    # --- batch-dependent normalisation
    shifts = indexed(findings, "latent_batch_shift", min_severity="warning")
    drifts = indexed(findings, "latent_stats_drift", min_severity="warning")
    if shifts:
        f = max((f for _, f in shifts), key=lambda f: f.score)
        chans = pick(f, "channels")
        files = pick(f, "files")
        dist = max_number(f.evidence.get("distance"))
        text = "latent channel statistics shift from batch to batch"
        if isinstance(chans, list):
            text += f" (channel{'s' if len(chans) > 1 else ''} {', '.join(map(str, chans[:6]))}"
            text += f"; {len(files)} files" if isinstance(files, list) else ""
            text += f"; distance {fmt(dist)}" if dist else ""
            text += ")"
        bn.add("batch_shift", W_BATCH_SHIFT, text + ".", [i for i, _ in shifts])
    if drifts:
        f = max((f for _, f in drifts), key=lambda f: f.score)
        chans = pick(f, "channels")
        bn.add("stats_drift", W_STATS_DRIFT,
               "the UNet output's channel statistics drift from its input's"
               + (f" (channels {', '.join(map(str, chans[:6]))})" if isinstance(chans, list) else "") + ".",
               [i for i, _ in drifts])
    if run.latents and not shifts and not drifts:
        bn.add("latent_stats_clean", W_LATENT_STATS_CLEAN,
               "the latents' channel statistics are stable across batches and through the UNet.", [])
    norms = run.model_info.get("normalization_layers") if isinstance(run.model_info, dict) else None
    if isinstance(norms, (list, tuple, set)):
        names = sorted({str(n) for n in norms})
        low = [n.lower() for n in names]
        if any(any(b in n for b in _BATCH_NORMS) for n in low):
            bn.add("batchnorm_layers", W_BATCHNORM_LAYERS,
                   f"the model has batch-dependent normalisation layers ({', '.join(names)}).", [])
        elif names:
            bn.precondition_absent("independent_norms", f"the model's normalisation layers ({', '.join(names)}) "
                                   "do not use batch statistics, so batch-dependent normalisation cannot cause "
                                   "the stripes.")
        else:
            bn.precondition_absent("no_norms", "the model has no normalisation layers, so batch-dependent "
                                   "normalisation cannot cause the stripes.")

    # --- augmentation pattern: the training images carry it
    data_obs = []
    for i, f in indexed(findings, "dataset_tiled_source"):
        data_obs.append((i, f, pick(f, "period_px"), pick(f, "axis")))
    best = None
    for j, f, value, d_axis in data_obs:
        k = severity_factor(f)
        for i, ta, tp in periodic_targets:
            if d_axis and ta and d_axis != ta:
                continue
            p = period_along(value, ta) if ta else None
            cands = [p] if p else periods(value)
            hit = next((c for c in cands if periods_match(c, tp)), None)
            harm = next((c for c in cands if harmonic_match(c, tp)), None)
            name = pick(f, "file")
            if hit:
                cand = (W_DATASET_MATCH * k,
                        f"training image {name} carries a pattern with period {fmt(hit)} px, the stripe period "
                        f"({fmt(tp)} px).", [j, i])
            elif harm:
                cand = (W_DATASET_HARMONIC * k,
                        f"training image {name} carries a pattern with period {fmt(harm)} px, a harmonic of the "
                        f"stripe period ({fmt(tp)} px).", [j, i])
            else:
                cand = (W_DATASET_OTHER * k,
                        f"training image {name} carries a periodic pattern, but not at the stripe period.", [j])
            if best is None or cand[0] > best[0]:
                best = cand
        if not periodic_targets and (best is None or W_DATASET_OTHER * k > best[0]):
            best = (W_DATASET_OTHER * k, f"training image {pick(f, 'file')} carries a periodic pattern.", [j])
    if best is not None:
        n_files = len({str(pick(f, 'file')) for _, f, _, _ in data_obs})
        text = best[1]
        if n_files > 1:
            text = text[:-1] + f" ({n_files} files with periodic patterns in the dataset)."
        aug.add("dataset_pattern", best[0], text, sorted({*best[2], *(j for j, *_ in data_obs)}))
    if run.dataset_dir is not None and not data_obs:
        aug.add("dataset_clean", W_DATASET_CLEAN, "the training images were analysed and carry no periodic pattern.",
                [])

    for c in (bn, lat, aug):
        c.cite(trigger_indices)
    return [c.to_cause() for c in (bn, lat, aug)]
