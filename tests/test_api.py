"""The typed Python API (diffdiag.api): specs, load/analyze/write_report, push targets, a cheap import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffdiag
from diffdiag.errors import InputError
from diffdiag.model import RunData

from .conftest import validate_diagnosis


def _log(path: Path, n: int = 1500) -> Path:
    """A JSONL loss log with one step of 12x loss at step 900 (ground truth: a loss_spike there)."""
    rng = np.random.default_rng(3)
    loss = 0.1 * np.exp(rng.normal(0, 0.1, n)) * (1 + np.exp(-np.arange(n) / 400))
    loss[min(900, n - 1)] *= 12
    path.write_text("".join(json.dumps({"step": s, "loss": float(v)}) + "\n" for s, v in enumerate(loss)))
    return path


def test_import_is_cheap_and_exports_the_api() -> None:
    code = ("import sys, diffdiag; names = [diffdiag.load, diffdiag.analyze, diffdiag.write_report, diffdiag.push,"
            " diffdiag.target_of, diffdiag.SourceSpec, diffdiag.MlflowTarget, diffdiag.WandbTarget, diffdiag.Settings];"
            " print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'wandb', 'mlflow', 'diffusers')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_source_spec_normalises_paths_and_is_frozen() -> None:
    spec = diffdiag.SourceSpec(images=["a.png", ("ref.png", Path("out.png"))], checkpoints="lora.safetensors")
    assert spec.images == (("a.png",), ("ref.png", Path("out.png"))) and spec.checkpoints == ("lora.safetensors",)
    assert hash(spec) == hash(diffdiag.SourceSpec(images=(("a.png",), ("ref.png", Path("out.png"))),
                                                  checkpoints=("lora.safetensors",)))
    with pytest.raises(AttributeError):
        spec.logdir = "x"  # type: ignore[misc]
    assert diffdiag.SourceSpec(masks="m", mlflow_tracking_uri="http://x").is_empty()
    assert not spec.is_empty()


def test_load_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(InputError, match="no source given"):
        diffdiag.load()
    with pytest.raises(InputError, match="log path does not exist"):
        diffdiag.load(logdir=tmp_path / "missing.jsonl")
    with pytest.raises(TypeError):
        diffdiag.load(logs=str(tmp_path))  # not a SourceSpec field


def test_api_gives_what_the_cli_gives(run_cli, tmp_path) -> None:
    log = _log(tmp_path / "log.jsonl")
    code, _, _, cli_doc = run_cli("analyze", "--logdir", str(log), "--spike-sigma", "4")
    assert code == 0
    settings = diffdiag.Settings(spike_sigma=4.0)
    run = diffdiag.load(diffdiag.SourceSpec(logdir=log), settings=settings)
    diagnosis = diffdiag.analyze(run, settings)
    written = diffdiag.write_report(run, diagnosis, tmp_path / "api-report", settings)
    doc = validate_diagnosis(written["diagnosis"])
    assert [(f["id"], f["severity"], f["location"]) for f in doc["findings"]] == \
        [(f["id"], f["severity"], f["location"]) for f in cli_doc["findings"]]
    assert ("loss_spike", 900) in [(f["id"], f["location"].get("step")) for f in doc["findings"]]
    assert [c["id"] for c in doc["causes"]] == [c["id"] for c in cli_doc["causes"]]
    assert doc["inputs"] == cli_doc["inputs"] and doc["settings"] == cli_doc["settings"]
    assert set(written) == {"html", "pdf", "figures", "diagnosis"} and Path(written["html"]).is_file()
    assert diagnosis.outputs["diagnosis"] == written["diagnosis"]


def test_load_into_adds_to_an_existing_run(tmp_path) -> None:
    base = RunData(name="hook-run", config={"lr": 1e-4})
    run = diffdiag.load(logdir=_log(tmp_path / "log.jsonl", 200), into=base)
    assert run is base and run.log is not None and len(run.log.loss) == 200 and run.config["lr"] == 1e-4


def test_target_of_names_the_tracker_run_that_was_read() -> None:
    assert diffdiag.target_of(RunData()) is None
    ml = RunData(tracker={"kind": "mlflow", "run_id": "abc", "tracking_uri": "http://127.0.0.1:5000"})
    assert diffdiag.target_of(ml) == diffdiag.MlflowTarget("abc", tracking_uri="http://127.0.0.1:5000")
    wb = RunData(tracker={"kind": "wandb", "run_id": "r1", "project": "p", "entity": "e", "offline": True,
                          "dir": "/runs/offline-run-1"}, inputs={"wandb_run": "/runs/offline-run-1"})
    t = diffdiag.target_of(wb)
    assert t == diffdiag.WandbTarget("/runs/offline-run-1") and t.tracker["run_id"] == "r1" and t.push and not t.report


def test_push_rejects_an_untyped_target() -> None:
    with pytest.raises(TypeError, match="MlflowTarget or a WandbTarget"):
        diffdiag.push(diffdiag.analyze(RunData()), {"kind": "mlflow", "run_id": "abc"})  # type: ignore[arg-type]
