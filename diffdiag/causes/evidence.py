"""A small, readable likelihood model for the causes of a symptom.

Every cause starts from a *prior* (how often that cause is behind its symptom
in LoRA / diffusion fine-tuning, as practitioners report it) and adds named
*evidence terms*. A term's weight is a natural-log likelihood ratio,
``ln P(observation | cause) / P(observation | other causes)``: ``+1`` means the
observation is about e ≈ 2.7 times more likely under the cause, ``+2.3`` ten
times, ``-1`` means it speaks against the cause. The score is the logistic
posterior ``sigmoid(logit(prior) + Σ weights)`` in [0, 1]; causes of one
symptom are scored with the same scale, so their scores compare.

The weights used by the cause modules are written as named constants with a
comment saying where each comes from, so a reader can audit the reasoning that
produced a ranking: the evidence sentences of a :class:`~diffdiag.model.Cause`
list every term that moved its score, strongest first, with its numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..model import Cause, Finding

#: findings at ``info`` severity are hints (e.g. a natural brick texture): their
#: evidence counts half as much as a warning's.
INFO_DISCOUNT = 0.5
#: A cause whose mechanism the run is known to lack (:meth:`CauseScore.precondition_absent`, e.g.
#: batch-dependent normalisation in a model whose norm layers are all batch-independent) can only be the
#: cause if that knowledge is incomplete: its score is capped here, and :func:`diffdiag.causes.rank_causes`
#: keeps it below every cause of its symptom whose mechanism may be present.
PRECONDITION_CAP = 0.05


@dataclass
class Term:
    """One piece of evidence: a log-likelihood ratio and the sentence that explains it."""

    name: str
    weight: float
    sentence: str
    findings: list[int] = field(default_factory=list)


def logit(p: float) -> float:
    """``ln(p / (1 - p))`` for p in (0, 1)."""
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    """The logistic function, overflow-safe."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class CauseScore:
    """Accumulate evidence terms for one cause and turn them into a :class:`Cause`.

    Parameters
    ----------
    cause_id : str
        A contract cause id, e.g. ``"loss_spikes.corrupted_batch"``.
    symptom : str
        The symptom it explains (``"loss_spikes"``, ``"stripes"``, ``"tiling_doubling"``).
    prior : float
        Prior probability in (0, 1) before any evidence.
    advice : str
        What to try when this cause is the most probable one.
    """

    def __init__(self, cause_id: str, symptom: str, prior: float, advice: str) -> None:
        self.id = cause_id
        self.symptom = symptom
        self.prior = float(prior)
        self.advice = advice
        self.terms: list[Term] = []
        self.context: list[int] = []
        self.missing: tuple[str, str, list[int]] | None = None

    def add(self, name: str, weight: float, sentence: str, findings: Iterable[int] = ()) -> None:
        """Add one evidence term (``weight`` in natural-log likelihood-ratio units)."""
        self.terms.append(Term(name, float(weight), sentence, sorted({int(i) for i in findings})))

    def precondition_absent(self, name: str, sentence: str, findings: Iterable[int] = ()) -> None:
        """The mechanism this cause needs is known to be absent: cap its score (:data:`PRECONDITION_CAP`).

        The sentence leads the cause's evidence (``"Against (precondition): ..."``); the other
        terms still show, but cannot lift the score above the cap.
        """
        self.missing = (name, sentence, sorted({int(i) for i in findings}))

    def cite(self, findings: Iterable[int]) -> None:
        """Cite findings (e.g. the symptom's triggers) without adding evidence."""
        self.context.extend(int(i) for i in findings)

    @property
    def log_odds(self) -> float:
        return logit(self.prior) + sum(t.weight for t in self.terms)

    @property
    def score(self) -> float:
        p = sigmoid(self.log_odds)
        return min(p, PRECONDITION_CAP) if self.missing is not None else p

    def to_cause(self) -> Cause:
        """The :class:`Cause`: evidence sentences strongest first, the findings every term used."""
        terms = sorted((t for t in self.terms if t.weight != 0.0), key=lambda t: -abs(t.weight))
        sentences = []
        if self.missing is not None:
            sentences.append(f"Against (precondition): {self.missing[1]}")
        for t in terms:
            lead = "For" if t.weight > 0 else "Against"
            sentences.append(f"{lead} ({t.weight:+.1f}): {t.sentence}")
        if not sentences:
            sentences.append(f"No evidence for or against this cause was found; the score is its prior "
                             f"({self.prior:.2f}).")
        used: list[int] = []
        missing = self.missing[2] if self.missing is not None else []
        for i in [*self.context, *missing, *(i for t in terms for i in t.findings)]:
            if i not in used:
                used.append(i)
        return Cause(self.id, self.symptom, self.score, sentences, sorted(used), self.advice,
                     missing_precondition=self.missing[0] if self.missing is not None else None)


# ---------------------------------------------------------------- finding helpers

def severity_factor(f: Finding) -> float:
    """1 for warning/critical findings, :data:`INFO_DISCOUNT` for info."""
    return INFO_DISCOUNT if f.severity == "info" else 1.0


