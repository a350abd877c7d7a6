"""Live findings into the active MLflow run (a callback for the training hook).

:func:`make_callback` returns an :class:`MlflowHook` bound to the active
MLflow run (``mlflow.active_run()``), or None when there is none. The training
hook (:mod:`diffdiag.integrations.hook`) calls

* ``on_finding(finding, step)`` — each live finding: the metric
  ``diffdiag/<finding id>`` (its score, at the training step) so the UI charts
  when problems happened, the tags ``diffdiag.live_findings`` (count) and
  ``diffdiag.alert`` (the latest critical message);
* ``on_finish(diagnosis, report_dir)`` — the final diagnosis, pushed into the
  run exactly as ``diffdiag analyze --mlflow-run … --push`` would
  (:func:`~diffdiag.integrations.mlflow_sink.push_mlflow`).

It writes through ``MlflowClient`` with the run's id (the training's own
logging is untouched), and it never raises into the training loop: a failure
becomes one ``warnings.warn`` and the callback goes quiet.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from diffdiag.model import Diagnosis, Finding, RunData


class MlflowHook:
    """Write diffdiag's live findings and final diagnosis into one MLflow run.

    Parameters
    ----------
    run_id : str
        The run to write into (default: the active run).
    tracking_uri : str, optional
        Default: ``mlflow.get_tracking_uri()``.
    """

    def __init__(self, run_id: str | None = None, tracking_uri: str | None = None) -> None:
        import mlflow

        active = mlflow.active_run()
        self.run_id = run_id or (active.info.run_id if active else None)
        if self.run_id is None:
            raise ValueError("MlflowHook needs a run_id or an active MLflow run")
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.count = 0
        self.disabled = False
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _fail(self, what: str, exc: BaseException) -> None:
        if not self.disabled:
            warnings.warn(f"diffdiag: writing {what} to MLflow run {self.run_id} failed "
                          f"({type(exc).__name__}: {exc}); MLflow logging of diffdiag is off for this run",
                          RuntimeWarning, stacklevel=3)
        self.disabled = True

    def on_finding(self, finding: Finding, step: int) -> None:
        """Log one live finding (metric ``diffdiag/<id>`` = score at ``step``; tags)."""
        if self.disabled:
            return
        try:
            from mlflow.entities import Metric, RunTag
            import time

            self.count += 1
            tags = [RunTag("diffdiag.live_findings", str(self.count))]
            if finding.severity == "critical":
                tags.append(RunTag("diffdiag.alert", f"step {int(step)}: {finding.message}"[:500]))
            self.client.log_batch(self.run_id, metrics=[Metric(f"diffdiag/{finding.id}", float(finding.score),
                                                               int(time.time() * 1000), int(step))],
                                  tags=tags)
        except Exception as exc:  # noqa: BLE001 - never break training
            self._fail("a live finding", exc)

    def on_finish(self, diagnosis: Diagnosis, report_dir: Path | str) -> dict[str, Any] | None:
        """Push the final diagnosis and report into the run (as ``--push`` does)."""
        if self.disabled:
            return None
        try:
            from .mlflow_sink import push_mlflow

            return push_mlflow(RunData(), diagnosis, Path(report_dir), run_id=self.run_id,
                               tracking_uri=self.tracking_uri)
        except Exception as exc:  # noqa: BLE001 - never break training
            self._fail("the diagnosis", exc)
            return None


def make_callback() -> MlflowHook | None:
    """An :class:`MlflowHook` for the active MLflow run, or None (no mlflow, no active run).

    Costs nothing when the training never imported mlflow (then no run can be active).
    """
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is None or not hasattr(mlflow, "active_run"):
        return None
    try:
        if mlflow.active_run() is None:
            return None
        return MlflowHook()
    except Exception as exc:  # noqa: BLE001 - the hook must cost nothing when it cannot work
        warnings.warn(f"diffdiag: MLflow hook disabled ({exc})", RuntimeWarning, stacklevel=2)
        return None
