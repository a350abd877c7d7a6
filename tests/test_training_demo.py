"""The README's main job (``diffdiag demo``) end to end: real tiny LoRA training with a fault,
the diagnosis, the report, and the run logged + diagnosis pushed into the embedded MLflow store.

Runs after tests/test_training.py, which builds (or finds) the cached tiny base UNet.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from .conftest import validate_diagnosis

pytest.importorskip("torch")
pytest.importorskip("mlflow")


def test_demo_lr_too_high_end_to_end(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from diffdiag.cli import main

    report, workdir = tmp_path / "report", tmp_path / "wd"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["demo", "--steps", "150", "--fault", "lr_too_high",
                     "--report", str(report), "--workdir", str(workdir)])
    text = out.getvalue()
    assert code == 0, text
    doc = validate_diagnosis(report / "diagnosis.json")
    assert (report / "report.html").exists() and (report / "report.pdf").exists()
    ids = {f["id"] for f in doc["findings"] if f["severity"] != "info"}
    assert ids & {"loss_divergence", "loss_spike"}, ids
    top = next(c for c in doc["causes"] if c["symptom"] == "loss_spikes")
    assert top["id"] == "loss_spikes.learning_rate_too_high"
    run_id = doc["outputs"]["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    tags = client.get_run(run_id).data.tags
    assert tags["diffdiag.top_cause"] == "loss_spikes.learning_rate_too_high"
    assert tags["diffdiag.verdict"] in ("warning", "critical")
    assert str(report / "report.html") in text
    assert f"mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'}" in err.getvalue()
