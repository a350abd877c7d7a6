"""Every cause evidence sentence is true of the data: one test per cause module.

``loss_spikes``: every sentence of every cause is matched to the template that wrote it
and each number in it is recomputed here from the run itself (the logged series, the
findings, the configuration) — a sentence that matches no template fails. The runs are a
real too-high-LR tiny LoRA training (logs, ``checkpoint-N/`` folders, ``hparams.yml``) and
the fast loss scenarios (corrupted samples, stale EMA). ``stripes`` and
``tiling_doubling``: on the fast combo scenarios (real analyzers on drawn artifacts) and
on hand-built cases, every number in a sentence is one of the cited findings', the
configuration's or the module's documented constants (a latent period may be quoted in
pixels: cells × ``--vae-scale``), and a period called a harmonic or a match is one.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from benchmarks.scenarios import fast_scenarios
from diffdiag.causes import evidence as E
from diffdiag.causes import loss_spikes as LS
from diffdiag.model import Finding, RunData, Settings
from diffdiag.textfmt import fmt

from .lora_runs import cached_run

FAST = fast_scenarios()
_NUM = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)"


def close(token: str, value, digits: int = 3) -> bool:
    """``token`` (as printed) is ``value`` to the printed precision."""
    if value is None:
        return False
    x, v = float(token), float(value)
    if not math.isfinite(v) or not math.isfinite(x):
        return x == v or (math.isnan(x) and math.isnan(v))
    if token in (fmt(v, d) for d in range(1, 6)) or token in (f"{v:.{d}f}" for d in range(0, 4)):
        return True
    dec = len(token.split("e")[0].split(".")[1]) if "." in token.split("e")[0] else 0
    scale = 10 ** int(token.split("e")[1]) if "e" in token else 1.0
    return abs(x - v) <= 0.51 * 10 ** (-dec) * scale + 1e-12


def _analyze(argv_or_paths):
    import diffdiag
    from diffdiag.cli import analyze_parser, settings_from_args, spec_from_args

    ns = analyze_parser("diffdiag analyze").parse_args(argv_or_paths)
    settings = settings_from_args(ns)
    run = diffdiag.load(spec_from_args(ns), settings=settings)
    return run, diffdiag.analyze(run, settings), settings


# ------------------------------------------------------------------ loss spikes


def _level_ratio(loss, step, window=50, gap=3):
    v = loss.values
    i = int(np.searchsorted(loss.steps, step))
    b, a = v[max(0, i - gap - window):max(0, i - gap)], v[i + gap + 1:i + gap + 1 + window]
    b, a = b[np.isfinite(b)], a[np.isfinite(a)]
    return float(np.median(a) / np.median(b)) if b.size >= 5 and a.size >= 5 else None


class LossFacts:
    """What the loss-spike sentences may say, measured from the run and its findings."""

    def __init__(self, run: RunData, findings: list[Finding]):
        self.run, self.f = run, findings
        self.by = lambda *ids: [f for f in findings if f.id in ids and f.severity != "info"]
        self.spikes = self.by("loss_spike")
        self.spike_steps = sorted(int(f.location["step"]) for f in self.spikes)
        loss = run.log.loss if run.log is not None else None
        ratios = []
        for f in self.spikes:   # the log's levels around the spike, else the finding's own before/after levels
            r = _level_ratio(loss, int(f.location["step"])) if loss is not None and len(loss) > 20 else None
            b, a = f.evidence.get("level_before"), f.evidence.get("level_after")
            if r is None and b and a and b > 0 and a > 0:
                r = a / b
            if r is not None:
                ratios.append(r)
        self.level_ratio = float(np.median(ratios)) if ratios else None
        self.n_ratios = len(ratios)
        self.hp = E.hyperparameters(run)

    def value_at(self, series, step):
        i = int(np.searchsorted(series.steps, step, side="right")) - 1
        return float(series.values[i])


def _check_loss_sentence(text: str, F: LossFacts) -> None:
    """Assert ``text`` is true of the run (it must match one of the templates of causes/loss_spikes.py)."""
    run, hp = F.run, F.hp
    m = re.fullmatch(r"(?:For|Against) \([-+]\d+\.\d\): (.*)", text) or re.fullmatch(
        r"Against \(precondition\): (.*)", text)
    assert m, text
    s = m.group(1)

    def ck_finding(name):
        (f,) = [f for f in F.f if f.id.startswith("checkpoint") and f.location.get("checkpoint") == name]
        return f

    rules = [
        (r"the loss diverges at step (\d+) to a level ×(" + _NUM + r") higher and stays there(?: \(LR (" + _NUM
         + r") at that step\))?\.",
         lambda g: (lambda d: close(g[1], d.evidence["ratio"]) and (
             g[2] is None or close(g[2], F.value_at(run.log.lr, int(g[0])))))(
             next(d for d in F.by("loss_divergence") if d.location["step"] == int(g[0])))),
        (r"a bad batch does not move the loss to a new level for good \(step (\d+)\)\.",
         lambda g: any(d.location["step"] == int(g[0]) for d in F.by("loss_divergence"))),
        (r"the loss level is higher after the spikes than before \(median ×(" + _NUM + r") over (\d+) spikes?\)\.",
         lambda g: close(g[0], F.level_ratio) and int(g[1]) == F.n_ratios and F.level_ratio >= LS.LEVEL_UP),
        (r"a bad batch would not raise the loss level for good \(×(" + _NUM + r") after the spikes\)\.",
         lambda g: close(g[0], F.level_ratio) and F.level_ratio >= LS.LEVEL_UP),
        (r"the loss returns to its level right after the spikes \(median level after/before ×(" + _NUM
         + r") over (\d+) spikes?\)\.",
         lambda g: close(g[0], F.level_ratio) and int(g[1]) == F.n_ratios and F.level_ratio <= LS.LEVEL_FLAT),
        (r"the spikes leave no lasting damage \(level after/before ×(" + _NUM + r")\)\.",
         lambda g: close(g[0], F.level_ratio) and F.level_ratio <= LS.LEVEL_FLAT),
        (r"(\d+) of (\d+) spikes come in bursts \(another spike within 5 steps\)\.",
         lambda g: int(g[1]) == len(F.spike_steps) and int(g[0]) == sum(
             any(0 < abs(a - b) <= LS.BURST_STEPS for b in F.spike_steps) for a in F.spike_steps)),
        (r"spikes are (" + _NUM + r")× more frequent at LR ≥ (" + _NUM + r") than below it \((\d+) spikes, "
         r"binomial p = (" + _NUM + r")\)\.", lambda g: int(g[2]) == len(F.spike_steps) and float(g[0]) >= 3),
        (r"the spike rate does not rise with the learning rate \(×(" + _NUM + r") at LR ≥ (" + _NUM + r"), p = ("
         + _NUM + r"), (\d+) spikes\)\.",
         lambda g: int(g[3]) == len(F.spike_steps) and float(g[2]) >= 0.2 and close(g[1], float(np.mean(
             np.nanpercentile(run.log.lr.values, [5, 95]))))),
        (r"the gradient norm spikes at (\d+) steps? where the loss does not \(first (\d+)\)\.",
         lambda g: (lambda lone: len(lone) == int(g[0]) and lone[0] == int(g[1]))(
             [int(f.location["step"]) for f in F.by("grad_norm_spike")
              if not any(abs(f.location["step"] - t) <= 2 for t in F.spike_steps)])),
        (r"the gradient norm grows ×(" + _NUM + r") from the first to the last third of the run\.",
         lambda g: (lambda v: close(g[0], np.median(v[-(v.size // 3):]) / np.median(v[:v.size // 3]), 2))(
             (lambda x: x[np.isfinite(x)])(run.log.grad_norm.values[int(0.05 * len(run.log.grad_norm)):]))),
        (r"samples (.+) raise the loss whenever they are in the batch(?: \((.*)\))?\.",
         lambda g: all(i in F.by("loss_sample_correlation")[0].location["sample_ids"]
                       for i in g[0].split(" (+")[0].split(", "))),
        (r"the high-loss steps share specific samples, which an unstable optimiser would not pick out\.",
         lambda g: bool(F.by("loss_sample_correlation"))),
        (r"those samples are in only (\d+) of the (\d+) spike batches: they raise the loss, but the spikes are "
         r"not theirs\.",
         lambda g: (lambda bad, known: int(g[1]) == len(known) and int(g[0]) == sum(bool(k & bad) for k in known)
                    and int(g[0]) < LS.SPIKES_WITH_SAMPLES_MIN * len(known))(
             set(F.by("loss_sample_correlation")[0].location["sample_ids"]),
             [{str(i) for i in run.log.sample_ids.get(s, [])} for s in F.spike_steps
              if run.log.sample_ids.get(s)])),
        (r"the loss turns non-finite at step (\d+) and never recovers \(the optimiser blew up\)\.",
         lambda g: (lambda v, st: np.mean(~np.isfinite(v[st >= int(g[0])])) >= 0.9)(
             run.log.loss.values, run.log.loss.steps)),
        (r"the loss is non-finite at (\d+) isolated steps? \(first (\d+)\) and finite again right after — bad "
         r"batches, not a blown-up optimiser\.",
         lambda g: (lambda bad: len(bad) == int(g[0]) and bad[0] == int(g[1]))(
             run.log.loss.steps[~np.isfinite(run.log.loss.values)].tolist())),
        (r"sample (\S+) is in (\d+) of the (\d+) (?:spike batches|batches with a non-finite loss) \(binomial p = ("
         + _NUM + r"), corrected for the number of samples\)\.",
         lambda g: sum(g[0] in run.log.sample_ids.get(s, []) for s in (
             F.spike_steps if "spike" in s else run.log.loss.steps[~np.isfinite(run.log.loss.values)].tolist()))
         == int(g[1])),
        (r"the smoothed loss(?: '([^']+)')? leaves the band of the raw loss from step (\d+) to (\d+)(?: \(largest "
         r"gap (" + _NUM + r")\))?\.",
         lambda g: any(f.location["start_step"] == int(g[1]) and f.location["end_step"] == int(g[2])
                       and (g[3] is None or close(g[3], f.evidence["max_gap"])) for f in F.by("ema_divergence"))),
        (r"the raw loss itself shows no spike, divergence or non-finite value\.",
         lambda g: not F.by("loss_spike", "loss_divergence", "loss_nonfinite")),
        (r"the raw loss shows no spike, divergence or non-finite value; only the smoothed series breaks\.",
         lambda g: not F.by("loss_spike", "loss_divergence", "loss_nonfinite") and bool(F.by("ema_divergence"))),
        (r"the logged smoothed loss follows the raw loss \(no EMA divergence\)\.",
         lambda g: run.log.ema is not None and not F.by("ema_divergence")),
        (r"no smoothed/EMA loss is logged, and the raw loss itself spikes\.",
         lambda g: run.log is None or run.log.ema is None),
        (r"the EMA breaks where the raw loss diverges too, so it is following the raw loss\.",
         lambda g: bool(F.by("ema_divergence")) and bool(F.by("loss_divergence"))),
        # --- the weights
        (r"the LoRA weights had already blown up at the first checkpoint (\S+) \(step (\d+)\): the median module's "
         r"ΔW is (" + _NUM + r")x the norm of its layer \((\d+) of (\d+) modules oversized\)(?:, (" + _NUM
         + r")x by (\S+))?\.",
         lambda g: (lambda f: f.evidence["first_checkpoint"] and f.evidence["step"] == int(g[1])
                    and close(g[2], f.evidence["median_relative_size"]) and int(g[3]) == f.evidence["n_oversized"]
                    and int(g[4]) == f.evidence["n_compared"]
                    and (g[5] is None or (close(g[5], f.evidence["peak_median_relative_size"])
                                          and g[6] == f.evidence["peak_checkpoint"])))(ck_finding(g[0]))),
        (r"the LoRA file (\S+)(?: \(step (\d+)\))? has blown up: the median module's ΔW is (" + _NUM
         + r")x the norm of its layer \((\d+) of (\d+) modules oversized\)\.",
         lambda g: (lambda f: f.evidence["n_checkpoints"] == 1 and close(g[2], f.evidence["median_relative_size"])
                    and int(g[3]) == f.evidence["n_oversized"] and int(g[4]) == f.evidence["n_compared"])(
             ck_finding(g[0]))),
        (r"the LoRA weights blew up between (\S+) \(step (\d+)\) and (\S+) \(step (\d+)\) \(×(" + _NUM
         + r")\): the median module's ΔW is (" + _NUM + r")x the norm of its layer \((\d+) of (\d+) modules "
         r"oversized\)(?:, (" + _NUM + r")x by (\S+))?\.",
         lambda g: (lambda f: f.evidence["previous_checkpoint"] == g[0] and f.evidence["previous_step"] == int(g[1])
                    and f.evidence["step"] == int(g[3]) and close(g[4], f.location["growth"])
                    and close(g[5], f.evidence["median_relative_size"]) and int(g[6]) == f.evidence["n_oversized"]
                    and int(g[7]) == f.evidence["n_compared"]
                    and (g[8] is None or close(g[8], f.evidence["peak_median_relative_size"])))(ck_finding(g[2]))),
        (r"(\d+) LoRA modules? grew ×(" + _NUM + r") between (\S+)(?: \(step (\d+)\))? and (\S+)(?: \(step (\d+)\))?\.",
         lambda g: (lambda f: len(f.location["modules"]) == int(g[0]) and close(g[1], f.location["growth"])
                    and f.evidence["previous_checkpoint"] == g[2])(ck_finding(g[4]))),
        (r"one bad batch moves the weights by one optimiser step, but the LoRA weights blew up \((\S+)(?: \(step "
         r"(\d+)\))?\)\.", lambda g: ck_finding(g[0]).id == "checkpoint_norm_explosion"),
        (r"the loss diverged at step (\d+), (?:in the interval where the weights blew up \(steps (\d+)–(\d+)\)|"
         r"before step (\d+) where the weights are found blown up)\.",
         lambda g: any(d.location["step"] == int(g[0]) for d in F.by("loss_divergence")) and (
             (g[1] is not None and int(g[1]) < int(g[0]) <= int(g[2])) or (g[3] is not None and int(g[0]) <= int(g[3])))),
        (r"checkpoint (\S+)(?: \(step \d+\))? holds NaN/Inf weights in (\d+) modules?(?:: an update overflowed| as "
         r"a NaN batch applied without a guard leaves them|, as a NaN batch applied without a guard leaves them)\.",
         lambda g: len(ck_finding(g[0]).location["modules"]) == int(g[1])),
        (r"the trained weights themselves broke, which a smoothed/EMA loss cannot do\.",
         lambda g: bool(F.by("checkpoint_norm_explosion", "checkpoint_nonfinite"))),
        # --- the configuration
        (r"the learning rate is (" + _NUM + r") \(([^)]*)\)(?:, optimizer (\S+))?(?:: (" + _NUM + r")x the top of the "
         r"usual 1e-05–0.001 for LoRA with Adam-type optimisers|, within the usual 1e-05–0.001 for LoRA with "
         r"Adam-type optimisers|, below the usual 1e-05–0.001 for LoRA with Adam-type optimisers)\.",
         lambda g: (close(g[0], hp.learning_rate) if g[1].startswith(("config", "checkpoint")) else
                    close(g[0], np.nanmax(run.log.lr.values)))
         and (g[2] is None or g[2] == hp.optimizer) and (g[3] is None or close(g[3], float(g[0]) / LS.LR_USUAL_HIGH))
         and (g[3] is None or float(g[0]) >= LS.LR_HIGH)),
        (r"there is no LR warm-up \(warm-up steps 0(?: \([^)]*\))?\): the high LR hits the fresh adapter from the "
         r"first step\.", lambda g: hp.warmup_steps == 0),
        (r"the effective batch is (" + _NUM + r") \(batch size (" + _NUM + r")(?: × (" + _NUM + r") accumulation "
         r"steps)?\): one bad sample is (?:at most )?(" + _NUM + r") % of a batch, .*\.",
         lambda g: close(g[0], hp.effective_batch) and close(g[1], hp.batch_size)
         and close(g[3], 100.0 / hp.effective_batch)),
        (r"alpha / rank = (" + _NUM + r") \(alpha (" + _NUM + r"), rank (" + _NUM + r")\) multiplies every update of "
         r"ΔW by (" + _NUM + r")\.", lambda g: close(g[0], float(g[1]) / float(g[2])) and float(g[0]) >= LS.SCALE_HIGH),
        (r"training runs in fp16 \(precision ([^)]*?)(?: \([^)]*\))?\), which overflows beyond 65504: a too-high LR "
         r"gets there first\.", lambda g: "16" in str(hp.precision)),
    ]
    for pat, ok in rules:
        mm = re.fullmatch(pat, s)
        if mm:
            assert ok(mm.groups()), f"false: {text!r}"
            return
    raise AssertionError(f"no template matches (unchecked sentence): {text!r}")


def _check_loss_causes(run, diag):
    causes = [c for c in diag.causes if c.symptom == "loss_spikes"]
    assert causes
    facts = LossFacts(run, diag.findings)
    for c in causes:
        for sentence in c.evidence:
            _check_loss_sentence(sentence, facts)
    return causes


@pytest.fixture(scope="module")
def too_high(tmp_path_factory):
    return cached_run(tmp_path_factory, fault="lr_too_high")


def test_loss_spike_sentences_are_true_of_a_real_training(too_high):
    run, diag, _ = _analyze(["--logdir", str(too_high.logs), "--checkpoints", str(too_high.out)])
    causes = _check_loss_causes(run, diag)
    names = {t.split(":")[0] for c in causes for t in c.evidence}
    assert len(names) >= 2 and causes[0].id == "loss_spikes.learning_rate_too_high"
    # the numbers the LR sentence quotes are the configuration's
    assert any("learning rate is 0.1 (config learning_rate)" in e for e in causes[0].evidence)


@pytest.mark.parametrize("name", ["loss/corrupted/b2-s0", "loss/stale-ema/s1", "loss/lr-too-high/j2.2-s1",
                                  "competing/loss/lr-divergence+mild-samples/csv"])
def test_loss_spike_sentences_are_true_of_the_scenarios(name, tmp_path):
    run, diag, _ = _analyze(FAST[name].build(tmp_path))
    _check_loss_causes(run, diag)


def test_loss_spike_sentences_from_checkpoints_and_config_alone(tmp_path):
    """Hand-built checkpoint findings and a kohya-style config: every sentence still checks out."""
    from diffdiag.model import RunLog, Series

    steps = np.arange(400)
    loss = np.exp(np.random.default_rng(0).normal(-2.5, 0.8, 400))
    log = RunLog(scalars={"loss": Series("loss", steps, loss)}, loss_key="loss",
                 config={"learning_rate": 5e-3, "lr_warmup_steps": 0, "train_batch_size": 1,
                         "gradient_accumulation_steps": 2, "mixed_precision": "fp16", "network_dim": 8,
                         "network_alpha": 64, "optimizer_type": "AdamW8bit"})
    run = RunData(log=log)
    findings = [Finding("checkpoint_norm_explosion", "critical", 0.9, "x",
                        {"checkpoint": "lora-step00000300.safetensors", "modules": ["a", "b"], "growth": 7.5},
                        {"basis": "growth+size", "step": 300, "previous_checkpoint": "lora-step00000200.safetensors",
                         "previous_step": 200, "median_relative_size": 3.3, "n_oversized": 2, "n_compared": 12,
                         "peak_median_relative_size": 4.1, "peak_checkpoint": "lora.safetensors",
                         "first_checkpoint": False, "n_checkpoints": 4}),
                Finding("checkpoint_nonfinite", "critical", 1.0, "x",
                        {"checkpoint": "lora.safetensors", "modules": ["a"]}, {"step": None})]
    from diffdiag.causes import rank_causes

    causes = [c for c in rank_causes(findings, run, Settings()) if c.symptom == "loss_spikes"]
    facts = LossFacts(run, findings)
    text = " | ".join(e for c in causes for e in c.evidence)
    for c in causes:
        for sentence in c.evidence:
            _check_loss_sentence(sentence, facts)
    assert causes[0].id == "loss_spikes.learning_rate_too_high"
    for needle in ("learning rate is 0.005", "5x the top", "no LR warm-up", "alpha / rank = 8",
                   "fp16", "between lora-step00000200.safetensors (step 200)"):
        assert needle in text, needle


# ------------------------------------------------------------------ stripes and tiling


def _numbers(findings: list[Finding], config: dict) -> list[float]:
    """Every number in the findings (location and evidence, nested), the lengths of their lists, the config."""
    out: list[float] = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            out.append(float(len(x)))
            for v in x:
                walk(v)
        elif isinstance(x, (int, float, np.number)) and not isinstance(x, bool):
            out.append(float(x))

    for f in findings:
        walk(f.location)
        walk(f.evidence)
    walk(config)
    out.append(float(len(findings)))
    return out


def _constants(module) -> list[float]:
    return [float(v) for k, v in vars(module).items() if k.isupper() and isinstance(v, (int, float))]


def _check_period_sentences(module, causes, findings, run, settings):
    """Every number is the data's (or cells × vae_scale, or a constant); harmonics and matches are true."""
    scale = float(settings.vae_scale)
    allowed = _constants(module) + _constants(E) + [0.0, 0.01, 0.1, 1.0, scale]
    for c in causes:
        cited = [findings[i] for i in c.findings]
        data = _numbers(cited, run.config) + _numbers(findings, {})
        pool = data + [x * scale for x in data] + [x / scale for x in data] + [100 * x for x in data] + allowed
        for sentence in c.evidence:
            body = re.sub(r"^(?:For|Against) \([-+]?\d+\.\d\): |^Against \(precondition\): ", "", sentence)
            body = re.sub(r"\b[\w.-]*\d[\w.-]*\.(?:png|jpg|jpeg|webp|safetensors|npy|npz|pt)\b", "FILE", body)
            body = re.sub(r"\b(?:channels?|files?)\b", lambda m: m.group(0), body)
            for tok in re.findall(r"(?<![\w.])" + _NUM + r"(?![\w])", body):
                tok = tok.rstrip(".")
                assert any(close(tok, v) for v in pool), f"{c.id}: {tok} in {sentence!r} is not the data's"
            for a, b in re.findall(r"period (" + _NUM + r") px, a harmonic of the stripe period \((" + _NUM + r") px\)",
                                   body):
                assert E.harmonic_match(float(a), float(b)), sentence
            for a, b in re.findall(r"\((" + _NUM + r") px\) is a ×\d harmonic of the stripe period (" + _NUM + r") px",
                                   body):
                assert E.harmonic_match(float(a), float(b)), sentence
            for a, b in re.findall(r"= (" + _NUM + r") px matches the \w* ?stripe period (" + _NUM + r") px", body):
                assert E.periods_match(float(a), float(b)), sentence


