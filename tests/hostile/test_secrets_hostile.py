"""No secret in any output (issue 12): canary credentials in environment variables and URLs.

The canaries are set as the credential variables trackers read (``WANDB_API_KEY``,
``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``, ``DATABRICKS_TOKEN``, AWS keys) and put
into URLs as their password (``http://user:SECRET@host``). Then diffdiag reads and pushes for real —
a real ``mlflow server`` on 127.0.0.1 (reached through the URL with the password: the server
ignores it), a real offline W&B run — and every output is searched: stdout, stderr,
``diagnosis.json``, ``report.html``, the PDF's text, every file pushed into the MLflow run (read
back from the server), its tags and note, and every file of the W&B companion run.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import CANARY_ENV as CANARIES
from .craft import crafts


URL_SECRET = "urlpasswordcanary-6d2e"


@pytest.fixture
def canaries(monkeypatch, tmp_path):
    for k, v in CANARIES.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "diffdiag")
    monkeypatch.setenv("DIFFDIAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFDIAG_MLFLOW_RETRIES", "2")
    monkeypatch.setenv("DIFFDIAG_MLFLOW_BACKOFF", "0.05")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return [*CANARIES.values(), URL_SECRET]


def _cli(*args: str) -> tuple[int, str, str]:
    from diffdiag.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["analyze", *args, "--no-progress"])
    return code, out.getvalue(), err.getvalue()


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)


def _assert_clean(where: str, text: str | bytes, canaries: list[str]) -> None:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    leaked = [c for c in canaries if c.encode() in blob]
    assert not leaked, f"{where} holds {leaked}"


def _assert_report_clean(report: Path, canaries: list[str]) -> None:
    for p in sorted(report.rglob("*")):
        if p.is_file():
            _assert_clean(str(p), p.read_bytes(), canaries)
    _assert_clean("report.pdf text", _pdf_text(report / "report.pdf"), canaries)


def _log_run(url: str) -> str:
    """A finished MLflow run with a loss spike and one sample image."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(url)
    exp = client.create_experiment(f"secrets-{np.random.default_rng().integers(1 << 30)}")
    rid = client.create_run(exp, run_name="secrets").info.run_id
    rng = np.random.default_rng(1)
    loss = 0.1 + 0.3 * np.exp(-np.arange(400) / 100) + 0.01 * rng.standard_normal(400)
    loss[250] = 2.0
    client.log_batch(rid, metrics=[Metric("loss", float(v), 1000 + i, i) for i, v in enumerate(loss)])
    client.log_image(rid, np.zeros((32, 32, 3), np.uint8), key="samples/black", step=300)
    client.set_tag(rid, "mlflow.note.content", "the user's note")
    client.set_terminated(rid)
    return rid


@crafts("mlflow", "secrets", "password_in_tracking_url", *(f"env_{k}" for k in CANARIES))
@crafts("tracker-media", "secrets", "mlflow_logged_image_pushed_back")
def test_mlflow_read_and_push_through_a_url_with_a_password(mlflow_server, canaries, tmp_path):
    """Read and push through ``http://diffdiag:SECRET@127.0.0.1:PORT`` with credential variables set:
    the analysis works (the spike is found, the push lands) and no canary is in any output."""
    from mlflow import MlflowClient

    rid = _log_run(mlflow_server.url)
    url = mlflow_server.url.replace("http://", f"http://diffdiag:{URL_SECRET}@")
    report = tmp_path / "report"
    code, out, err = _cli("--mlflow-run", rid, "--mlflow-tracking-uri", url, "--push", "--report", str(report))
    assert code == 0, err
    _assert_clean("stdout", out, canaries)
    _assert_clean("stderr", err, canaries)
    diag = json.loads((report / "diagnosis.json").read_text())
    assert ("loss_spike", 250) in {(f["id"], f["location"].get("step")) for f in diag["findings"]}
    assert "***@127.0.0.1" in diag["inputs"]["mlflow_run"]["tracking_uri"]  # redacted, still says where
    _assert_report_clean(report, canaries)
    client = MlflowClient(mlflow_server.url)
    r = client.get_run(rid)
    assert r.data.tags["diffdiag.verdict"] in ("warning", "critical")  # the push landed
    for k, v in r.data.tags.items():
        _assert_clean(f"tag {k}", v, canaries)
    from diffdiag.integrations.mlflow_source import walk_artifacts

    pushed = [fi.path for fi in walk_artifacts(client, rid, errors=[])
              if fi.path.startswith(("diffdiag/", "images/diffdiag~"))]
    assert "diffdiag/diagnosis.json" in pushed and "diffdiag/report.html" in pushed
    for path in pushed:
        local = Path(client.download_artifacts(rid, path, str(tmp_path / "pulled")))
        _assert_clean(f"pushed {path}", local.read_bytes(), canaries)
        if local.suffix == ".pdf":
            _assert_clean(f"pushed {path} text", _pdf_text(local), canaries)


