"""The README's main job (``diffdiag demo``) end to end: real tiny LoRA training with a fault,
the diagnosis, the report, and the training as an MLflow run in the embedded store (params, metrics
and live findings logged as it trains) with the diagnosis pushed into it.

Uses the tiny base UNet shipped with the package.
"""

from __future__ import annotations

import contextlib
import io
import re

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
    exp_id = doc["outputs"]["mlflow"]["experiment_id"]
    assert f"/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning" in text
    # the run is broken (LR 100x): critical, as the live hook said it was
    live_critical = {f["id"] for f in doc["outputs"]["live_findings"] if f["severity"] == "critical"}
    assert live_critical and live_critical <= {f["id"] for f in doc["findings"] if f["severity"] == "critical"}
    check_tracker_view(client, run_id, text, steps=150)


def check_tracker_view(client, run_id: str, text: str, *, steps: int) -> None:
    """The MLflow run tells the truth about the training: its params are the hyper-parameters the
    training applied, it lasted as long as the training, its metrics were logged as the steps
    happened, and its description leads with the verdict and the top cause."""
    from markdown_it import MarkdownIt

    from diffdiag.integrations import tiny_lora as T

    r = client.get_run(run_id)
    config = T.LoraConfig(steps=steps, fault="lr_too_high").hyperparameters()
    assert r.data.params == {k: str(v) for k, v in config.items()}
    lr = client.get_metric_history(run_id, "lr")
    assert len(lr) == steps and max(m.value for m in lr) == config["lr"] == 0.1  # the param is the LR applied
    # the run's duration is the training's: opened before the first step, ended after the last
    trained = float(re.search(r"trained in (\d+) s", text).group(1))
    start, end = r.info.start_time, r.info.end_time
    duration = (end - start) / 1000
    assert r.info.status == "FINISHED" and trained - 1 <= duration <= trained + max(15.0, 0.3 * trained), \
        (duration, trained)
    stamps = sorted(m.timestamp for m in client.get_metric_history(run_id, "loss"))
    assert len(stamps) == steps and start <= stamps[0] and stamps[-1] <= end
    assert (stamps[-1] - stamps[0]) / 1000 >= 0.8 * (trained - 1)  # logged as it trained, not after
    live = [m for k in r.data.metrics if k.startswith("diffdiag/") for m in client.get_metric_history(run_id, k)]
    assert live and all(start <= m.timestamp <= end for m in live)  # live findings, during training
    # the description's first line (raw and as the UI renders it) is the answer
    note = r.data.tags["mlflow.note.content"]
    first = note.splitlines()[0]
    assert first.startswith("**diffdiag**: critical problems found") and "Learning rate too high" in first, first
    html = MarkdownIt("commonmark").enable("table").render(note)
    shown = re.sub(r"<[^>]+>", "", html).strip().splitlines()[0]
    assert shown.startswith("diffdiag: critical problems found — Loss spikes: most probable cause "
                            "Learning rate too high"), shown
