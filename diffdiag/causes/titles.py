"""Cause and symptom titles in words, and the headline answer of a diagnosis.

The one place where a cause id (``loss_spikes.learning_rate_too_high``) gets
the words a person reads ("Learning rate too high"). The HTML and PDF
reports, the CLI summary, the MLflow note and the W&B Report all lead with
:func:`headline`: per observed symptom, its most probable cause in words and
the first piece of that cause's advice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from ..findings.words import finding_order, finding_title
from ..model import SEVERITY_RANK, Cause, Diagnosis

__all__ = ["CAUSE_TITLES", "SYMPTOM_TITLES", "cause_title", "symptom_title", "first_advice", "top_causes",
           "Headline", "headline", "unexplained", "answer_parts", "answer_line"]

#: cause id -> title (docs/CONTRACT.md §3 lists the ids)
CAUSE_TITLES: dict[str, str] = {
    "loss_spikes.corrupted_batch": "Corrupted samples in the batch",
    "loss_spikes.learning_rate_too_high": "Learning rate too high",
    "loss_spikes.ema_gap": "Broken EMA / smoothed loss",
    "stripes.batchnorm_imbalance": "Batch-dependent normalisation",
    "stripes.latent_periodicity": "Periodic pattern in the latents",
    "stripes.augmentation_pattern": "Pattern in the training images (augmentation)",
    "tiling_doubling.tiled_sources": "Tiled textures in the training set",
    "tiling_doubling.mask_preparation": "Badly prepared masks",
    "tiling_doubling.over_regularization": "Over-regularised adapter",
}

#: symptom id -> title
SYMPTOM_TITLES: dict[str, str] = {
    "loss_spikes": "Loss spikes",
    "stripes": "Stripes / banding",
    "tiling_doubling": "Doubled tiling period",
}


def _words(ident: str) -> str:
    text = ident.rsplit(".", 1)[-1].replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def cause_title(cause_id: str) -> str:
    """The cause's title in words (an unknown id: its last part, spelled out)."""
    return CAUSE_TITLES.get(cause_id) or _words(cause_id)


def symptom_title(symptom: str) -> str:
    """The symptom's title in words."""
    return SYMPTOM_TITLES.get(symptom) or _words(symptom)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def first_advice(advice: str) -> str:
    """The first sentence of an advice text (the first thing to try)."""
    text = " ".join(str(advice or "").split())
    return _SENTENCE_END.split(text, maxsplit=1)[0] if text else ""


def top_causes(causes: Iterable[Cause]) -> list[Cause]:
    """The most probable cause of each symptom, in the order the symptoms come.

    Parameters
    ----------
    causes : iterable of Cause
        Grouped by symptom or not; the highest score within a symptom wins
        (the first listed on a tie).
    """
    best: dict[str, Cause] = {}
    for c in causes:
        if c.symptom not in best or c.score > best[c.symptom].score:
            best[c.symptom] = c
    return list(best.values())


@dataclass(frozen=True)
class Headline:
    """One line of the answer: a symptom, its most probable cause and what to try first.

    Attributes
    ----------
    symptom, symptom_title : str
    cause_id, cause_title : str
    score : float
        The cause's score (comparable within the symptom only).
    advice : str
        The first sentence of the cause's advice.
    """

    symptom: str
    symptom_title: str
    cause_id: str
    cause_title: str
    score: float
    advice: str

    def text(self) -> str:
        """``"Loss spikes: most probable cause — Learning rate too high. First try: …"``."""
        return (f"{self.symptom_title}: most probable cause — {self.cause_title}. "
                f"First try: {self.advice}")


def headline(diagnosis: Diagnosis) -> list[Headline]:
    """Per observed symptom, its most probable cause in words and its first advice."""
    return [Headline(c.symptom, symptom_title(c.symptom), c.id, cause_title(c.id), float(c.score),
                     first_advice(c.advice)) for c in top_causes(diagnosis.causes)]


def unexplained(diagnosis: Diagnosis) -> dict[str, list[int]]:
    """Finding id -> indices of its ``warning``/``critical`` findings that no cause explains.

    In reading order (most severe first, then by step); these are what the
    answer names besides the causes (e.g. an attention collapse, a NaN checkpoint).
    """
    explained = {i for c in diagnosis.causes for i in c.findings}
    out: dict[str, list[int]] = {}
    for i in finding_order(diagnosis.findings):
        f = diagnosis.findings[i]
        if i not in explained and SEVERITY_RANK[f.severity] >= SEVERITY_RANK["warning"]:
            out.setdefault(f.id, []).append(i)
    return out


def answer_parts(diagnosis: Diagnosis, *, max_other: int = 3) -> list[str]:
    """What follows the verdict in :func:`answer_line`: per symptom its most probable cause.

    Without causes, the most severe other findings are named instead; when the
    inputs cannot be judged, the first note that says why.
    """
    if diagnosis.verdict().id == "cannot_judge":
        return diagnosis.unjudged()[:1]
    parts = [f"{h.symptom_title}: most probable cause {h.cause_title}" for h in headline(diagnosis)]
    if parts:
        return parts
    other = list(unexplained(diagnosis).items())
    names = [finding_title(fid) + (f" ({len(idx)})" if len(idx) > 1 else "") for fid, idx in other[:max_other]]
    if len(other) > max_other:
        names.append(f"{len(other) - max_other} more kinds of findings")
    return [", ".join(names)] if names else []


def answer_line(diagnosis: Diagnosis, *, max_other: int = 3) -> str:
    """The answer in one line: the verdict, then per symptom its most probable cause (:func:`answer_parts`).

    Examples
    --------
    ``"Critical problems found — Loss spikes: most probable cause Learning rate too high"``
    """
    parts = answer_parts(diagnosis, max_other=max_other)
    return diagnosis.verdict().title + (" — " + "; ".join(parts) if parts else "")
