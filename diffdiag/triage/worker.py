"""The one function every engine runs: analyse one run exactly as ``diffdiag analyze`` does.

:func:`analyse_run` takes a :class:`Task` and returns a plain dict (its journal entry):
``load`` → ``analyze`` → ``write_report`` → (with ``--push``) ``push``, through
:mod:`diffdiag.api`. It knows nothing of the engine that calls it (a process pool, a
Ray task, or a plain loop); a failure becomes the row's one-line ``error``, never an
exception out of the worker.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DiffdiagError
from ..model import Settings
from .refs import RunItem
from .rows import analysed_row, error_row, loss_curve, worst_by_id

#: environment variables a worker takes from the driver (workers may have started before they were set)
ENV_PREFIXES = ("WANDB_", "MLFLOW_", "DIFFDIAG_")


def tracker_env() -> dict[str, str]:
    """The driver's tracker/diffdiag environment, for :attr:`Task.env`."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


@dataclass(frozen=True)
class Task:
    """One run to analyse.

    Attributes
    ----------
    item : RunItem
    key : str or None
        Its journal key (:func:`diffdiag.triage.refs.run_key`).
    report_root : str
        The triage folder (absolute).
    rel : str
        The run's report folder, relative to ``report_root`` (POSIX separators).
    settings : Settings
    push : bool
        Also push the diagnosis into the run's tracker (as ``analyze --push``).
    ship : bool
        Write the report into a scratch folder and return its files (a worker on another
        machine); else write it into ``report_root/rel`` directly.
    env : dict
        The driver's :data:`ENV_PREFIXES` variables, applied before the run is read.
    """

    item: RunItem
    key: str | None
    report_root: str
    rel: str
    settings: Settings = field(default_factory=Settings)
    push: bool = False
    ship: bool = False
    env: dict[str, str] = field(default_factory=dict)


def _apply_env(env: dict[str, str]) -> None:
    for k in [k for k in os.environ if k.startswith(ENV_PREFIXES) and k not in env]:
        del os.environ[k]
    os.environ.update(env)


def _push(run: Any, diagnosis: Any, folder: Path, settings: Settings) -> None:
    from .. import api

    target = api.target_of(run)
    if target is None:
        return  # a log folder: nothing to push into
    if isinstance(target, api.MlflowTarget):
        target = dataclasses.replace(target, max_images=settings.max_images)
    api.push(diagnosis, target, inputs=run, report_dir=folder)


def _read_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def analyse_run(task: Task) -> dict[str, Any]:
    """Analyse one run; return its journal entry.

    Returns
    -------
    dict
        ``key``, ``identity``, ``row`` (docs/CONTRACT.md §5), ``curve`` (the loss for the
        overview, or None), ``severities`` (finding id -> worst severity), ``seconds``,
        ``pid``; with ``ship``, ``files``: the report's files (relative path -> bytes).
    """
    from .. import api

    _apply_env(task.env)
    item, settings = task.item, task.settings
    t0 = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="diffdiag-triage-")) if task.ship else None
    folder = scratch if scratch is not None else Path(task.report_root) / task.rel
    curve, severities = None, {}
    try:
        try:
            run = api.load(item.spec, settings=settings)
            diagnosis = api.analyze(run, settings)
            api.write_report(run, diagnosis, folder, settings)
            errors = list(run.input_errors)
            if task.push:
                try:
                    _push(run, diagnosis, folder, settings)
                except DiffdiagError as exc:  # analysed and reported; the row says the push failed
                    errors.append(f"push: {exc}")
            row = analysed_row(item.ref, item.name or run.name, diagnosis, f"{task.rel}/report.html", errors)
            curve, severities = loss_curve(run, diagnosis), worst_by_id(diagnosis)
        except DiffdiagError as exc:
            row = error_row(item.ref, item.name, str(exc))
        except Exception as exc:  # noqa: BLE001 - one run's bug is that run's row, the rest is triaged
            row = error_row(item.ref, item.name, f"unexpected {type(exc).__name__}: {exc}")
        entry: dict[str, Any] = {"key": task.key, "identity": item.identity, "row": row, "curve": curve,
                                 "severities": severities,
                                 "seconds": round(time.monotonic() - t0, 3), "pid": os.getpid()}
        if scratch is not None and row["report"] is not None:
            entry["files"] = _read_files(scratch)
        return entry
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["Task", "analyse_run", "tracker_env", "ENV_PREFIXES"]
