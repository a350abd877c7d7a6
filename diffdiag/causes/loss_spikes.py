"""Causes of loss spikes (seed §7.3): a corrupted batch, a learning rate that is too high, an EMA gap.

The symptom is observed when the raw loss spikes, diverges or goes non-finite,
or when the logged smoothed/EMA loss breaks away from the raw loss
(``loss_spike``, ``loss_divergence``, ``loss_nonfinite``, ``ema_divergence``),
or when the checkpoints exploded or hold non-finite weights
(``checkpoint_norm_explosion``, ``checkpoint_nonfinite``) — a blown-up LoRA
is the same instability whether or not the logged loss shows it.

Besides the loss, the evidence takes the weights (exploded / non-finite
checkpoints, and whether they broke where the loss diverged) and the run's
configured hyper-parameters (:func:`~diffdiag.causes.evidence.hyperparameters`:
LR against the usual range for LoRA, warm-up, alpha/rank, precision, batch size),
each a named term with its numbers.

How the three causes differ, as the evidence terms below encode it:

- **corrupted batch** — bad samples (broken captions, NaN/garbage pixels,
  wrong latents) hit the loss whenever they are drawn: spikes are *isolated*,
  recur with the *same sample ids*, the loss returns to its level right after,
  and their rate does not follow the learning rate.
- **learning rate too high** — the optimiser overshoots: spikes come in bursts
  when the LR is high, the loss level after a spike is *higher* than before,
  the loss diverges to a new level or to NaN and stays there, the gradient norm
  grows.
- **EMA gap** — the smoothed/EMA loss (or EMA weights restored from a stale
  state, a wrong decay, a reset) breaks away from the raw loss while the raw
  loss itself is fine.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..model import Cause, Finding, RunData, Series, Settings
from ..textfmt import fmt
from .evidence import CauseScore, Hyperparameters, hyperparameters, indexed, num, pick, severity_factor

SYMPTOM = "loss_spikes"

# ----------------------------------------------------------------- priors
# Among LoRA/diffusion runs whose loss spikes, practitioners' reports (kohya /
# diffusers / SimpleTuner issue trackers) split roughly evenly between data
# problems and optimiser instability; a broken EMA is the rarer explanation.
PRIOR_CORRUPTED = 0.35
PRIOR_LR = 0.35
PRIOR_EMA = 0.20
#: cause id -> prior (``rank_causes(..., priors=...)`` replaces some of them)
PRIORS = {
    "loss_spikes.corrupted_batch": PRIOR_CORRUPTED,
    "loss_spikes.learning_rate_too_high": PRIOR_LR,
    "loss_spikes.ema_gap": PRIOR_EMA,
}

# ----------------------------------------------------------------- weights (ln likelihood ratios)
#: loss_sample_correlation is a significance test (p < 0.01 after correction)
#: that specific samples raise the loss; under LR instability the spiking
#: batches are a random draw, so this is ~20× (e^3) more likely with a bad sample.
W_SAMPLE_CORRELATION = 3.0
#: the same test would rarely fire with a healthy dataset and a too-high LR.
W_SAMPLE_CORRELATION_AGAINST_LR = -1.0
#: ... but the correlated samples may raise the loss without making the spikes: if they made them, nearly
#: every spike batch would hold one of them. When they are in fewer than SPIKES_WITH_SAMPLES_MIN of the spike
#: batches (of at least MIN_SPIKES_WITH_IDS spikes whose batch is logged), the spikes' timing is not theirs:
#: that cancels most of W_SAMPLE_CORRELATION (P(≤ 25 % of the spikes | the samples cause them) is small), and
#: the correlation then says nothing against the other causes.
SPIKES_WITH_SAMPLES_MIN, MIN_SPIKES_WITH_IDS, W_SAMPLES_NOT_IN_SPIKES = 0.25, 3, -2.0
#: our own binomial test over the spike steps only (fewer steps than the
#: analyzer's test, hence weaker): the same ids recur in spike batches.
W_RECURRING_IDS = 2.0
#: median after/before level ratio of the spikes ≤ LEVEL_FLAT: the loss returns
#: to its level at once — what a single bad batch does (≈ 2× more likely than
#: under an LR overshoot, which often, not always, leaves the weights worse).
LEVEL_FLAT, W_LEVEL_FLAT, W_LEVEL_FLAT_AGAINST_LR = 1.15, 0.8, -0.4
#: median ratio ≥ LEVEL_UP: every spike leaves the loss higher — optimiser damage.
LEVEL_UP, W_LEVEL_UP, W_LEVEL_UP_AGAINST_CORRUPTED = 1.25, 1.3, -1.0
#: spike rate at high LR ≥ LR_RATE_RATIO × the rate at low LR, binomially
#: significant (p < 0.01): the LR drives the spikes. A bad sample is drawn at
#: any LR, so this is ~e^2 ≈ 7× more likely under an LR cause.
LR_RATE_RATIO, W_LR_RATE = 3.0, 2.0
#: ... only suggestive (0.01 ≤ p < 0.05, e.g. few spikes): half the weight.
W_LR_RATE_WEAK = 1.0
#: ≥ 4 spikes whose rate is flat in LR (p ≥ 0.2): against an LR cause.
W_LR_RATE_FLAT = -0.6
#: most spikes (≥ 50 %) have another spike within BURST_STEPS steps: bursts are
#: the signature of an unstable optimiser; isolated spikes that of single batches.
BURST_STEPS, W_BURSTS = 5, 0.7
#: a divergence (the loss jumps to a higher level and stays) is "the usual face
#: of an LR that is too high" (docs/CONTRACT.md §3): ~12× (e^2.5) more likely.
W_DIVERGENCE, W_DIVERGENCE_AGAINST_CORRUPTED = 2.5, -1.0
#: loss non-finite from some step to the end: the optimiser blew up (LR / fp16
#: overflow); a few isolated non-finite steps: one bad batch (NaN pixels or latents).
W_NONFINITE_PERSISTENT, W_NONFINITE_ISOLATED = 2.0, 1.2
#: a non-finite tail must last ≥ TAIL_MIN points and ≥ TAIL_MIN_FRACTION of the run.
TAIL_MIN, TAIL_MIN_FRACTION = 10, 0.05
#: gradient-norm spikes that do not coincide with loss spikes, or a gradient
#: norm that grows ≥ GRAD_GROWTH× over the run: the optimiser is unstable.
W_GRAD_SPIKES, GRAD_GROWTH, W_GRAD_GROWTH = 0.8, 2.0, 1.0
#: ema_divergence is the EMA gap by definition (the EMA leaves the band the raw
#: loss supports): ~20× more likely under an EMA problem.
W_EMA_DIVERGENCE = 3.0
#: ... and when the raw loss shows nothing at all, the raw-loss causes lose.
W_EMA_ONLY, W_RAW_CLEAN_AGAINST = 1.0, -1.5
#: the EMA broke where the raw loss diverged too: it is following the raw loss.
W_EMA_FOLLOWS_RAW = -1.0
#: the EMA "breaks" while the raw loss is non-finite: a consequence, not an EMA fault.
W_EMA_IN_NONFINITE = -2.5
#: raw-loss symptoms with no EMA break: the EMA is not the problem.
W_NO_EMA_BREAK = -2.0

# ----------------------------------------------------------------- the weights (checkpoints)
#: the LoRA weights exploded (checkpoint_norm_explosion, warning+). Adam-type optimisers move every weight
#: by about the LR per step whatever the gradient, so one bad batch moves the weights one step: weights that
#: outgrow the layers they adapt are the optimiser's doing (~12×, e^2.5, under a too-high LR).
W_CKPT_EXPLOSION, W_CKPT_EXPLOSION_AGAINST_CORRUPTED = 2.5, -1.0
#: NaN/Inf weights: an overflowing update (too-high LR, fp16) or a NaN batch applied without a guard.
W_CKPT_NONFINITE_LR, W_CKPT_NONFINITE_CORRUPTED = 1.0, 0.4
#: the weights blew up in the checkpoint interval where the loss diverged: one event seen twice.
W_CKPT_TIMING = 0.5
#: a smoothed/EMA loss does not change the trained weights: broken weights speak against an EMA gap.
W_CKPT_AGAINST_EMA = -1.5

# ----------------------------------------------------------------- the configuration
#: Learning rates used for LoRA fine-tuning of diffusion models with Adam-type optimisers (each weight moves
#: by about the LR per step, so the numbers compare across trainers):
#:   * diffusers examples: train_text_to_image_lora.py --learning_rate default 1e-4, its README trains at
#:     1e-4; the SDXL LoRA READMEs (text_to_image, dreambooth) use 1e-4 (full fine-tunes: 1e-6–1e-5);
#:   * kohya sd-scripts, docs/train_network.md: --learning_rate / --unet_lr 1e-4, --text_encoder_lr 1e-5
#:     (community configs: unet_lr 1e-4–2e-4, text_encoder_lr 5e-5);
#:   * adaptive optimisers (Prodigy, D-Adaptation) take --learning_rate 1.0 as a multiplier (diffusers'
#:     Flux DreamBooth README): their LR is not compared.
#: So 1e-5–1e-3 is the usual range; from LR_HIGH (3× its top) an LR is high, from LR_FAR (10×) far too high
#: (each step then moves every LoRA weight by ≥ 1 % of a typical layer weight's scale).
LR_USUAL_LOW, LR_USUAL_HIGH, LR_HIGH, LR_FAR = 1e-5, 1e-3, 3e-3, 1e-2
W_LR_FAR, W_LR_HIGH, W_LR_USUAL, W_LR_LOW = 2.0, 1.0, -0.7, -1.0
#: optimisers that set their own step size (their configured LR is a multiplier, usually 1)
ADAPTIVE_OPTIMIZERS = ("prodigy", "dadapt", "d-adapt", "dadaptation", "adafactor")
#: a high LR with no warm-up hits the fresh adapter at full size from the first step.
W_NO_WARMUP = 0.3
#: alpha / rank ≥ SCALE_HIGH multiplies every update of ΔW (diffusers uses alpha = rank, kohya alpha ≤ rank).
SCALE_HIGH, W_SCALE_HIGH = 4.0, 0.5
#: fp16 overflows beyond 65504: with non-finite or exploded values, a too-high LR in fp16 is the usual path.
W_FP16 = 0.5
#: a bad sample's share of the batch sets how far it moves the batch loss: with an effective batch of at most
#: SMALL_BATCH it dominates the step (a visible spike); from LARGE_BATCH on it is diluted.
SMALL_BATCH, W_SMALL_BATCH, LARGE_BATCH, W_LARGE_BATCH = 2, 0.3, 32, -0.3

ADVICE_CORRUPTED = (
    "Find the samples named in the evidence (or the batches at the spike steps) and inspect them: broken or "
    "empty captions, NaN/inf or all-black pixels, wrong resolution buckets, corrupt cached latents. Remove or "
    "re-encode them (delete the latent/text-encoder cache), and log sample ids per step to confirm the spikes stop."
)
ADVICE_LR = (
    "Lower the learning rate (start with 2–3× lower for the UNet LoRA; text-encoder LR lower still), lengthen the "
    "warm-up, and clip gradients (max_grad_norm 1.0). For AdamW try a larger epsilon or betas (0.9, 0.99); in fp16 "
    "use bf16 or a loss scaler. Resume from the last checkpoint before the first spike."
)
ADVICE_EMA = (
    "Check the EMA, not the model: it was restored from a stale state, reset, or uses a wrong decay/update "
    "interval. Re-initialise the EMA from the current weights when resuming, save/restore it with the checkpoint, "
    "and use a decay matched to the run length (e.g. 0.999 for a few thousand steps)."
)


def _level_ratio(loss: Series, step: int, window: int = 50, gap: int = 3) -> float | None:
    """Median loss in ``window`` points after a step over the median before it (``gap`` points skipped)."""
    v = loss.values
    i = int(np.searchsorted(loss.steps, step))
    before = v[max(0, i - gap - window): max(0, i - gap)]
    after = v[i + gap + 1: i + gap + 1 + window]
    before = before[np.isfinite(before)]
    after = after[np.isfinite(after)]
    if before.size < 5 or after.size < 5:
        return None
    b, a = float(np.median(before)), float(np.median(after))
    if not b > 0 or not a > 0:
        return None
    return a / b


def _spike_level_ratios(spikes: list[tuple[int, Finding]], run: RunData) -> list[float]:
    loss = run.log.loss if run.log is not None else None
    out = []
    for _, f in spikes:
        step = num(pick(f, "step"))
        r = None
        if loss is not None and step is not None and len(loss) > 20:
            r = _level_ratio(loss, int(step))
        if r is None:
            before, after = num(f.evidence.get("level_before")), num(f.evidence.get("level_after"))
            if before and after and before > 0 and after > 0:
                r = after / before
        if r is not None:
            out.append(r)
    return out


def _lr_at(lr: Series, steps: np.ndarray) -> np.ndarray:
    ok = np.isfinite(lr.values)
    if ok.sum() < 2:
        return np.full(steps.shape, np.nan)
    return np.interp(steps, lr.steps[ok], lr.values[ok])


def _lr_rate_test(spike_steps: list[int], run: RunData) -> tuple[float, float, float, int] | None:
    """Spike rate at high vs low LR: (rate ratio, binomial p-value, LR threshold, n spikes) or None.

    Steps are split at the midpoint between the 5th and 95th LR percentile; both
    halves must hold ≥ 10 % of the steps (a constant LR says nothing).
    """
    if run.log is None or run.log.lr is None or run.log.loss is None or len(spike_steps) < 2:
        return None
    steps = run.log.loss.steps
    lr = _lr_at(run.log.lr, steps)
    if not np.isfinite(lr).any():
        return None
    lo, hi = np.nanpercentile(lr, [5, 95])
    if not hi > 0 or hi < 1.5 * max(lo, 0.0) or hi - lo <= 0:
        return None
    thr = 0.5 * (lo + hi)
    high = lr >= thr
    n_h, n = int(high.sum()), int(high.size)
    if n_h < 0.1 * n or n - n_h < 0.1 * n:
        return None
    spike_lr = _lr_at(run.log.lr, np.asarray(spike_steps, dtype=np.int64))
    k_h = int((spike_lr >= thr).sum())
    k = len(spike_steps)
    rate_h = (k_h + 0.5) / n_h
    rate_l = (k - k_h + 0.5) / (n - n_h)
    from scipy.stats import binomtest

    p = float(binomtest(k_h, k, n_h / n, alternative="greater").pvalue)
    return rate_h / rate_l, p, float(thr), k


def _recurring_ids(spike_steps: list[int], run: RunData) -> tuple[str, int, int, float] | None:
    """The sample id most over-represented in spike batches: (id, spikes with it, spikes, corrected p)."""
    if run.log is None or not run.log.sample_ids:
        return None
    logged = run.log.sample_ids
    spiky = [s for s in spike_steps if s in logged]
    if len(spiky) < 2:
        return None
    n_steps = len(logged)
    totals: dict[str, int] = {}
    for ids in logged.values():
        for sid in set(map(str, ids)):
            totals[sid] = totals.get(sid, 0) + 1
    in_spikes: dict[str, int] = {}
    for s in spiky:
        for sid in set(map(str, logged[s])):
            in_spikes[sid] = in_spikes.get(sid, 0) + 1
    from scipy.stats import binom

    best = None
    for sid, k in in_spikes.items():
        if k < 2:
            continue
        p = totals[sid] / n_steps
        pv = float(binom.sf(k - 1, len(spiky), p)) * max(1, len(totals))  # Bonferroni over all ids
        if best is None or pv < best[3]:
            best = (sid, k, len(spiky), min(1.0, pv))
    return best


def _spike_batches(spikes: list[tuple[int, Finding]], run: RunData) -> list[set[str]]:
    """The sample ids in each spike event's batches (the log's ``sample_ids`` over the event's steps, else the
    finding's own ``sample_ids``); an empty set where the batch is unknown."""
    logged = run.log.sample_ids if run.log is not None and run.log.sample_ids else {}
    out = []
    for _, f in spikes:
        peak = num(pick(f, "step"))
        lo, hi = num(f.evidence.get("start_step")), num(f.evidence.get("end_step"))
        steps = range(int(lo), int(hi) + 1) if lo is not None and hi is not None and 0 <= hi - lo <= 50 else \
            ([int(peak)] if peak is not None else [])
        ids = {str(i) for s in steps for i in logged.get(s, ())}
        if not ids:
            own = f.evidence.get("sample_ids")
            ids = {str(i) for i in own} if isinstance(own, (list, tuple)) else set()
        out.append(ids)
    return out