@pytest.mark.parametrize("name", [n for n in FAST if n.startswith("combo/stripes/")][:4])
def test_stripes_sentences_are_true_of_the_scenarios(name, tmp_path):
    from diffdiag.causes import stripes

    run, diag, settings = _analyze(FAST[name].build(tmp_path))
    causes = [c for c in diag.causes if c.symptom == "stripes"]
    assert causes
    _check_period_sentences(stripes, causes, diag.findings, run, settings)


@pytest.mark.parametrize("name", [n for n in FAST if n.startswith("combo/tiling/")][::2]
                         + [n for n in FAST if n.startswith("competing/tiling/")])
def test_tiling_sentences_are_true_of_the_scenarios(name, tmp_path):
    from diffdiag.causes import tiling

    run, diag, settings = _analyze(FAST[name].build(tmp_path))
    causes = [c for c in diag.causes if c.symptom == "tiling_doubling"]
    assert causes
    _check_period_sentences(tiling, causes, diag.findings, run, settings)


def _F(fid, severity="warning", location=None, evidence=None):
    return Finding(fid, severity, 0.8, f"{fid} (hand-built)", dict(location or {}), dict(evidence or {}))


def test_a_harmonic_is_claimed_only_for_an_integer_ratio():
    """19 px against 5 px stripes is no harmonic (ratio 3.8); 20 px is (×4)."""
    from diffdiag.causes import rank_causes, stripes

    stripe = _F("stripes", location={"image": "out.png", "axis": "vertical", "period_px": 5.0, "bbox": [0, 0, 9, 9]})
    for period, harmonic in ((19.0, False), (20.0, True), (10.4, True), (13.0, False)):
        data = _F("dataset_tiled_source", "info", {"file": "a.png", "period_px": [period, period], "axis": "vertical"})
        findings = [stripe, data]
        run = RunData(dataset_dir=None)
        causes = [c for c in rank_causes(findings, run, Settings()) if c.symptom == "stripes"]
        aug = next(c for c in causes if c.id == "stripes.augmentation_pattern")
        said = any("harmonic" in e for e in aug.evidence)
        assert said == harmonic, (period, aug.evidence)
        _check_period_sentences(stripes, causes, findings, run, Settings())


