"""Figure registry for the report.

Topic modules (``reports/fig_*.py``) register functions that draw matplotlib
figures from the run and the diagnosis (:func:`diffdiag.reports.make_figures`
imports them and draws every figure)::

    @figure_maker("loss", order=10)
    def loss_figures(run, diagnosis, settings) -> list[Figure]: ...

The HTML and PDF writers save every figure to ``figures/<name>.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # reports are written headless

from diffdiag.model import Diagnosis, RunData, Settings  # noqa: E402


@dataclass
class Figure:
    """One report figure.

    Attributes
    ----------
    name : str
        File stem (``figures/<name>.png``); unique within a report.
    title : str
        Heading shown above the figure.
    fig : matplotlib.figure.Figure
    caption : str
        One or two sentences saying what to look at.
    section : str
        Report section (``loss``, ``images``, ``latents``, ``dataset``, ``checkpoints``, ...).
    findings : list of int
        Indices of the findings this figure supports (causes link to these).
    """

    name: str
    title: str
    fig: Any
    caption: str = ""
    section: str = "other"
    findings: list[int] = field(default_factory=list)


FigureMaker = Callable[[RunData, Diagnosis, Settings], list[Figure]]
_MAKERS: list[tuple[int, str, FigureMaker]] = []


def figure_maker(section: str, order: int = 100) -> Callable[[FigureMaker], FigureMaker]:
    """Register a function that returns report figures for one section."""

    def deco(func: FigureMaker) -> FigureMaker:
        _MAKERS.append((order, section, func))
        return func

    return deco


def registered() -> list[tuple[str, FigureMaker]]:
    """The registered makers as ``(section, function)``, in drawing order."""
    return [(section, func) for _, section, func in sorted(_MAKERS, key=lambda t: (t[0], t[1]))]
