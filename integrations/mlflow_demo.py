"""The main job's MLflow part: a training run in the embedded store, analysed and pushed back.

Used by ``diffdiag demo`` (:mod:`diffdiag.demo`), which opens the run *before*
training so that the run's start and end are the training's and its metrics
arrive as the steps happen::

    from diffdiag.integrations.mlflow_demo import start_run, log_media
    run_id, uri = start_run(workdir=".diffdiag", run_name="tiny-lora", params=cfg.hyperparameters())
    ...  # the trainer logs its metrics into run_id while it trains, then ends the run
    log_media(run_id, uri, images=[("samples", step, array_hw)], artifacts=["lora.safetensors"])

A run that already finished elsewhere can be logged in one go
(:func:`log_run_to_store`), and :func:`analyze_and_push` reads a run back
(exactly as ``diffdiag analyze --mlflow-run`` does), analyses it, writes the
report, pushes the diagnosis into the run and prints the ``mlflow ui`` command::

    run_id, uri = log_run_to_store({"loss": (steps, values), "lr": (steps, lrs)},
                                   workdir=".diffdiag", params={"learning_rate": 1e-3})
    diagnosis = analyze_and_push(run_id, uri, report_dir="diffdiag-report")
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from diffdiag.model import Diagnosis, Series, Settings

from .mlflow_store import DEFAULT_EXPERIMENT, embedded_location, ensure_experiment, get_client, resolve_tracking_uri


def _params(params: Mapping[str, Any]) -> list[Any]:
    """MLflow ``Param`` entities (names: word characters, ``- . / space :``; dicts and lists as JSON)."""
    from mlflow.entities import Param

    items, seen = [], set()
    for k, v in params.items():
        name = re.sub(r"[^\w\-./ :]", "_", str(k))[:250] or "_"
        if name not in seen:
            seen.add(name)
            items.append(Param(name, json.dumps(v) if isinstance(v, (dict, list)) else str(v)))
    return items


def start_run(workdir: str | Path | None = None, tracking_uri: str | None = None, run_name: str = "diffdiag-demo",
              experiment: str = DEFAULT_EXPERIMENT, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Open a run (status ``RUNNING``, started now) with its params and tags; return ``(run_id, tracking_uri)``.

    Parameters
    ----------
    workdir : str or Path, optional
        The embedded store's folder (default ``./.diffdiag``); ignored when ``tracking_uri`` is given.
    tracking_uri : str, optional
        Log somewhere else than the embedded store.
    params, tags : mapping, optional
        The run's hyper-parameters (as the training applies them) and tags.
    """
    from mlflow.entities import RunTag

    loc = resolve_tracking_uri(tracking_uri, announce=False) if tracking_uri else embedded_location(workdir)
    client = get_client(loc)
    exp_id = ensure_experiment(client, experiment, loc)
    run_id = client.create_run(exp_id, run_name=run_name).info.run_id
    items = _params(params or {})
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    return run_id, loc.tracking_uri


def log_media(run_id: str, tracking_uri: str, images: Iterable[tuple[str, int, np.ndarray]] = (),
              artifacts: Iterable[str | Path | tuple[str | Path, str]] = ()) -> None:
    """Log step images and files into a run (finished or not; its status and end time stay).

    Parameters
    ----------
    images : iterable of (key, step, array)
        Step images (``log_image(key=…, step=…)``); arrays (H, W[, C]) in [0, 1] or uint8.
    artifacts : iterable of path or (path, artifact folder)
        Files (checkpoints) to log; default folder ``checkpoints``.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for key, step, arr in images:
        a = np.asarray(arr)
        if a.dtype != np.uint8:
            a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0, 1) * 255 + 0.5).astype(np.uint8)
        client.log_image(run_id, a, key=key, step=int(step))
    for art in artifacts:
        path, folder = (art if isinstance(art, tuple) else (art, "checkpoints"))
        client.log_artifact(run_id, str(path), str(folder))


def run_url(experiment_id: str, run_id: str, port: int = 5000) -> str:
    """The run's page in a local ``mlflow ui`` (on ``port``), in MLflow 3's *Model training* view.

    MLflow 3 opens in its GenAI view; ``?workflowType=machine_learning`` selects the view
    whose run page shows the Description, Metrics, Parameters, Tags and Artifacts of a
    training run (MLflow 2 ignores it).
    """
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def log_run_to_store(metrics: Mapping[str, Any], workdir: str | Path | None = None,
                     tracking_uri: str | None = None, run_name: str = "diffdiag-demo",
                     experiment: str = DEFAULT_EXPERIMENT, params: Mapping[str, Any] | None = None,
                     tags: Mapping[str, str] | None = None,
                     images: Iterable[tuple[str, int, np.ndarray]] = (),
                     artifacts: Iterable[str | Path | tuple[str | Path, str]] = (),
                     note: str | None = None) -> tuple[str, str]:
    """Log a training run that finished elsewhere into MLflow in one go; return ``(run_id, tracking_uri)``.

    Parameters
    ----------
    metrics : mapping
        key -> :class:`Series`, or ``(steps, values)`` arrays of equal length.
    workdir : str or Path, optional
        The embedded store's folder (default ``./.diffdiag``); ignored when
        ``tracking_uri`` is given.
    tracking_uri : str, optional
        Log somewhere else than the embedded store.
    params, tags : mapping, optional
        Hyper-parameters and tags.
    images : iterable of (key, step, array)
        Step images (``log_image(key=…, step=…)``); arrays (H, W[, C]) in [0, 1] or uint8.
    artifacts : iterable of path or (path, artifact folder)
        Files (checkpoints) to log; default folder ``checkpoints``.
    note : str, optional
        The run's markdown description.
    """
    from mlflow.entities import Metric, RunTag

    run_id, uri = start_run(workdir, tracking_uri, run_name, experiment, params)
    client = get_client(resolve_tracking_uri(uri, announce=False))
    status = "FAILED"
    try:
        t0 = int(time.time() * 1000)
        batch: list[Metric] = []
        for key, val in metrics.items():
            steps, values = (val.steps, val.values) if isinstance(val, Series) else val
            for s, v in zip(np.asarray(steps).tolist(), np.asarray(values, dtype=float).tolist()):
                batch.append(Metric(key, float(v), t0 + int(s), int(s)))
        for i in range(0, len(batch), 1000):
            client.log_batch(run_id, metrics=batch[i:i + 1000])
        all_tags = dict(tags or {})
        if note:
            all_tags["mlflow.note.content"] = note
        if all_tags:
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        log_media(run_id, uri, images, artifacts)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id, uri


def analyze_and_push(run_id: str, tracking_uri: str, report_dir: str | Path,
                     settings: Settings | None = None, out=None) -> Diagnosis:
    """Read ``run_id`` back, analyse it, write the report, push into the run, print the UI command."""
    from diffdiag import api

    from .mlflow_store import print_ui_command

    settings = settings or Settings()
    run = api.load(mlflow_run=run_id, mlflow_tracking_uri=tracking_uri, settings=settings)
    diagnosis = api.analyze(run, settings)
    api.write_report(run, diagnosis, report_dir, settings)
    api.push(diagnosis, api.MlflowTarget(run_id, tracking_uri=tracking_uri, max_images=settings.max_images),
             inputs=run, report_dir=report_dir)
    print_ui_command(tracking_uri, file=out or sys.stdout)
    return diagnosis
