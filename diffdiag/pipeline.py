"""Run the analysis: checks -> findings -> ranked causes -> Diagnosis."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from .model import Diagnosis, RunData, Settings
from .registry import run_checks


def analyze(run: RunData, settings: Settings | None = None,
            progress: Callable[[str], None] | None = None) -> Diagnosis:
    """Analyse one run.

    Parameters
    ----------
    run : RunData
        The inputs, as the sources read them.
    settings : Settings, optional
        Thresholds and options; defaults when omitted.
    progress : callable, optional
        Called with each check's name before it runs.

    Returns
    -------
    Diagnosis
        Findings in check order and causes ranked within each symptom
        (``outputs`` is filled by the writers).
    """
    from .causes import rank_causes

    settings = settings or Settings()
    findings, warnings = run_checks(run, settings, progress)
    causes = rank_causes(findings, run, settings)
    return Diagnosis(
        findings=findings,
        causes=causes,
        inputs=dict(run.inputs),
        settings=settings.to_dict(),
        outputs={},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        warnings=[*(run.input_errors or []), *run.warnings, *warnings],
    )
