"""The online W&B paths (read a run, publish a Report, tag the source run) with the real wandb client.

W&B's servers cannot run here, so :mod:`tests.wandb_fake_server` stands in for them: a
recording GraphQL + file server on 127.0.0.1 (stdlib ``http.server`` in a thread) that
answers the operations wandb 0.31 and its wandb-core process send — found by recording
them — with replies in the real server's shape (history served as parquet files, as
W&B does). ``wandb.Api`` talks to it through ``base_url``. The tests assert the
operations and variables the client sent, the ``upsertView`` Report spec included.
"""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")
pytest.importorskip("pyarrow")
pytest.importorskip("wandb_workspaces")

from diffdiag.integrations.wandb_sink import tag_source_run  # noqa: E402
from diffdiag.integrations.wandb_source import make_api, read_wandb_run  # noqa: E402
from diffdiag.model import Diagnosis, Finding, RunData, Settings  # noqa: E402

from .wandb_fake_server import FakeRun, FakeWandbServer  # noqa: E402
from .wandb_util import isolated_wandb  # noqa: E402

API_KEY = "0123456789abcdef0123456789abcdef0badc0de"  # a fake key: it must never show up in output
N_STEPS = 400
NAN_STEP = 311
SAMPLE_STEPS = (100, 200, 300)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _lora_bytes() -> bytes:
    from safetensors.numpy import save

    rng = np.random.default_rng(3)
    return save({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": rng.standard_normal((4, 16)).astype(
        np.float32), "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": rng.standard_normal(
        (16, 4)).astype(np.float32), "lora_unet_mid_block_attentions_0_proj_in.alpha": np.array(4.0, np.float32)})


def make_fake_run() -> FakeRun:
    rng = np.random.default_rng(7)
    steps = list(range(N_STEPS))
    loss = (0.1 + 0.4 * np.exp(-np.arange(N_STEPS) / 80) * rng.lognormal(0, 0.2, N_STEPS)).tolist()
    loss[NAN_STEP] = float("nan")
    images = {}
    samples = []
    for s in steps:
        if s in SAMPLE_STEPS:
            # the file name carries W&B's internal counter (s - 1), not the step
            path = f"media/images/samples_{s - 1}_{s:04x}deadbeef.png"
            images[path] = _png((rng.random((48, 48, 3)) * 255).astype(np.uint8))
            samples.append({"_type": "image-file", "path": path, "width": 48, "height": 48, "format": "png",
                            "sha256": "0" * 64, "size": len(images[path])})
        else:
            samples.append(None)
    return FakeRun(
        "alice", "sd-lora", "run42",
        history={"_step": steps, "train/loss": loss, "lr": [1e-4] * N_STEPS, "samples": samples},
        config={"learning_rate": 1e-4, "weight_decay": 0.01}, summary={"train/loss": loss[-1], "_step": N_STEPS - 1},
        group="exp1", tags=["lora"], files=images,
        artifacts=[{"name": "lora-run42", "type": "model",
                    "files": {"lora-step000400.safetensors": _lora_bytes()}}],
    )


@pytest.fixture(scope="module")
def online_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb_online")
    with isolated_wandb({"WANDB_MODE": None, "WANDB_BASE_URL": None, "WANDB_API_KEY": API_KEY,
                         "WANDB_CONFIG_DIR": str(root / "config"), "WANDB_CACHE_DIR": str(root / "cache"),
                         "WANDB_DATA_DIR": str(root / "data"), "DIFFDIAG_CACHE": str(root / "dd-cache"),
                         "DIFFDIAG_WANDB_RETRIES": "2", "DIFFDIAG_WANDB_BACKOFF": "0.05",
                         "DIFFDIAG_WANDB_TIMEOUT": "3"}):
        yield root


@pytest.fixture(scope="module")
def server(online_env):
    with FakeWandbServer(entity="alice") as srv:
        srv.add_run(make_fake_run())
        yield srv


def _assert_no_key(*texts: str) -> None:
    for t in texts:
        assert API_KEY not in t
        assert API_KEY[:16] not in t


