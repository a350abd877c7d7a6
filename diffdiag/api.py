"""The Python API: what ``diffdiag analyze`` does, as four calls.

::

    import diffdiag

    run = diffdiag.load(logdir="logs/", checkpoints=["out/lora.safetensors"])
    diagnosis = diffdiag.analyze(run)
    diffdiag.write_report(run, diagnosis, "diffdiag-report")
    print(diagnosis.worst_severity(), [f.id for f in diagnosis.findings])
    target = diffdiag.target_of(run)          # the tracker run it was read from, if any
    if target is not None:
        diffdiag.push(diagnosis, target)

* :func:`load` reads the sources a :class:`SourceSpec` names into a
  :class:`~diffdiag.model.RunData`;
* :func:`analyze` runs the checks and ranks the causes into a
  :class:`~diffdiag.model.Diagnosis` (docs/CONTRACT.md §3);
* :func:`write_report` writes ``report.html``, ``report.pdf``, ``figures/`` and
  ``diagnosis.json``;
* :func:`push` writes the diagnosis into an MLflow or W&B run
  (:class:`MlflowTarget`, :class:`WandbTarget`; docs/CONTRACT.md §4).

Errors are :class:`~diffdiag.errors.DiffdiagError` subclasses:
:class:`~diffdiag.errors.InputError` (a bad input; the CLI's exit 2) and
:class:`~diffdiag.errors.TrackerError` (a tracker unreachable or refusing; exit 3).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from .errors import InputError
from .model import Diagnosis, RunData, Settings
from .sinks import MlflowTarget, Target, WandbTarget, push, target_of
from .sources.spec import SourceSpec

Progress = Callable[[str], None]


def load(spec: SourceSpec | None = None, /, *, settings: Settings | None = None, progress: Progress | None = None,
         into: RunData | None = None, **spec_fields: Any) -> RunData:
    """Read a run's inputs.

    Parameters
    ----------
    spec : SourceSpec, optional
        What to read; ``spec_fields`` (the same names: ``logdir``, ``images``, ``latents``,
        ``dataset``, ``masks``, ``checkpoints``, ``wandb_run``, ``mlflow_run``,
        ``mlflow_tracking_uri``) build one or override its fields.
    settings : Settings, optional
        The log keys (``loss_key``, ``ema_key``, ``lr_key``) and limits (``max_images``).
    progress : callable, optional
        Called with a short label before each source is read.
    into : RunData, optional
        Add the sources to this RunData (e.g. the training hook's ``run_data()``).

    Returns
    -------
    RunData
        ``input_errors`` lists the inputs that could not be read (the rest was).

    Raises
    ------
    InputError
        No source named, a path that does not exist, or nothing readable at all.
    TrackerError
        A tracker could not be reached or refused.
    """
    from .sources import load_run

    if spec is None:
        spec = SourceSpec(**spec_fields)
    elif spec_fields:
        spec = dataclasses.replace(spec, **spec_fields)
    if spec.is_empty():
        raise InputError("no source given: name at least one of logdir, images, latents, dataset, "
                         "checkpoints, wandb_run, mlflow_run")
    return load_run(spec, settings, progress, into=into)


def analyze(inputs: RunData, settings: Settings | None = None, *, progress: Progress | None = None) -> Diagnosis:
    """Run every check that has data on ``inputs`` and rank the causes.

    Parameters
    ----------
    inputs : RunData
        From :func:`load` (or the training hook's ``run_data()``); never changed.
    settings : Settings, optional
        ``spike_sigma``, ``fft_threshold``, ``vae_scale``, ... (the CLI's options); the defaults when omitted.
    progress : callable, optional
        Told each check's name as it starts.

    Returns
    -------
    Diagnosis
        Findings and ranked causes (:func:`diffdiag.pipeline.analyze`); ``outputs`` is
        filled by :func:`write_report` and :func:`push`.
    """
    from .pipeline import analyze as run_pipeline

    return run_pipeline(inputs, settings, progress)


def write_report(inputs: RunData, diagnosis: Diagnosis, report_dir: str | Path,
                 settings: Settings | None = None) -> dict[str, Any]:
    """Write ``figures/*.png``, ``report.html``, ``report.pdf`` and ``diagnosis.json`` into ``report_dir``.

    Parameters
    ----------
    inputs : RunData
    diagnosis : Diagnosis
        Its ``outputs`` gain the paths written.
    report_dir : str or Path
        Created when missing; the files of diffdiag's previous report there are replaced,
        nothing else (``report_dir/.diffdiag-manifest.json`` lists what diffdiag wrote).
    settings : Settings, optional
        The ones :func:`analyze` used (``heatmap_scale``, ``max_images``).

    Returns
    -------
    dict
        ``{"html", "pdf", "figures", "diagnosis"}``: the paths written (also in ``diagnosis.outputs``).
    """
    from .diagnosis_io import write_diagnosis
    from .reports import write_report as write_files
    from .reports.folder import ReportFolder

    report_dir = Path(report_dir).expanduser()
    ReportFolder(report_dir).claim(["diagnosis.json"])  # only diffdiag's own earlier outputs are replaced
    written = dict(write_files(inputs, diagnosis, report_dir, settings))
    written["diagnosis"] = str(report_dir / "diagnosis.json")
    diagnosis.outputs.update(written)
    write_diagnosis(diagnosis, report_dir / "diagnosis.json")
    return written


__all__ = ["SourceSpec", "MlflowTarget", "WandbTarget", "Target", "load", "analyze", "write_report", "push",
           "target_of"]
