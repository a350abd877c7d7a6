"""Causes of doubled tiling (seed §7.2): tiled sources, mask preparation, over-regularisation.

The symptom is observed when a ``tiling_period_doubling`` finding is raised:
the output repeats with twice the reference's period.

How the causes differ, as the evidence terms below encode it:

- **tiled sources** — the dataset holds seamlessly repeated textures; the
  model learns "repeat a tile" and picks the tile size from the data, not from
  the reference: ``dataset_tiled_source`` findings (most telling when their
  period is the reference's or the doubled one).
- **mask preparation** — inpainting/re-texturing masks that are interpolated
  (non-binary edges), misaligned with their image, resized to another size,
  empty or full: the model is trained on the wrong region and repeats
  what it saw across the seam: ``dataset_invalid_mask`` findings.
- **over-regularisation** — the adapter is held so close to zero (weight
  decay, dropout, a tiny rank/alpha) that it only learns the coarsest
  structure: the loss sits on a high shelf (``loss_plateau``), LoRA norms
  shrink (``checkpoint_norm_collapse``), the config shows a high weight decay
  or dropout.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..model import Cause, Finding, RunData, Settings
from ..textfmt import fmt
from .evidence import (CauseScore, config_value, harmonic_match, indexed, num, periods, periods_match, pick,
                       severity_factor)

SYMPTOM = "tiling_doubling"

# ----------------------------------------------------------------- priors
# Tiled textures are the most common source of tiling artefacts in
# material/texture LoRAs; broken masks and over-regularisation are reported
# less often.
PRIOR_TILED = 0.40
PRIOR_MASK = 0.30
PRIOR_OVERREG = 0.30
#: cause id -> prior (``rank_causes(..., priors=...)`` replaces some of them)
PRIORS = {
    "tiling_doubling.tiled_sources": PRIOR_TILED,
    "tiling_doubling.mask_preparation": PRIOR_MASK,
    "tiling_doubling.over_regularization": PRIOR_OVERREG,
}

# ----------------------------------------------------------------- weights (ln likelihood ratios)
#: seamlessly repeated textures in the training set (warning-level
#: dataset_tiled_source): the model learns tiling from them (~12×, e^2.5).
W_TILED = 2.5
#: ... with the reference period or the doubled one: the tile size itself was
#: learned from those images (another ~2×).
W_TILED_PERIOD = 0.8
#: ... with tile periods known on both sides and none of them the reference's, the doubled one or a
#: harmonic of them: the doubled tile did not get its size from those images (if the model had learned the
#: repeat from them, their period would show; ~2× less likely under this cause).
W_TILED_PERIOD_OTHER = -0.7
#: three or more such files: a systematic share of the data, not a stray image.
W_TILED_MANY = 0.5
#: only info-level periodic textures (a brick wall, a fence — possibly natural):
#: a hint (~2×), common in healthy datasets too.
W_TILED_NATURAL = 0.6
#: a dataset was given and analysed, with no tiled source in it.
W_DATASET_CLEAN = -1.5
#: masks that are interpolated (non-binary), misaligned with the image or of
#: another size train the model on the wrong region, the classic way a
#: re-texturing LoRA learns seams (~12×).
W_MASK_GEOMETRY = 2.5
#: empty / full / unreadable masks: the mask pipeline is broken, but these
#: teach the wrong region less directly (~4.5×).
W_MASK_OTHER = 1.5
W_MASK_MANY = 0.5
#: masks were given and all are valid.
W_MASKS_CLEAN = -1.5
#: LoRA norms collapse across checkpoints: the regulariser wins over the data (~7×);
#: when fewer than half of the modules collapse it may be a few dead layers: 60 %.
W_NORM_COLLAPSE, COLLAPSE_FEW_FACTOR = 2.0, 0.6
#: the loss sits on a shelf at a high level (≥ PLATEAU_HIGH × where it later goes,
#: or never leaves its start level): under-fitting, as over-regularisation does (~3×).
PLATEAU_HIGH, W_PLATEAU = 1.2, 1.2
#: weight decay ≥ 0.1 is 10× AdamW's usual 0.01 for LoRA (kohya / diffusers
#: defaults are 0.01 or 0.0001); 0.05–0.1 is high-ish; ≤ 0.01 is usual.
WD_HIGH, W_WD_HIGH, WD_RAISED, W_WD_RAISED, W_WD_LOW = 0.1, 1.5, 0.05, 0.7, -0.5
#: dropout / lora_dropout / network_dropout ≥ 0.3 is far above the usual 0–0.1.
DROPOUT_HIGH, W_DROPOUT_HIGH, DROPOUT_RAISED, W_DROPOUT_RAISED = 0.3, 1.0, 0.15, 0.5
#: checkpoints were compared and no norm collapsed.
W_CHECKPOINTS_CLEAN = -0.7
#: a log was analysed and the loss has no shelf.
W_NO_PLATEAU = -0.5

ADVICE_TILED = (
    "Remove or crop the tiled textures named in the evidence (or crop them to less than one tile so no repeat is "
    "visible), balance them with non-repeating photos, and caption them as 'seamless tile' if tiling is wanted only "
    "on request."
)
ADVICE_MASK = (
    "Rebuild the masks: binarise them (threshold, no antialiasing; resize with nearest-neighbour), make them the "
    "image's exact size, align them with their image after every crop/flip/bucket resize (apply the same transform "
    "to both), and drop empty or full masks."
)
ADVICE_OVERREG = (
    "Loosen the regularisation: weight decay back to ≈0.01 (or 0 for LoRA), dropout ≤ 0.1, raise rank/alpha or "
    "the LR a little, and check that the LoRA norms grow over the checkpoints instead of shrinking."
)

_GEOMETRY_PROBLEMS = {"non_binary", "misaligned", "size_mismatch"}
_DROPOUT_KEYS = ("dropout", "lora_dropout", "network_dropout", "rank_dropout", "module_dropout")


def _pair(value: Any) -> tuple[float | None, float | None] | None:
    """``(py, px)`` of a ``[py, px]`` period value, else None."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        py, px = (num(v) for v in value)
        return (py if py and py > 0 else None, px if px and px > 0 else None)
    return None