def _corr_details(f: Finding) -> tuple[list[str], float | None, float | None]:
    """(sample ids, best ratio, best p-value) of a loss_sample_correlation finding."""
    ids = pick(f, "sample_ids") or []
    ids = [str(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]
    ratio = pval = None
    ev = f.evidence
    per = ev.get("per_sample") or ev.get("samples") or {}
    rows = []
    if isinstance(per, dict):
        rows = [dict(v, id=k) for k, v in per.items() if isinstance(v, dict)]
    elif isinstance(per, list):
        rows = [r for r in per if isinstance(r, dict)]
    else:
        rows = [v for v in ev.values() if isinstance(v, dict)]
    for r in rows:
        rr, pp = num(r.get("ratio")), num(r.get("p_value", r.get("p")))
        if rr is not None and (ratio is None or rr > ratio):
            ratio = rr
        if pp is not None and (pval is None or pp < pval):
            pval = pp
    ratio = ratio if ratio is not None else num(ev.get("ratio"))
    pval = pval if pval is not None else num(ev.get("p_value"))
    return ids, ratio, pval


def _nonfinite_tail(f: Finding, run: RunData) -> int | None:
    """The step from which the loss stays non-finite to the end (≥ 90 % of the remaining points), else None."""
    loss = run.log.loss if run.log is not None else None
    if loss is not None and len(loss):
        bad = ~np.isfinite(loss.values)
        if not bad[-1]:
            return None
        good = np.flatnonzero(~bad)
        start = int(good[-1]) + 1 if good.size else 0
        # allow a few finite points inside the broken tail (a loss scaler skipping steps)
        for i in np.flatnonzero(bad):
            if bad[i:].mean() >= 0.9:
                start = min(start, int(i))
                break
        # a tail is a lasting state: at least TAIL_MIN points and TAIL_MIN_FRACTION of the run (a bad
        # batch that happens to be the last step is no blow-up)
        if bad.size - start < max(TAIL_MIN, TAIL_MIN_FRACTION * bad.size):
            return None
        return int(loss.steps[start])
    steps = pick(f, "steps") or []
    if isinstance(steps, list) and len(steps) >= 10:
        tail = [int(s) for s in steps if num(s) is not None]
        i = len(tail) - 1
        while i > 0 and tail[i] - tail[i - 1] == 1:
            i -= 1
        return tail[i] if len(tail) - i >= 10 else None
    return None


def _grad_growth(run: RunData) -> float | None:
    """Median grad norm in the last third over the first third (after a 5 % warm-up)."""
    g = run.log.grad_norm if run.log is not None else None
    if g is None or len(g) < 30:
        return None
    v = g.values[int(0.05 * len(g)):]
    v = v[np.isfinite(v)]
    if v.size < 30:
        return None
    third = v.size // 3
    a, b = float(np.median(v[:third])), float(np.median(v[-third:]))
    return b / a if a > 0 else None


def _where(f: Finding) -> str:
    """``name (step s)`` of a checkpoint finding."""
    step = f.evidence.get("step")
    return f"{pick(f, 'checkpoint')}" + (f" (step {step})" if step is not None else "")


def _explosion_sentence(f: Finding) -> str:
    ev = f.evidence
    n, m = ev.get("n_oversized"), ev.get("n_compared")
    med, growth = num(ev.get("median_relative_size")), num(pick(f, "growth"))
    size = (f"the median module's ΔW is {fmt(med)}x the norm of its layer ({n} of {m} modules oversized)"
            if med is not None and n is not None else "")
    peak = num(ev.get("peak_median_relative_size"))
    if peak is not None and ev.get("peak_checkpoint") not in (None, pick(f, "checkpoint")) and peak > (med or 0):
        size += f", {fmt(peak)}x by {ev['peak_checkpoint']}"
    prev = ev.get("previous_checkpoint")
    prev_txt = f"{prev}" + (f" (step {ev.get('previous_step')})" if ev.get("previous_step") is not None else "")
    if ev.get("basis") in ("size", "growth+size") and growth is None:
        if (ev.get("n_checkpoints") or 1) > 1:
            return f"the LoRA weights had already blown up at the first checkpoint {_where(f)}: {size}."
        return f"the LoRA file {_where(f)} has blown up: {size}."
    if ev.get("basis") in ("size", "growth+size"):
        return (f"the LoRA weights blew up between {prev_txt} and {_where(f)} (×{fmt(growth)}): {size}.")
    mods = pick(f, "modules") or []
    return (f"{len(mods)} LoRA module{'s' if len(mods) != 1 else ''} grew ×{fmt(growth)} between {prev_txt} and "
            f"{_where(f)}.")


def _checkpoint_terms(explosions: list[tuple[int, Finding]], ck_nonfinite: list[tuple[int, Finding]],
                      divs: list[tuple[int, Finding]], corrupted: CauseScore, lr: CauseScore, ema: CauseScore) -> None:
    """Evidence from the weights: exploded or non-finite checkpoints, and when they broke against the loss."""
    if explosions:
        idx = [j for j, _ in explosions]
        i, f = explosions[0]
        lr.add("checkpoint_explosion", W_CKPT_EXPLOSION * severity_factor(f), _explosion_sentence(f), idx)
        corrupted.add("checkpoint_explosion", W_CKPT_EXPLOSION_AGAINST_CORRUPTED,
                      f"one bad batch moves the weights by one optimiser step, but the LoRA weights blew up "
                      f"({_where(f)}).", idx)
        step, prev = num(f.evidence.get("step")), num(f.evidence.get("previous_step"))
        for j, d in divs:
            ds = num(pick(d, "step"))
            if ds is not None and step is not None and ds <= step and (prev is None or ds > prev):
                lr.add("checkpoint_timing", W_CKPT_TIMING,
                       f"the loss diverged at step {int(ds)}, in the interval where the weights blew up "
                       f"(steps {int(prev)}–{int(step)})." if prev is not None else
                       f"the loss diverged at step {int(ds)}, before step {int(step)} where the weights are found "
                       "blown up.", [i, j])
                break
    if ck_nonfinite:
        idx = [j for j, _ in ck_nonfinite]
        i, f = ck_nonfinite[0]
        mods = pick(f, "modules") or []
        text = f"checkpoint {_where(f)} holds NaN/Inf weights in {len(mods)} module{'s' if len(mods) != 1 else ''}"
        lr.add("checkpoint_nonfinite", W_CKPT_NONFINITE_LR, text + ": an update overflowed.", idx)
        corrupted.add("checkpoint_nonfinite", W_CKPT_NONFINITE_CORRUPTED,
                      text + ", as a NaN batch applied without a guard leaves them.", idx)
    if explosions or ck_nonfinite:
        ema.add("weights_broke", W_CKPT_AGAINST_EMA,
                "the trained weights themselves broke, which a smoothed/EMA loss cannot do.",
                [j for j, _ in explosions + ck_nonfinite])


def _source(hp: Hyperparameters, name: str) -> str:
    src = hp.sources.get(name)
    return f" ({src})" if src else ""


def _config_terms(hp: Hyperparameters, run: RunData, lr: CauseScore, corrupted: CauseScore, *, broken: bool,
                  loss_spiky: bool) -> None:
    """Evidence from the configured hyper-parameters: LR against the usual range, warm-up, alpha/rank,
    precision and batch size (``hp`` from :func:`~diffdiag.causes.evidence.hyperparameters`)."""
    rate, where = hp.learning_rate, _source(hp, "learning_rate")
    if rate is None and run.log is not None and run.log.lr is not None:
        vals = run.log.lr.values[np.isfinite(run.log.lr.values)]
        if vals.size:
            rate, where = float(vals.max()), f" (the peak of the logged '{run.log.lr.key}')"
    opt = (hp.optimizer or "").lower()
    adaptive = any(a in opt for a in ADAPTIVE_OPTIMIZERS)
    sgd = "sgd" in opt
    high = False
    if rate is not None and rate > 0 and not adaptive and not sgd:
        usual = f"the usual {fmt(LR_USUAL_LOW)}–{fmt(LR_USUAL_HIGH)} for LoRA with Adam-type optimisers"
        opt_txt = f", optimizer {hp.optimizer}" if hp.optimizer else ""
        if rate >= LR_FAR:
            high = True
            lr.add("configured_lr", W_LR_FAR,
                   f"the learning rate is {fmt(rate)}{where}{opt_txt}: {fmt(rate / LR_USUAL_HIGH)}x the top of "
                   f"{usual}.")
        elif rate >= LR_HIGH:
            high = True
            lr.add("configured_lr", W_LR_HIGH,
                   f"the learning rate is {fmt(rate)}{where}{opt_txt}: {fmt(rate / LR_USUAL_HIGH)}x the top of "
                   f"{usual}.")
        elif LR_USUAL_LOW <= rate <= LR_USUAL_HIGH:
            lr.add("configured_lr", W_LR_USUAL, f"the learning rate is {fmt(rate)}{where}{opt_txt}, within {usual}.")
        elif rate < LR_USUAL_LOW:
            lr.add("configured_lr", W_LR_LOW, f"the learning rate is {fmt(rate)}{where}{opt_txt}, below {usual}.")
    if high and hp.warmup_steps is not None and hp.warmup_steps == 0:
        lr.add("no_warmup", W_NO_WARMUP,
               f"there is no LR warm-up (warm-up steps 0{_source(hp, 'warmup_steps')}): the high LR hits the fresh "
               "adapter from the first step.")
    scale, alpha, rank = hp.scale, hp.alpha, hp.rank
    if scale is None and run.checkpoint_scan is not None:
        cmp = run.checkpoint_scan.comparison
        if cmp.scales and cmp.shapes:
            scale = float(np.median(list(cmp.scales.values())))
            rank = float(np.median([sh[2] for sh in cmp.shapes.values()]))
            alpha = scale * rank
    if scale is not None and scale >= SCALE_HIGH:
        lr.add("lora_scale", W_SCALE_HIGH,
               f"alpha / rank = {fmt(scale)} (alpha {fmt(alpha)}, rank {fmt(rank)}) multiplies every update of ΔW "
               f"by {fmt(scale)}.")
    prec = (hp.precision or "").lower()
    if broken and ("fp16" in prec or "float16" in prec) and "bf16" not in prec:
        lr.add("fp16", W_FP16,
               f"training runs in fp16 (precision {hp.precision}{_source(hp, 'precision')}), which overflows beyond "
               "65504: a too-high LR gets there first.")
    batch = hp.effective_batch
    if loss_spiky and batch is not None and batch > 0:
        accum = f" × {fmt(hp.grad_accum)} accumulation steps" if hp.grad_accum and hp.grad_accum > 1 else ""
        if batch <= SMALL_BATCH:
            corrupted.add("small_batch", W_SMALL_BATCH,
                          f"the effective batch is {fmt(batch)} (batch size {fmt(hp.batch_size)}{accum}): one bad "
                          f"sample is {fmt(100.0 / batch)} % of a batch, so it spikes the loss on its own.")
        elif batch >= LARGE_BATCH:
            corrupted.add("large_batch", W_LARGE_BATCH,
                          f"the effective batch is {fmt(batch)} (batch size {fmt(hp.batch_size)}{accum}): one bad "
                          f"sample is at most {fmt(100.0 / batch)} % of a batch, diluted in the loss.")


def score_causes(findings: Sequence[Finding], trigger_indices: Sequence[int], run: RunData,
                 settings: Settings, *, priors: Mapping[str, float] | None = None) -> list[Cause]:
    """Score the three loss-spike causes.

    Parameters
    ----------
    findings : list of Finding
        All findings of the analysis (indices refer to this list).
    trigger_indices : list of int
        The findings that made the symptom observed.
    run : RunData
        The run (its log is read for levels, LR and sample ids).
    settings : Settings
    priors : mapping of str to float, optional
        Cause id -> prior, replacing :data:`PRIORS` for those causes (keyword only).

    Returns
    -------
    list of Cause
        ``corrupted_batch``, ``learning_rate_too_high``, ``ema_gap`` (unsorted).
    """
    prior = {**PRIORS, **(priors or {})}
    corrupted = CauseScore("loss_spikes.corrupted_batch", SYMPTOM,
                            prior["loss_spikes.corrupted_batch"], ADVICE_CORRUPTED)
    lr = CauseScore("loss_spikes.learning_rate_too_high", SYMPTOM,
                     prior["loss_spikes.learning_rate_too_high"], ADVICE_LR)
    ema = CauseScore("loss_spikes.ema_gap", SYMPTOM,
                      prior["loss_spikes.ema_gap"], ADVICE_EMA)

    spikes = indexed(findings, "loss_spike", min_severity="warning")
    divs = indexed(findings, "loss_divergence", min_severity="warning")
    emas = indexed(findings, "ema_divergence", min_severity="warning")
    nonfinite = indexed(findings, "loss_nonfinite")
    corr = indexed(findings, "loss_sample_correlation", min_severity="warning")
    grads = indexed(findings, "grad_norm_spike", min_severity="warning")
    spike_idx = [i for i, _ in spikes]
    spike_steps = sorted(int(s) for s in (num(pick(f, "step")) for _, f in spikes) if s is not None)
    raw_symptoms = bool(spikes or divs or nonfinite)

    # --- corrupted batch: recurring samples, isolated spikes, level unchanged
    if corr:
        i, f = max(corr, key=lambda x: x[1].score)
        ids, ratio, pval = _corr_details(f)
        shown = ", ".join(ids[:5]) + (f" (+{len(ids) - 5} more)" if len(ids) > 5 else "")
        detail = []
        if ratio is not None:
            detail.append(f"loss ×{fmt(ratio)} when present")
        if pval is not None:
            detail.append(f"p = {fmt(pval, 2)}")
        corrupted.add("sample_correlation", W_SAMPLE_CORRELATION * severity_factor(f),
                      f"samples {shown or '(unnamed)'} raise the loss whenever they are in the batch"
                      + (f" ({', '.join(detail)})" if detail else "") + ".", [j for j, _ in corr])
        known = [b for b in _spike_batches(spikes, run) if b]
        hits = sum(bool(b & set(ids)) for b in known)
        if ids and len(known) >= MIN_SPIKES_WITH_IDS and hits < SPIKES_WITH_SAMPLES_MIN * len(known):
            corrupted.add("samples_not_in_spikes", W_SAMPLES_NOT_IN_SPIKES,
                          f"those samples are in only {hits} of the {len(known)} spike batches: they raise the loss, "
                          "but the spikes are not theirs.", spike_idx + [j for j, _ in corr])
        else:
            lr.add("sample_correlation", W_SAMPLE_CORRELATION_AGAINST_LR,
                   "the high-loss steps share specific samples, which an unstable optimiser would not pick out.",
                   [j for j, _ in corr])
    elif spike_steps:
        rec = _recurring_ids(spike_steps, run)
        if rec is not None and rec[3] < 0.01:
            sid, k, n, pv = rec
            corrupted.add("recurring_ids", W_RECURRING_IDS,
                          f"sample {sid} is in {k} of the {n} spike batches (binomial p = {fmt(pv, 2)}, "
                          "corrected for the number of samples).", spike_idx)

    ratios = _spike_level_ratios(spikes, run)
    if ratios:
        med = float(np.median(ratios))
        n = len(ratios)
        if med <= LEVEL_FLAT:
            corrupted.add("level_flat", W_LEVEL_FLAT,
                          f"the loss returns to its level right after the spikes (median level after/before "
                          f"×{med:.2f} over {n} spike{'s' if n > 1 else ''}).", spike_idx)
            lr.add("level_flat", W_LEVEL_FLAT_AGAINST_LR,
                   f"the spikes leave no lasting damage (level after/before ×{med:.2f}).", spike_idx)
        elif med >= LEVEL_UP:
            lr.add("level_up", W_LEVEL_UP,
                   f"the loss level is higher after the spikes than before (median ×{med:.2f} over {n} "
                   f"spike{'s' if n > 1 else ''}).", spike_idx)
            corrupted.add("level_up", W_LEVEL_UP_AGAINST_CORRUPTED,
                          f"a bad batch would not raise the loss level for good (×{med:.2f} after the spikes).",
                          spike_idx)

    if len(spike_steps) >= 4:
        arr = np.asarray(spike_steps)
        gaps = np.diff(arr)
        near = np.zeros(arr.size, dtype=bool)
        near[:-1] |= gaps <= BURST_STEPS
        near[1:] |= gaps <= BURST_STEPS
        if near.mean() >= 0.5:
            lr.add("bursts", W_BURSTS,
                   f"{int(near.sum())} of {arr.size} spikes come in bursts (another spike within "
                   f"{BURST_STEPS} steps).", spike_idx)

    test = _lr_rate_test(spike_steps, run)
    if test is not None:
        ratio, p, thr, k = test
        if ratio >= LR_RATE_RATIO and p < 0.05:
            lr.add("lr_rate", W_LR_RATE if p < 0.01 else W_LR_RATE_WEAK,
                   f"spikes are {ratio:.1f}× more frequent at LR ≥ {fmt(thr)} than below it "
                   f"({k} spikes, binomial p = {fmt(p, 2)}).", spike_idx)
        elif k >= 4 and p >= 0.2:
            lr.add("lr_rate_flat", W_LR_RATE_FLAT,
                   f"the spike rate does not rise with the learning rate (×{ratio:.1f} at LR ≥ {fmt(thr)}, "
                   f"p = {fmt(p, 2)}, {k} spikes).", spike_idx)

    if divs:
        i, f = max(divs, key=lambda x: x[1].score)
        before, after = num(f.evidence.get("level_before")), num(f.evidence.get("level_after"))
        ratio = num(f.evidence.get("ratio")) or (after / before if before and after and before > 0 else None)
        step = pick(f, "step")
        lr_at = num(f.evidence.get("lr_at_step", f.evidence.get("lr")))
        if lr_at is None and run.log is not None and run.log.lr is not None and step is not None:
            lr_at = float(_lr_at(run.log.lr, np.asarray([int(step)]))[0])
            lr_at = lr_at if math.isfinite(lr_at) else None
        text = f"the loss diverges at step {step}"
        if ratio is not None:
            text += f" to a level ×{fmt(ratio)} higher and stays there"
        if lr_at is not None:
            text += f" (LR {fmt(lr_at)} at that step)"
        lr.add("divergence", W_DIVERGENCE * severity_factor(f), text + ".", [j for j, _ in divs])
        corrupted.add("divergence", W_DIVERGENCE_AGAINST_CORRUPTED,
                      f"a bad batch does not move the loss to a new level for good (step {step}).",
                      [j for j, _ in divs])

    tail_from = None
    if nonfinite:
        i, f = nonfinite[0]
        first = pick(f, "step")
        tail_from = _nonfinite_tail(f, run)
        if tail_from is not None:
            lr.add("nonfinite_persistent", W_NONFINITE_PERSISTENT,
                   f"the loss turns non-finite at step {tail_from} and never recovers (the optimiser blew up).", [i])
        else:
            steps = pick(f, "steps") or [first]
            steps = steps if isinstance(steps, list) else [first]
            n = len(steps)
            corrupted.add("nonfinite_isolated", W_NONFINITE_ISOLATED,
                          f"the loss is non-finite at {n} isolated step{'s' if n > 1 else ''} (first {first}) "
                          "and finite again right after — bad batches, not a blown-up optimiser.", [i])
            if not corr:
                rec = _recurring_ids([int(x) for x in steps if num(x) is not None], run)
                if rec is not None and rec[3] < 0.01:
                    sid, k, m, pv = rec
                    corrupted.add("nonfinite_ids", W_RECURRING_IDS,
                                  f"sample {sid} is in {k} of the {m} batches with a non-finite loss (binomial "
                                  f"p = {fmt(pv, 2)}, corrected for the number of samples).", [i])

    if grads:
        gsteps = [num(pick(f, "step")) for _, f in grads]
        lone = [s for s in gsteps if s is not None and not any(abs(s - t) <= 2 for t in spike_steps)]
        if lone:
            lr.add("grad_spikes", W_GRAD_SPIKES,
                   f"the gradient norm spikes at {len(lone)} step{'s' if len(lone) > 1 else ''} where the loss "
                   f"does not (first {int(lone[0])}).", [i for i, _ in grads])
    growth = _grad_growth(run)
    if growth is not None and growth >= GRAD_GROWTH:
        lr.add("grad_growth", W_GRAD_GROWTH,
               f"the gradient norm grows ×{growth:.1f} from the first to the last third of the run.",
               [i for i, _ in grads])

    # --- the weights and the configuration
    explosions = indexed(findings, "checkpoint_norm_explosion", min_severity="warning")
    ck_nonfinite = indexed(findings, "checkpoint_nonfinite")
    _checkpoint_terms(explosions, ck_nonfinite, divs, corrupted, lr, ema)
    hp = hyperparameters(run)
    _config_terms(hp, run, lr, corrupted, broken=bool(explosions or ck_nonfinite or tail_from is not None),
                  loss_spiky=bool(spikes or nonfinite))

    # --- EMA gap: the smoothed series breaks while the raw loss does not
    if emas:
        i, f = max(emas, key=lambda x: x[1].score)
        start, end = pick(f, "start_step"), pick(f, "end_step")
        gap = num(f.evidence.get("max_gap"))
        key = pick(f, "key")
        ema.add("ema_divergence", W_EMA_DIVERGENCE * severity_factor(f),
                f"the smoothed loss{f' {key!r}' if key else ''} leaves the band of the raw loss from step {start} "
                f"to {end}" + (f" (largest gap {fmt(gap)})" if gap is not None else "") + ".",
                [j for j, _ in emas])
        if not raw_symptoms:
            ema.add("raw_clean", W_EMA_ONLY, "the raw loss itself shows no spike, divergence or non-finite value.",
                    [j for j, _ in emas])
            for c in (corrupted, lr):
                c.add("raw_clean", W_RAW_CLEAN_AGAINST,
                      "the raw loss shows no spike, divergence or non-finite value; only the smoothed series breaks.",
                      [j for j, _ in emas])
        overlap = [j for j, d in divs
                   if start is not None and end is not None and num(pick(d, "step")) is not None
                   and num(start) - 50 <= num(pick(d, "step")) <= num(end)]
        if overlap:
            ema.add("ema_follows_raw", W_EMA_FOLLOWS_RAW,
                    "the EMA breaks where the raw loss diverges too, so it is following the raw loss.", overlap)
        if tail_from is not None and num(end) is not None and num(end) >= tail_from:
            ema.add("ema_in_nonfinite", W_EMA_IN_NONFINITE,
                    f"the EMA break reaches into the steps where the raw loss is non-finite (from step {tail_from}): "
                    "there is no raw loss to compare it with.", [j for j, _ in nonfinite])
    elif raw_symptoms:
        has_ema = run.log is not None and run.log.ema is not None
        ema.add("no_ema_break", W_NO_EMA_BREAK,
                "the logged smoothed loss follows the raw loss (no EMA divergence)." if has_ema
                else "no smoothed/EMA loss is logged, and the raw loss itself spikes.", [])

    for c in (corrupted, lr, ema):
        c.cite(trigger_indices)
    return [c.to_cause() for c in (corrupted, lr, ema)]