def test_read_online_run_by_url_push_and_publish_report(server, run_cli, tmp_path):
    start = len(server.requests)
    url = f"{server.url}/alice/sd-lora/runs/run42?nw=nwuser"
    code, out, err, diag = run_cli("analyze", "--wandb-run", url, "--wandb-report", "--push", "--format", "json")
    assert code == 0, err
    sent = server.requests[start:]
    ops = [r.op for r in sent if r.op]
    for op in ("Viewer", "Run", "RunHistoryKeys", "RunParquetHistory", "RunFiles", "RunOutputArtifacts",
               "FetchArtifactManifest", "GetArtifactMembershipFileUrls", "ProjectInternalId", "upsertView"):
        assert op in ops, (op, ops)
    by_op: dict = {}
    for r in sent:  # the first request of each operation
        if r.op:
            by_op.setdefault(r.op, r.variables)
    assert by_op["Run"] == {"entity": "alice", "project": "sd-lora", "name": "run42"}
    assert by_op["RunParquetHistory"]["runName"] == "run42"
    wanted = sorted(f"media/images/samples_{s - 1}_{s:04x}deadbeef.png" for s in SAMPLE_STEPS)
    assert sorted(by_op["RunFiles"]["fileNames"]) == wanted
    gets = [r.path for r in sent if r.method == "GET"]
    assert any(p.endswith("history.parquet") for p in gets)
    assert sum(p.startswith("/files/alice/sd-lora/run42/media/images/") for p in gets) == len(SAMPLE_STEPS)
    assert "/artifacts/lora-run42/lora-step000400.safetensors" in gets
    assert by_op["GetArtifactMembershipFileUrls"]["collection"] == "lora-run42"
    # the diagnosis: the NaN step, read from the parquet history
    nf = [f for f in diag["findings"] if f["id"] == "loss_nonfinite"]
    assert nf and nf[0]["location"]["step"] == NAN_STEP and nf[0]["location"]["key"] == "train/loss"
    assert diag["inputs"]["wandb_run"] == "alice/sd-lora/run42"
    # the Report: saved with upsertView, its spec names the run, the panels and the verdict
    view = by_op["upsertView"]
    assert view["entityName"] == "alice" and view["projectName"] == "sd-lora" and view["type"] == "runs"
    assert view["displayName"] == "diffdiag: run42"
    spec = json.loads(view["spec"])
    text = json.dumps(spec)
    assert "Verdict: critical problems found" in text and "loss_nonfinite" in text
    grids = [b for b in spec["blocks"] if b.get("type") == "panel-grid"]
    assert len(grids) == 2
    assert "run42" in json.dumps(grids[0]["metadata"]["runSets"][0]["filters"])
    assert "diffdiag-run42" in json.dumps(grids[1]["metadata"]["runSets"][0]["filters"])
    panels = json.dumps(grids[0]["metadata"]["panelBankSectionConfig"])
    assert "train/loss" in panels and '"lr"' in panels and "samples" in panels
    assert "diffdiag/findings" in json.dumps(grids[1]) and "diffdiag/causes" in json.dumps(grids[1])
    rep = diag["outputs"]["wandb"]["report"]
    assert rep["published"] is True and "/alice/sd-lora/reports/" in rep["url"]
    saved = json.loads(Path(rep["spec"]).read_text())
    assert saved["url"] == rep["url"] and saved["run_id"] == "run42"
    _assert_no_key(out, err, Path(rep["spec"]).read_text(), (tmp_path / "report" / "report.html").read_text(),
                   json.dumps(diag))
    # --push: the companion run, created by wandb.init in the source run's project and group
    comp = server.runs[("alice", "sd-lora", "diffdiag-run42")]
    assert comp.job_type == "diffdiag" and comp.group == "exp1" and comp.config["source_run"] == "run42"
    assert "diffdiag" in comp.tags and diag["outputs"]["wandb"]["companion_run"] == "diffdiag-run42"
    assert len(comp.stream_history) == 1  # one history row (step 0) with the tables and figures
    row = comp.stream_history[0]
    assert row["diffdiag/findings"]["_type"] == "table-file" and row["diffdiag/causes"]["_type"] == "table-file"
    figs = {k for k, v in row.items() if k.startswith("diffdiag/figures/") and v["_type"] == "image-file"}
    assert figs == {f"diffdiag/figures/{Path(p).stem}" for p in diag["outputs"]["figures"]}
    assert comp.summary["diffdiag/n_findings"] == len(diag["findings"])
    arts = {a["artifactCollectionName"]: a["artifactTypeName"] for a in server.created_artifacts}
    assert arts.get("diffdiag-report-run42") == "diffdiag-report"
    puts = [r.path for r in sent if r.method == "PUT"]
    for name in ("report.html", "diagnosis.json", "wandb_report.json"):
        assert any(p.endswith(f"/{name}") and "/uploads/artifacts/" in p for p in puts), name
    assert len(server.committed_artifacts) >= 3
    # ... and the source run: a tag and diffdiag/* summary keys, its history untouched
    src = server.runs[("alice", "sd-lora", "run42")]
    assert "diffdiag" in src.tags and src.summary["diffdiag/companion_run"] == "diffdiag-run42"
    assert src.stream_history == [] and len(src.history["_step"]) == N_STEPS


