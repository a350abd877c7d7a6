"""Figure registry for the report.

Topic modules (``reports/fig_*.py``) register functions that draw matplotlib
figures from the run and the diagnosis::

    @figure_maker("loss", order=10)
    def loss_figures(run, diagnosis, settings) -> list[Figure]: ...

The HTML and PDF writers save every figure to ``figures/<name>.png``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import import_module
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

#: topic modules imported by :func:`make_figures`
TOPIC_MODULES = ["fig_loss", "fig_checkpoints", "fig_images", "fig_latents", "fig_dataset"]


def figure_maker(section: str, order: int = 100) -> Callable[[FigureMaker], FigureMaker]:
    """Register a function that returns report figures for one section."""

    def deco(func: FigureMaker) -> FigureMaker:
        _MAKERS.append((order, section, func))
        return func

    return deco


def make_figures(run: RunData, diagnosis: Diagnosis, settings: Settings,
                 warnings: list[str] | None = None) -> list[Figure]:
    """Draw every registered figure; a maker that fails adds a warning instead."""
    for mod in TOPIC_MODULES:
        try:
            import_module(f"diffdiag.reports.{mod}")
        except ModuleNotFoundError:
            continue
    out: list[Figure] = []
    for _, section, func in sorted(_MAKERS, key=lambda t: (t[0], t[1])):
        try:
            out.extend(func(run, diagnosis, settings))
        except Exception as exc:  # noqa: BLE001 - a figure must never sink the report
            if os.environ.get("DIFFDIAG_STRICT"):
                raise
            if warnings is not None:
                warnings.append(f"figure '{section}' could not be drawn ({type(exc).__name__}: {exc})")
    return out