@crafts("mlflow", "secrets", "password_in_url_of_dead_server")
@crafts("wandb-online", "secrets", "password_in_url_of_unreachable_server")
def test_tracker_errors_never_print_the_password(canaries, monkeypatch):
    """A dead MLflow server and an unreachable W&B server named by URLs with a password: exit 3,
    one line saying where (host and port kept), no canary."""
    from diffdiag.integrations.mlflow_store import free_port

    port = free_port()
    code, out, err = _cli("--mlflow-run", "0123456789abcdef0123456789abcdef", "--mlflow-tracking-uri",
                          f"http://diffdiag:{URL_SECRET}@127.0.0.1:{port}", "--report", "/nonexistent/never")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 3 and len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], err
    _assert_clean("stderr", err + out, canaries)
    monkeypatch.setenv("DIFFDIAG_TRACKER_TIMEOUT", "5")
    monkeypatch.setenv("DIFFDIAG_WANDB_RETRIES", "1")
    wport = free_port()
    code, out, err = _cli("--wandb-run", f"http://diffdiag:{URL_SECRET}@127.0.0.1:{wport}/ent/proj/runs/abc123",
                          "--report", "/nonexistent/never")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 3 and len(lines) == 1, err
    _assert_clean("stderr", err + out, canaries)


@crafts("wandb-offline", "secrets", *(f"env_{k}" for k in CANARIES), "wandb_report_spec")
def test_offline_wandb_push_holds_no_secret(wandb_run, canaries, tmp_path):
    """An offline W&B run analysed and pushed with every credential variable set: the report and
    every file of the companion run (its .wandb log, tables, media, artifact) hold no canary."""
    import shutil

    from ..wandb_util import isolated_wandb

    run_dir = tmp_path / "wandb" / wandb_run["dir"].name
    shutil.copytree(wandb_run["dir"], run_dir)
    report = tmp_path / "report"
    with isolated_wandb({"WANDB_MODE": "offline", "WANDB_DATA_DIR": str(tmp_path / "wdata"),
                         "WANDB_CACHE_DIR": str(tmp_path / "wcache"), "WANDB_CONFIG_DIR": str(tmp_path / "wconfig")}):
        code, out, err = _cli("--wandb-run", str(run_dir), "--push", "--wandb-report", "--report", str(report))
    assert code == 0, err
    _assert_clean("stdout", out, canaries)
    _assert_clean("stderr", err, canaries)
    _assert_report_clean(report, canaries)
    companions = [d for d in (tmp_path / "wandb").iterdir() if d.is_dir() and d != run_dir]
    assert len(companions) == 1 and list(companions[0].glob("run-diffdiag-*.wandb"))
    for p in companions[0].rglob("*"):
        if p.is_file():
            _assert_clean(str(p), p.read_bytes(), canaries)