def test_read_entity_project_id_fills_run_data(server, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    run = RunData()
    read_wandb_run("alice/sd-lora/run42", run, Settings())
    assert run.log.loss_key == "train/loss" and len(run.log.loss) == N_STEPS
    assert np.isnan(run.log.loss.values[NAN_STEP]) and run.log.loss.steps[NAN_STEP] == NAN_STEP
    assert [s.step for s in run.samples] == list(SAMPLE_STEPS)  # from _step, not from the file names
    assert run.samples[0].image.shape == (48, 48, 3)
    assert run.config["weight_decay"] == 0.01
    assert [p.name for p in run.checkpoints] == ["lora-step000400.safetensors"]
    t = run.tracker
    assert (t["kind"], t["entity"], t["project"], t["run_id"], t["group"], t["offline"]) == (
        "wandb", "alice", "sd-lora", "run42", "exp1", False)


def test_history_without_parquet_export_falls_back_to_full_history(server, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    hist = {"_step": [0, 5, 10, 15], "loss": [0.5, 0.4, float("nan"), 0.3], "lr": [1e-4] * 4}
    server.add_run(FakeRun("alice", "sd-lora", "run45", history=hist, parquet=False))
    start = len(server.requests)
    run = RunData()
    read_wandb_run("alice/sd-lora/run45", run, Settings())
    ops = [r.op for r in server.requests[start:] if r.op]
    assert "RunParquetHistory" in ops and "RunFullHistory" in ops
    assert run.log.loss.steps.tolist() == [0, 5, 10, 15]
    np.testing.assert_array_equal(run.log.loss.values, hist["loss"])


def test_push_twice_leaves_one_companion_copy(server, tmp_path):
    """Pushing again resumes the companion (deterministic id) and rewrites its summary only."""
    from diffdiag.integrations.wandb_sink import push_wandb

    server.add_run(FakeRun("alice", "sd-lora", "run43", history={"_step": [0, 1], "loss": [1.0, 0.5]},
                           group="exp2"))
    run = RunData(name="run43")
    run.tracker = {"kind": "wandb", "run_id": "run43", "project": "sd-lora", "entity": "alice",
                            "group": "exp2", "offline": False, "dir": None, "base_url": server.url}
    for n in (1, 2):
        diag = Diagnosis(findings=[Finding("loss_spike", "warning", 0.5, "spike", {"step": 1, "key": "loss"})] * n)
        (tmp_path / "report.html").write_text(f"<p>{n}</p>")
        out = push_wandb(run, diag, tmp_path, tracker=run.tracker, push=True)
        assert out["wandb"]["companion_run"] == "diffdiag-run43" and out["wandb"]["source_tagged"]
    comp = server.runs[("alice", "sd-lora", "diffdiag-run43")]
    assert len(comp.stream_history) == 1  # the second push added no history row
    assert comp.summary["diffdiag/n_findings"] == 2  # ... but rewrote the summary
    src = server.runs[("alice", "sd-lora", "run43")]
    assert src.tags.count("diffdiag") == 1 and src.summary["diffdiag/n_findings"] == 2


def test_tag_source_run_touches_only_summary_and_tags(server):
    server.add_run(FakeRun("alice", "sd-lora", "run44", history={"_step": [0, 1], "loss": [1.0, 0.5]},
                           summary={"loss": 0.5}, tags=["lora"]))
    start = len(server.requests)
    api = make_api(server.url)
    diag = Diagnosis(findings=[Finding("loss_nonfinite", "critical", 1.0, "NaN.", {"step": 1})])
    for _ in range(2):  # idempotent: the same keys, one tag
        tag_source_run(api, "alice/sd-lora/run44", diag, "diffdiag-run44")
    muts = [r for r in server.requests[start:] if r.op == "UpsertBucket"]
    assert muts and all(set(m.variables) <= {"id", "summaryMetrics", "tags"} for m in muts)
    tags = [m.variables["tags"] for m in muts if "tags" in m.variables]
    assert tags == [["lora", "diffdiag"]]
    summary = json.loads([m for m in muts if "summaryMetrics" in m.variables][-1].variables["summaryMetrics"])
    assert summary["diffdiag/n_critical"] == 1 and summary["diffdiag/companion_run"] == "diffdiag-run44"
    assert summary["loss"] == 0.5  # the training's summary is kept
    run = server.runs[("alice", "sd-lora", "run44")]
    assert run.tags == ["lora", "diffdiag"] and run.history["loss"] == [1.0, 0.5]


def test_publish_report_subcommand(server, run_cli, tmp_path):
    from diffdiag.reports.wandb_report import SPEC_NAME, build_spec

    run = RunData(name="offline-run")
    diag = Diagnosis(findings=[Finding("loss_spike", "warning", 0.7, "A spike.", {"step": 5, "key": "loss"})])
    spec = build_spec(run, diag, {"kind": "wandb", "run_id": "run42", "project": "sd-lora", "entity": None,
                                  "offline": True})
    (tmp_path / SPEC_NAME).write_text(json.dumps(spec))
    start = len(server.requests)
    code, out, err, _ = run_cli("publish-report", str(tmp_path), "--base-url", server.url)
    assert code == 0, err
    assert "published W&B report:" in out
    views = [r for r in server.requests[start:] if r.op == "upsertView"]
    assert len(views) == 1 and views[0].variables["entityName"] == "alice"  # the default entity
    assert "loss_spike" in views[0].variables["spec"]
    assert json.loads((tmp_path / SPEC_NAME).read_text())["url"].startswith("http")
    code, out, err, _ = run_cli("publish-report", str(tmp_path / "missing"))
    assert code == 2 and "wandb_report.json" in err
    code, out, err, _ = run_cli("publish-report", str(tmp_path), "--base-url", server.url, "--project", "not-synced")
    assert code == 3 and "not-synced" in err and "wandb sync" in err and err.count("\n") == 1


def test_unknown_run_and_server_down_exit_3(server, run_cli):
    code, out, err, diag = run_cli("analyze", "--wandb-run", f"{server.url}/alice/sd-lora/runs/nope")
    assert code == 3 and diag is None
    assert err.startswith("diffdiag: error: W&B has no run alice/sd-lora/nope") and err.count("\n") == 1
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    code, out, err, diag = run_cli("analyze", "--wandb-run", f"http://127.0.0.1:{port}/alice/sd-lora/runs/run42")
    assert code == 3 and "could not be reached" in err and "after 2 attempts" in err
    assert "Traceback" not in err and err.count("\n") == 1
    _assert_no_key(out, err)


def test_no_api_key_is_a_clear_exit_3(server, run_cli, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    code, out, err, diag = run_cli("analyze", "--wandb-run", f"{server.url}/alice/sd-lora/runs/run42")
    assert code == 3 and "API key" in err and "wandb login" in err


@pytest.mark.parametrize("ref, expected", [
    ("alice/sd-lora/run42", ("alice", "sd-lora", "run42", None)),
    ("alice/sd-lora/runs/run42", ("alice", "sd-lora", "run42", None)),
    ("https://wandb.ai/alice/sd-lora/runs/run42?nw=nwuser", ("alice", "sd-lora", "run42", None)),
    ("https://wandb.ai/alice/sd-lora/runs/run42/overview", ("alice", "sd-lora", "run42", None)),
    ("http://wandb.corp.example:8080/team-a/proj.x/runs/ab-12", ("team-a", "proj.x", "ab-12",
                                                                 "http://wandb.corp.example:8080")),
])
def test_parse_ref_forms(ref, expected):
    from diffdiag.integrations.wandb_source import parse_ref

    r = parse_ref(ref)
    assert r["kind"] == "online" and (r["entity"], r["project"], r["run_id"], r["base_url"]) == expected


@pytest.mark.parametrize("ref", ["just-a-name", "a/b", "https://wandb.ai/alice/sd-lora/reports/x", "a/b/c/d/e"])
def test_parse_ref_rejects(ref):
    from diffdiag.errors import InputError
    from diffdiag.integrations.wandb_source import parse_ref

    with pytest.raises(InputError):
        parse_ref(ref)