def _tile_period_hits(value: Any, refs: Sequence[Any]) -> list[float]:
    """The periods of a tile that match a reference/doubled period (or are ×2 of it / half of it).

    ``[py, px]`` pairs are compared axis by axis (a tile's y period with the references' y periods); a scalar
    on either side is compared with every period of the other.
    """
    out = []
    tile = _pair(value)
    for r in refs:
        ref = _pair(r)
        if tile is not None and ref is not None:
            cands = [(t, q) for t, q in zip(tile, ref) if t and q]
        else:
            cands = [(t, q) for t in periods(value) for q in periods(r)]
        out += [t for t, q in cands if periods_match(t, q) or harmonic_match(t, q) == 2]
    return out


def score_causes(findings: Sequence[Finding], trigger_indices: Sequence[int], run: RunData,
                 settings: Settings, *, priors: Mapping[str, float] | None = None) -> list[Cause]:
    """Score the three doubled-tiling causes.

    Parameters
    ----------
    findings : list of Finding
        All findings (indices refer to this list).
    trigger_indices : list of int
        The ``tiling_period_doubling`` findings.
    run : RunData
        Read for ``dataset_dir``/``masks_dir``/``checkpoints``/``log`` (what was analysed) and ``config``.
    settings : Settings
    priors : mapping of str to float, optional
        Cause id -> prior, replacing :data:`PRIORS` for those causes (keyword only).

    Returns
    -------
    list of Cause
        ``tiled_sources``, ``mask_preparation``, ``over_regularization`` (unsorted).
    """
    prior = {**PRIORS, **(priors or {})}
    tiled = CauseScore("tiling_doubling.tiled_sources", SYMPTOM,
                        prior["tiling_doubling.tiled_sources"], ADVICE_TILED)
    mask = CauseScore("tiling_doubling.mask_preparation", SYMPTOM,
                       prior["tiling_doubling.mask_preparation"], ADVICE_MASK)
    reg = CauseScore("tiling_doubling.over_regularization", SYMPTOM,
                      prior["tiling_doubling.over_regularization"], ADVICE_OVERREG)

    ref_periods: list[float] = []
    ref_pairs: list[Any] = []  # [py, px] of the references and of the doubled outputs
    for i in trigger_indices:
        f = findings[i]
        ref_periods += periods(pick(f, "period_px")) + periods(pick(f, "doubled_period_px"))
        ref_pairs += [pick(f, "period_px"), pick(f, "doubled_period_px")]

    # --- tiled sources
    srcs = indexed(findings, "dataset_tiled_source")
    warn = [(i, f) for i, f in srcs if f.severity != "info"]
    use = warn or srcs
    if use:
        k = 1.0 if warn else W_TILED_NATURAL / W_TILED
        files = sorted({str(pick(f, "file")) for _, f in use})
        shown = ", ".join(files[:3]) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "")
        kind = "seamlessly repeated tiles" if warn else "periodic textures (possibly natural)"
        tiled.add("tiled_sources", W_TILED * k, f"{len(files)} training image{'s are' if len(files) > 1 else ' is'} "
                  f"{kind}: {shown}.", [i for i, _ in use])
        tile_values = [pick(f, "period_px") for _, f in use]
        hit = next((p for v in tile_values for p in _tile_period_hits(v, ref_pairs)), None)
        if hit:
            tiled.add("tile_period", W_TILED_PERIOD * k,
                      f"their tile period ({fmt(hit)} px) matches the reference or doubled period "
                      f"({', '.join(fmt(r) for r in sorted(set(ref_periods)))} px).", [i for i, _ in use])
        elif ref_periods and any(periods(v) for v in tile_values):
            shown_p = sorted({fmt(p) for v in tile_values for p in periods(v)})
            tiled.add("tile_period_other", W_TILED_PERIOD_OTHER * k,
                      f"their tile periods ({', '.join(shown_p[:4])} px) are neither the reference's nor the doubled "
                      f"period ({', '.join(fmt(r) for r in sorted(set(ref_periods)))} px) nor a harmonic of them.",
                      [i for i, _ in use])
        if len(files) >= 3:
            tiled.add("tiled_many", W_TILED_MANY * k, f"{len(files)} files: a systematic share of the data.", [])
    elif run.dataset_dir is not None:
        tiled.add("dataset_clean", W_DATASET_CLEAN, "the training images were analysed and none is a tiled texture.")

    # --- mask preparation
    masks = indexed(findings, "dataset_invalid_mask")
    if masks:
        problems: dict[str, list[str]] = {}
        for _, f in masks:
            problems.setdefault(str(pick(f, "problem")), []).append(str(pick(f, "file")))
        geom = {p: v for p, v in problems.items() if p in _GEOMETRY_PROBLEMS}
        n = sum(len(v) for v in problems.values())
        desc = "; ".join(f"{p}: {len(v)} ({', '.join(v[:2])}{'…' if len(v) > 2 else ''})"
                         for p, v in sorted(problems.items()))
        k = max(severity_factor(f) for _, f in masks)
        mask.add("invalid_masks", (W_MASK_GEOMETRY if geom else W_MASK_OTHER) * k,
                 f"{n} mask{'s are' if n > 1 else ' is'} invalid — {desc}.", [i for i, _ in masks])
        if n >= 3:
            mask.add("masks_many", W_MASK_MANY * k, f"{n} bad masks: the mask pipeline, not one file.", [])
    elif run.masks_dir is not None:
        mask.add("masks_clean", W_MASKS_CLEAN, "the masks were checked and all are valid.")

    # --- over-regularisation
    collapse = indexed(findings, "checkpoint_norm_collapse", min_severity="warning")
    # the run's hyper-parameters: a tracker's config, else the trainer config found beside the logs
    log_config = getattr(run.log, "config", None) if run.log is not None else None
    config = {**(log_config if isinstance(log_config, dict) else {}),
              **(run.config if isinstance(run.config, dict) else {})}
    if collapse:
        f = collapse[-1][1]
        growth = num(pick(f, "growth"))
        mods = pick(f, "modules")
        nm = len(mods) if isinstance(mods, list) else None
        frac = num(f.evidence.get("fraction_of_modules"))
        broad = bool(f.evidence.get("over_regularisation")) or (frac is not None and frac >= 0.5)
        reg.add("norm_collapse", W_NORM_COLLAPSE * (1.0 if broad else COLLAPSE_FEW_FACTOR),
                f"the LoRA norms shrink across checkpoints (growth ×{fmt(growth)} at {pick(f, 'checkpoint')}"
                + (f", {nm} modules" if nm else "") + (f", {100 * frac:.0f} % of them" if frac is not None else "")
                + ").", [i for i, _ in collapse])
        for _, g in collapse:  # hyper-parameters the checkpoint metadata carries (kohya ss_*)
            meta = g.evidence.get("regularisation")
            if isinstance(meta, dict):
                config = {**meta, **config}
    elif run.checkpoints:
        reg.add("checkpoints_clean", W_CHECKPOINTS_CLEAN, "the checkpoints were compared and no LoRA norm collapses.")
    plateaus = indexed(findings, "loss_plateau", min_severity="warning")
    high = []
    for i, f in plateaus:
        ratio = num(f.evidence.get("ratio"))
        level, later = num(f.evidence.get("level")), num(f.evidence.get("later_level"))
        if ratio is None and level and later:
            ratio = level / later
        if ratio is None or ratio >= PLATEAU_HIGH or (later is not None and level is not None and later >= level):
            high.append((i, f, ratio))
    if high:
        i, f, ratio = max(high, key=lambda x: x[2] or 0)
        reg.add("high_plateau", W_PLATEAU,
                f"the loss sits on a shelf from step {pick(f, 'start_step')} to {pick(f, 'end_step')}"
                + (f" at ×{fmt(ratio)} the level it reaches later" if ratio else "") + ".", [j for j, _, _ in high])
    elif run.log is not None and run.log.loss is not None and not plateaus:
        reg.add("no_plateau", W_NO_PLATEAU, "the loss has no shelf: the model keeps learning.")
    wd = config_value(config, "weight_decay", "wd", "adam_weight_decay")
    if wd is not None:
        if wd >= WD_HIGH:
            reg.add("weight_decay", W_WD_HIGH,
                    f"weight decay is {fmt(wd)} (≥ {WD_HIGH}; LoRA usually uses ≤ 0.01).")
        elif wd >= WD_RAISED:
            reg.add("weight_decay", W_WD_RAISED, f"weight decay is {fmt(wd)}, above the usual ≤ 0.01.")
        elif wd <= 0.01:
            reg.add("weight_decay", W_WD_LOW, f"weight decay is {fmt(wd)}, a usual value.")
    drop = None
    for key in _DROPOUT_KEYS:
        v = config_value(config, key)
        if v is not None and (drop is None or v > drop[1]):
            drop = (key, v)
    if drop is not None:
        if drop[1] >= DROPOUT_HIGH:
            reg.add("dropout", W_DROPOUT_HIGH, f"{drop[0]} is {fmt(drop[1])} (≥ {DROPOUT_HIGH}; usually 0–0.1).")
        elif drop[1] >= DROPOUT_RAISED:
            reg.add("dropout", W_DROPOUT_RAISED, f"{drop[0]} is {fmt(drop[1])}, above the usual 0–0.1.")

    for c in (tiled, mask, reg):
        c.cite(trigger_indices)
    return [c.to_cause() for c in (tiled, mask, reg)]