def indexed(findings: Sequence[Finding], *ids: str, min_severity: str = "info") -> list[tuple[int, Finding]]:
    """``(index, finding)`` for the findings whose id is one of ``ids``, at ``min_severity`` or above."""
    from ..model import SEVERITY_RANK

    floor = SEVERITY_RANK[min_severity]
    return [(i, f) for i, f in enumerate(findings) if f.id in ids and SEVERITY_RANK[f.severity] >= floor]


def num(value: Any) -> float | None:
    """A finite float from a number-like value, else None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def pick(f: Finding, *keys: str) -> Any:
    """The first of ``keys`` found in the finding's location, then its evidence."""
    for src in (f.location, f.evidence):
        for k in keys:
            if k in src and src[k] is not None:
                return src[k]
    return None


def period_along(value: Any, axis: str | None) -> float | None:
    """The period (same units) along which a pattern of ``axis`` varies.

    ``value`` is a scalar period or a ``[py, px]`` pair. "Vertical" stripes vary
    along x (docs/CONTRACT.md §3), so they take ``px``; "horizontal" ones take ``py``.
    With no axis, a pair gives its smaller finite period.
    """
    if isinstance(value, (list, tuple)):
        pair = [num(v) for v in value][:2]
        if len(pair) == 1:
            return pair[0] if pair[0] and pair[0] > 0 else None
        if len(pair) < 2:
            return None
        py, px = pair
        if axis == "vertical":
            return px if px and px > 0 else None
        if axis == "horizontal":
            return py if py and py > 0 else None
        finite = [p for p in (py, px) if p and p > 0]
        return min(finite) if finite else None
    x = num(value)
    return x if x and x > 0 else None


def periods(value: Any) -> list[float]:
    """All finite positive periods in a scalar or ``[py, px]`` value."""
    vals = value if isinstance(value, (list, tuple)) else [value]
    return [x for x in (num(v) for v in vals) if x and x > 0]


#: Two period estimates agree when they differ by at most this fraction. FFT
#: period estimates on a 256–1024 px frame are quantised to N/k, which is off by
#: a few per cent for periods of 30–100 px; latent periods in cells are small
#: numbers estimated to ±0.5 cell. 12 % covers both without letting 7 ↔ 8 cells
#: (a 13 % step) match.
PERIOD_REL_TOL = 0.12


def periods_match(a: float | None, b: float | None, rel_tol: float = PERIOD_REL_TOL) -> bool:
    """Whether two periods agree within ``rel_tol`` (relative to the larger)."""
    if not a or not b:
        return False
    return abs(a - b) <= rel_tol * max(a, b)


#: Two periods are harmonics when their ratio is within this of an integer 2–4. The tolerance is on the
#: *ratio*: ``|big / small − k| ≤ 0.12``, i.e. the larger period is k times the smaller within 12 % of the
#: smaller one. (A tolerance of 12 % of the larger period would let 19 px pass as 4 × 5 px — a ratio of
#: 3.8 — although a 5 px period repeats at 20 px, not 19.)
HARMONIC_RATIO_TOL = 0.12


def harmonic_match(a: float | None, b: float | None, ratio_tol: float = HARMONIC_RATIO_TOL) -> int | None:
    """The integer k ∈ {2, 3, 4} with ``|max(a, b) / min(a, b) − k| ≤ ratio_tol``, else None.

    Parameters
    ----------
    a, b : float or None
        Two periods (same units, positive).
    ratio_tol : float
        How far the ratio of the periods may be from k (unitless, :data:`HARMONIC_RATIO_TOL`).
    """
    if not a or not b or a <= 0 or b <= 0:
        return None
    ratio = max(a, b) / min(a, b)
    k = round(ratio)
    return k if 2 <= k <= 4 and abs(ratio - k) <= ratio_tol else None


def max_number(obj: Any) -> float | None:
    """The largest finite number anywhere in a (nested) dict/list/scalar, else None."""
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        vals = [v for v in (max_number(o) for o in obj) if v is not None]
        return max(vals) if vals else None
    return num(obj)


def _norm_key(k: Any) -> str:
    return str(k).lower().replace("-", "_").split("/")[-1].split(".")[-1]


def config_lookup(config: Any, *names: str, numeric: bool = False) -> tuple[str, Any] | None:
    """``(key, value)`` of the first hyper-parameter of a (possibly nested) run config named by any of ``names``.

    Looks at the top level first, then one level of nesting (``optimizer.weight_decay``,
    ``network_args.dropout``). Names match case-insensitively, ``-`` and ``_`` alike, on the
    last part of a flattened key (``train/lr``, ``optimizer.lr``). Earlier names win. With
    ``numeric`` only finite numbers (or numeric strings) are returned; otherwise any scalar
    that is not None or empty.
    """
    if not isinstance(config, dict):
        return None

    def ok(v: Any) -> Any:
        if isinstance(v, bool):
            return None if numeric else v
        if numeric:
            return num(v)
        if isinstance(v, (dict, list, tuple)) or v is None or (isinstance(v, str) and not v.strip()):
            return None
        return v

    levels = [config] + [v for v in config.values() if isinstance(v, dict)]
    for name in names:
        want = name.lower().replace("-", "_")
        for d in levels:
            for k, v in d.items():
                if _norm_key(k) == want:
                    x = ok(v)
                    if x is not None:
                        return str(k), x
    return None


