"""Run the analysis: checks -> findings -> ranked causes -> Diagnosis."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from .model import Diagnosis, RunData, Settings
from .registry import run_checks


def _unloaded(run: RunData) -> list[str]:
    """Notes for inputs named by path whose loaded form is missing (a caller skipped a source loader)."""
    out = []
    if run.dataset_dir is not None and run.dataset is None:
        out.append(f"dataset: {run.dataset_dir} was not read (diffdiag.sources.dataset.load_dataset); not analysed")
    if run.checkpoints and run.checkpoint_scan is None:
        out.append(f"checkpoints: {len(run.checkpoints)} files were not read "
                   f"(diffdiag.sources.checkpoints.load_checkpoints); not analysed")
    return out


def _inputs(run: RunData) -> dict[str, Any]:
    inputs = dict(run.inputs)
    if run.dataset is not None:
        inputs.setdefault("dataset_images", len(run.dataset.files))
    if run.samples:
        from .sources.samples import samples_summary

        inputs.setdefault("samples", samples_summary(run.samples))
    return inputs


def analyze(run: RunData, settings: Settings | None = None,
            progress: Callable[[str], None] | None = None) -> Diagnosis:
    """Analyse one run.

    Parameters
    ----------
    run : RunData
        The inputs, as the sources read them (not changed).
    settings : Settings, optional
        Thresholds and options; defaults when omitted.
    progress : callable, optional
        Called with each check's name before it runs.

    Returns
    -------
    Diagnosis
        Findings in check order, causes ranked within each symptom, the
        checks' notes in ``warnings`` (after the sources' input errors and
        notes, each line once) and each check's drawing data in ``details``
        (``outputs`` is filled by the writers).
    """
    from .causes import rank_causes

    settings = settings or Settings()
    results = run_checks(run, settings, progress)
    findings = [f for res in results.values() for f in res.findings]
    causes = rank_causes(findings, run, settings)
    warnings: list[str] = []
    for line in [*(run.input_errors or []), *run.warnings, *_unloaded(run),
                 *(n for res in results.values() for n in res.notes)]:
        if line not in warnings:
            warnings.append(line)
    return Diagnosis(
        findings=findings,
        causes=causes,
        inputs=_inputs(run),
        settings=settings.to_dict(),
        outputs={},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        warnings=warnings,
        details={name: res.data for name, res in results.items() if res.data is not None},
    )