def test_batchnorm_cause_without_batch_dependent_norms_never_ranks_first():
    """A GroupNorm/LayerNorm model: batch-dependent normalisation cannot be the cause, whatever else is seen."""
    from diffdiag.causes import rank_causes, stripes

    findings = [_F("stripes", location={"image": "out.png", "axis": "horizontal", "period_px": None,
                                        "bbox": [0, 0, 9, 9]}),
                _F("latent_batch_shift", location={"files": ["a.npy", "b.npy"], "channels": [0, 2], "array": "pre"},
                   evidence={"distance": 4.2}),
                _F("latent_stats_drift", location={"files": ["a.npy"], "channels": [1]})]
    for norms, absent in ((["GroupNorm", "LayerNorm"], True), ([], True), (["BatchNorm2d", "GroupNorm"], False)):
        run = RunData(model_info={"normalization_layers": norms})
        causes = [c for c in rank_causes(findings, run, Settings()) if c.symptom == "stripes"]
        bn = next(c for c in causes if c.id == "stripes.batchnorm_imbalance")
        if absent:
            assert causes[-1] is bn and bn.score <= min(c.score for c in causes if c is not bn)
            assert bn.score <= E.PRECONDITION_CAP and bn.evidence[0].startswith("Against (precondition): ")
            assert bn.missing_precondition is not None
        else:
            assert causes[0] is bn and bn.missing_precondition is None
        assert [c.score for c in causes] == sorted((c.score for c in causes), reverse=True)
        _check_period_sentences(stripes, causes, findings, run, Settings())