def config_value(config: dict, *names: str) -> float | None:
    """A numeric hyper-parameter from a (possibly nested) run config, by any of ``names`` (:func:`config_lookup`)."""
    hit = config_lookup(config, *names, numeric=True)
    return None if hit is None else hit[1]


# ---------------------------------------------------------------- the run's training hyper-parameters

#: field -> the names trainers give it: diffusers' example scripts (``vars(args)`` in the tracker config /
#: hparams.yml), kohya sd-scripts (config files and ``ss_*`` safetensors metadata), SimpleTuner, ai-toolkit,
#: OneTrainer, the project's tiny trainer (``lr``, ``rank``, ``batch_size``, ``steps``)
HYPERPARAMETER_NAMES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("learning_rate", "unet_lr", "lr", "base_learning_rate", "learning_rate_unet"),
    "optimizer": ("optimizer_type", "optimizer", "optim", "optimizer_name"),
    "warmup_steps": ("lr_warmup_steps", "warmup_steps", "num_warmup_steps", "lr_warmup"),
    "batch_size": ("train_batch_size", "batch_size", "per_device_train_batch_size", "batch_size_per_device"),
    "grad_accum": ("gradient_accumulation_steps", "gradient_accumulation", "grad_accum"),
    "precision": ("mixed_precision", "precision", "train_dtype", "weight_dtype"),
    "rank": ("rank", "network_dim", "lora_rank", "lora_r", "r"),
    "alpha": ("lora_alpha", "network_alpha", "alpha"),
    "max_steps": ("max_train_steps", "max_steps", "num_train_steps", "train_steps", "steps"),
    "weight_decay": ("weight_decay", "adam_weight_decay", "wd"),
}
_TEXT_FIELDS = {"optimizer", "precision"}


@dataclass
class Hyperparameters:
    """The training hyper-parameters a cause weighs, each None when unknown.

    Read by :func:`hyperparameters` from the run's configuration (trainer config
    files and TensorBoard hparams beside the logs, the W&B config, MLflow
    params: ``RunData.config``) and from the checkpoints' metadata (kohya's
    ``ss_*`` keys); ``sources`` maps each field found to where it was read
    (``"config learning_rate"``, ``"checkpoint metadata ss_network_dim"``).
    """

    learning_rate: float | None = None
    optimizer: str | None = None
    warmup_steps: float | None = None
    batch_size: float | None = None
    grad_accum: float | None = None
    precision: str | None = None
    rank: float | None = None
    alpha: float | None = None
    max_steps: float | None = None
    weight_decay: float | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def effective_batch(self) -> float | None:
        """Batch size × gradient accumulation steps (None without a batch size)."""
        if self.batch_size is None:
            return None
        return self.batch_size * (self.grad_accum or 1.0)

    @property
    def scale(self) -> float | None:
        """alpha / rank (None unless both are known and the rank is positive)."""
        if self.rank and self.alpha is not None and self.rank > 0:
            return self.alpha / self.rank
        return None


def hyperparameters(run: Any) -> Hyperparameters:
    """The run's :class:`Hyperparameters` (config first, then the last checkpoint with ``ss_*`` metadata)."""
    hp = Hyperparameters()
    config: dict[str, Any] = {}
    log_config = getattr(getattr(run, "log", None), "config", None)
    if isinstance(log_config, dict):
        config.update(log_config)
    if isinstance(getattr(run, "config", None), dict):
        config.update(run.config)
    meta: dict[str, Any] = {}
    scan = getattr(run, "checkpoint_scan", None)
    for info in reversed(getattr(scan, "checkpoints", None) or []):
        if any(str(k).startswith("ss_") for k in info.metadata):
            meta = {str(k)[3:]: v for k, v in info.metadata.items() if str(k).startswith("ss_")}
            break
    for name, keys in HYPERPARAMETER_NAMES.items():
        numeric = name not in _TEXT_FIELDS
        for where, d in (("config", config), ("checkpoint metadata", meta)):
            hit = config_lookup(d, *keys, numeric=numeric)
            if hit is not None:
                setattr(hp, name, hit[1] if numeric else str(hit[1]))
                hp.sources[name] = f"{where} {('ss_' if where != 'config' else '') + hit[0]}"
                break
    if hp.optimizer is None:
        eight = config_lookup(config, "use_8bit_adam")
        if eight is not None and eight[1] is True:
            hp.optimizer, hp.sources["optimizer"] = "AdamW8bit", "config use_8bit_adam"
        elif config_lookup(config, "adam_beta1", "adam_weight_decay", "adam_epsilon") is not None:
            hp.optimizer, hp.sources["optimizer"] = "AdamW", "config adam_* arguments"
    return hp
