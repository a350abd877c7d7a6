"""Sinks: write a diagnosis into a tracker run (docs/CONTRACT.md §4).

A push goes to a typed target: :class:`MlflowTarget` (an MLflow run) or
:class:`WandbTarget` (a W&B run: the companion run and/or the W&B Report).
:func:`target_of` names the tracker run a RunData was read from. The sink of
each tracker is imported lazily from :mod:`diffdiag.integrations`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Mapping, Union

from .errors import NotAvailableError
from .model import Diagnosis, RunData


@dataclass(frozen=True)
class MlflowTarget:
    """An MLflow run to write into.

    Attributes
    ----------
    run_id : str
    tracking_uri : str, optional
        Else ``MLFLOW_TRACKING_URI``, else the embedded store.
    max_images : int
        At most this many annotated anomaly images are logged.
    """

    run_id: str
    tracking_uri: str | None = None
    max_images: int = 16


@dataclass(frozen=True)
class WandbTarget:
    """A W&B run to write into: a companion run beside it and/or a W&B Report.

    Attributes
    ----------
    run_ref : str
        ``entity/project/run_id``, a run URL, or a local run directory.
    push : bool
        Create (or replace) the companion run ``diffdiag-<run_id>``; online, also tag the run.
    report : bool
        Build the W&B Report (published online, a spec file offline).
    tracker : mapping, optional
        The run's record as a source read it (``RunData.tracker``); :func:`target_of`
        fills it. Else it is worked out from ``run_ref``.
    """

    run_ref: str
    push: bool = True
    report: bool = False
    tracker: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


Target = Union[MlflowTarget, WandbTarget]


def target_of(inputs: RunData) -> Target | None:
    """The tracker run ``inputs`` were read from, as a push target (None when no tracker source read them)."""
    tracker = inputs.tracker or {}
    kind, run_id = tracker.get("kind"), tracker.get("run_id")
    if kind == "mlflow" and run_id:
        return MlflowTarget(run_id, tracking_uri=tracker.get("tracking_uri"))
    if kind == "wandb" and run_id:
        return WandbTarget(str(inputs.inputs.get("wandb_run") or run_id), tracker=dict(tracker))
    return None


def _sink(kind: str, module: str, func: str) -> Callable[..., dict[str, Any]]:
    try:
        mod = import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("diffdiag"):
            raise NotAvailableError(f"writing back to {kind} is not available yet") from None
        raise NotAvailableError(f"writing back to {kind} needs '{exc.name}': pip install 'diffdiag[{kind}]'") from None
    return getattr(mod, func)


def push(diagnosis: Diagnosis, target: Target, *, inputs: RunData | None = None,
         report_dir: str | Path | None = None) -> dict[str, Any]:
    """Write ``diagnosis`` into a tracker run.

    Parameters
    ----------
    diagnosis : Diagnosis
        Its ``outputs`` are updated with what the push returns.
    target : MlflowTarget or WandbTarget
    inputs : RunData, optional
        The analysed inputs: their images give the annotated anomaly images.
    report_dir : path, optional
        The folder :func:`diffdiag.write_report` wrote (its report files are uploaded);
        default: the folder of ``diagnosis.outputs["html"]``, if any. Its
        ``diagnosis.json`` is rewritten with the push's outputs.

    Returns
    -------
    dict
        The entries added to ``diagnosis.outputs`` (``{"mlflow": {...}}`` / ``{"wandb": {...}}``).

    Raises
    ------
    TrackerError
        The tracker cannot be reached or refuses a write (exit 3).
    """
    run = inputs if inputs is not None else RunData()
    if report_dir is None and diagnosis.outputs.get("html"):
        report_dir = Path(diagnosis.outputs["html"]).parent
    with tempfile.TemporaryDirectory(prefix="diffdiag-push-") as scratch:  # no report: upload tables/tags only
        folder = Path(report_dir) if report_dir is not None else Path(scratch)
        if isinstance(target, MlflowTarget):
            out = _sink("mlflow", "diffdiag.integrations.mlflow_sink", "push_mlflow")(
                run, diagnosis, folder, run_id=target.run_id, tracking_uri=target.tracking_uri,
                max_images=target.max_images)
        elif isinstance(target, WandbTarget):
            tracker = (dict(target.tracker) if target.tracker is not None else
                       _sink("wandb", "diffdiag.integrations.wandb_source", "tracker_record")(target.run_ref))
            out = _sink("wandb", "diffdiag.integrations.wandb_sink", "push_wandb")(
                run, diagnosis, folder, tracker=tracker, push=target.push, report=target.report)
        else:
            raise TypeError(f"push target must be an MlflowTarget or a WandbTarget, not {type(target).__name__}")
    out = out or {}
    if out:
        diagnosis.outputs.update(out)
        written = diagnosis.outputs.get("diagnosis")
        if report_dir is not None and written == str(Path(report_dir) / "diagnosis.json"):
            from .diagnosis_io import write_diagnosis

            write_diagnosis(diagnosis, written)
    return out

