"""MLflow integration against a REAL ``mlflow server`` (started once per session on 127.0.0.1)
and against diffdiag's embedded SQLite store.

A training run with injected faults is logged (a loss with a spike, NaN and
inf steps at random positions, EMA, LR, grad norm; step images; a nested
LoRA checkpoint and a truncated one), FINISHED, analysed with
``diffdiag analyze --mlflow-run … --push`` and read back with ``MlflowClient``.
Nothing is faked: the "truncated checkpoint" is a real safetensors file cut short.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")

from diffdiag.integrations.mlflow_store import free_port, start_server  # noqa: E402

from diffdiag.integrations.mlflow_sink import NOTE_BEGIN, NOTE_END  # noqa: E402

from .conftest import validate_diagnosis  # noqa: E402

LOSS_SPIKES = {"loss_spike", "loss_divergence", "ema_divergence", "loss_nonfinite"}
LOSS_CAUSES = {"loss_spikes.corrupted_batch", "loss_spikes.learning_rate_too_high", "loss_spikes.ema_gap"}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (SQLite store, proxied artifacts) on a free port; stopped by PID."""
    server = start_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()
        assert server.proc.poll() is not None


@pytest.fixture(scope="session")
def embedded_root(tmp_path_factory) -> Path:
    """A folder whose ``.diffdiag/mlflow.db`` is diffdiag's embedded store (migrated once per session)."""
    root = tmp_path_factory.mktemp("embedded")
    (root / "mlruns" / "0").mkdir(parents=True)  # an old file store must not switch anything
    return root


@pytest.fixture(autouse=True)
def _mlflow_env(tmp_path_factory, monkeypatch):
    """Short retries, a private download cache, no tracking URI leaking in from the environment."""
    monkeypatch.setenv("DIFFDIAG_MLFLOW_RETRIES", "2")
    monkeypatch.setenv("DIFFDIAG_MLFLOW_BACKOFF", "0.05")
    monkeypatch.setenv("DIFFDIAG_CACHE", str(tmp_path_factory.getbasetemp() / "diffdiag-cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DIFFDIAG_MLFLOW_DIR", raising=False)


def _lora_file(path: Path, rng, rank: int = 4, dim: int = 32) -> Path:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_down_0.lora_down.weight": rng.standard_normal((rank, dim)).astype(np.float32) * 0.1,
               "lora_unet_down_0.lora_up.weight": rng.standard_normal((dim, rank)).astype(np.float32) * 0.01,
               "lora_unet_down_0.alpha": np.array(float(rank), np.float32)}, str(path))
    return path


def log_faulty_run(client, exp_id: str, workdir: Path, seed: int, n: int = 1500) -> dict:
    """Log and FINISH a run with known faults; return its id, truth and the pre-push run info."""
    from mlflow.entities import Metric, Param, RunTag
    from skimage import data

    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    loss = 0.12 + 0.3 * np.exp(-steps / 400) + 0.02 * rng.standard_normal(n)
    spike = int(rng.integers(n // 5, n // 2))
    loss[spike] = 3.0
    nan_step = int(rng.integers(n // 2 + 10, n - 20))
    loss[nan_step] = np.nan
    loss[nan_step + 3] = np.inf
    ema = np.convolve(np.nan_to_num(loss, posinf=3), np.ones(20) / 20, mode="same")
    lr = np.full(n, 1e-4)
    gn = 1 + 0.1 * rng.standard_normal(n)
    run = client.create_run(exp_id, run_name=f"faulty-{seed}")
    rid = run.info.run_id
    t0 = int(time.time() * 1000)
    ms = [Metric(k, float(v[s]), t0 + int(s), int(s)) for s in steps.tolist()
          for k, v in (("train/loss", loss), ("loss_ema", ema), ("lr", lr), ("grad_norm", gn))]
    for i in range(0, len(ms), 1000):
        client.log_batch(rid, metrics=ms[i:i + 1000])
    client.log_batch(rid, params=[Param("learning_rate", "1e-4"), Param("weight_decay", "0.01"),
                                  Param("network_dim", "4")],
                     tags=[RunTag("team", "vision"), RunTag("mlflow.note.content", f"User note {seed}: keep me.")])
    img = data.astronaut()[::4, ::4]
    sample_steps = sorted({int(s) for s in rng.choice(np.arange(100, n, 100), 3, replace=False)})
    for s in sample_steps:
        client.log_image(rid, img, key="samples/astronaut", step=s)
    ck_step = int(sample_steps[-1])
    good = _lora_file(workdir / f"ck{seed}" / f"checkpoint-{ck_step}" / "lora.safetensors", rng)
    client.log_artifacts(rid, str(good.parent.parent), "checkpoints")
    broken = workdir / f"broken{seed}" / "broken.safetensors"
    _lora_file(broken, rng)
    broken.write_bytes(broken.read_bytes()[:-40])
    client.log_artifact(rid, str(broken), "checkpoints/old")
    client.set_terminated(rid)
    info = client.get_run(rid).info
    return {"run_id": rid, "spike": spike, "nan_steps": [nan_step, nan_step + 3], "sample_steps": sample_steps,
            "ck_step": ck_step, "status": info.status, "end_time": info.end_time, "seed": seed}


def _artifact_tree(client, rid: str) -> list[tuple[str, int]]:
    from diffdiag.integrations.mlflow_source import walk_artifacts

    return sorted((f.path, f.file_size) for f in walk_artifacts(client, rid, errors=[]))


def _read_json(client, rid: str, path: str, tmp: Path):
    local = client.download_artifacts(rid, path, str(tmp))
    return json.loads(Path(local).read_text())


def check_pushed(client, truth: dict, diag: dict, tmp: Path) -> None:
    """Everything the push must have written, read back with MlflowClient."""
    rid = truth["run_id"]
    r = client.get_run(rid)
    # the run itself is untouched
    assert r.info.status == truth["status"] == "FINISHED"
    assert r.info.end_time == truth["end_time"]
    # findings: the non-finite loss at the injected steps
    nonfinite = [f for f in diag["findings"] if f["id"] == "loss_nonfinite"]
    assert len(nonfinite) == 1
    assert nonfinite[0]["location"]["key"] == "train/loss"
    assert nonfinite[0]["location"]["steps"] == truth["nan_steps"]
    assert nonfinite[0]["severity"] == "critical"
    spikes = [f["location"]["step"] for f in diag["findings"] if f["id"] == "loss_spike"]
    assert any(abs(s - truth["spike"]) <= 2 for s in spikes), (truth["spike"], spikes)
    # no flood of false spikes elsewhere (the non-finite steps are reported as loss_nonfinite)
    assert all(abs(s - truth["spike"]) <= 2 or min(abs(s - n) for n in truth["nan_steps"]) <= 3
               for s in spikes), (truth, spikes)
    # tags
    tags = r.data.tags
    assert tags["diffdiag.verdict"] == "critical"
    assert tags["diffdiag.top_cause"] in LOSS_CAUSES
    assert tags["diffdiag.top_cause"] == diag["outputs"]["mlflow"]["tags"]["diffdiag.top_cause"]
    assert tags["diffdiag.version"] == diag["tool"]["version"]
    assert tags["diffdiag.findings"] == str(len(diag["findings"]))
    assert tags["team"] == "vision"  # the training's own tags are kept
    # tables, registered for the artifact-evaluation view
    logged = json.loads(tags["mlflow.loggedArtifacts"])
    assert {"path": "diffdiag/findings.json", "type": "table"} in logged
    assert {"path": "diffdiag/causes.json", "type": "table"} in logged
    assert len(logged) == len({json.dumps(x, sort_keys=True) for x in logged})
    ft = _read_json(client, rid, "diffdiag/findings.json", tmp)
    cols = ft["columns"]
    assert [row[cols.index("id")] for row in ft["data"]] == [f["id"] for f in diag["findings"]]
    ct = _read_json(client, rid, "diffdiag/causes.json", tmp)
    assert [row[ct["columns"].index("id")] for row in ct["data"]] == [c["id"] for c in diag["causes"]]
    assert {row[ct["columns"].index("symptom")] for row in ct["data"]} == {"loss_spikes"}
    # the diagnosis and the report
    pushed = _read_json(client, rid, "diffdiag/diagnosis.json", tmp)
    assert [f["id"] for f in pushed["findings"]] == [f["id"] for f in diag["findings"]]
    assert pushed["outputs"]["mlflow"]["run_id"] == rid
    tree = dict(_artifact_tree(client, rid))
    assert tree.get("diffdiag/report.html", 0) > 1000
    assert any(p.startswith("diffdiag/figures/") and p.endswith(".png") for p in tree)
    # anomaly images: one per (finding, image) located in a logged sample
    located = {(f["id"], f["location"]["image"]) for f in diag["findings"]
               if isinstance(f["location"].get("image"), str)}
    own_images = [p for p in tree if p.startswith("images/diffdiag~") and p.endswith(".png")]
    assert len(own_images) == len(located) == diag["outputs"]["mlflow"]["images"]
    # the training's images and checkpoints are still there, unchanged
    assert sum(p.startswith("images/samples~astronaut+step+") and p.endswith(".png") for p in tree) == 3
    assert f"checkpoints/checkpoint-{truth['ck_step']}/lora.safetensors" in tree
    # the note: the user's text first, diffdiag's section once, below it
    note = tags["mlflow.note.content"]
    assert note.startswith(f"User note {truth['seed']}: keep me.")
    assert note.count(NOTE_BEGIN) == 1 and note.count(NOTE_END) == 1 and note.index(NOTE_BEGIN) > 0
    assert "loss_nonfinite" in note and "critical problems found" in note


def analyze_push(run_cli, rid: str, report: Path, *uri: str):
    args = ["analyze", "--mlflow-run", rid, "--push", "--no-progress"]
    if uri:
        args += ["--mlflow-tracking-uri", uri[0]]
    return run_cli(*args, report=report)


def run_flow(client, exp_id, run_cli, tmp_path: Path, seed: int, *uri: str, before=None, second=None) -> str:
    """Log, analyse + push (CLI), push again (CLI, or ``second(run_id, report_dir) -> diagnosis dict``),
    check both pushes and that the second left one copy. ``before(run_id)`` runs before the first."""
    truth = log_faulty_run(client, exp_id, tmp_path, seed)
    if before:
        before(truth["run_id"])
    code, out, err, diag = analyze_push(run_cli, truth["run_id"], tmp_path / "r1", *uri)
    # the truncated checkpoint is a bad file: one line naming it, the rest analysed and pushed, exit 2
    bad = [ln for ln in err.splitlines() if "broken.safetensors" in ln]
    assert code == 2 and len(bad) == 1 and "broken.safetensors is truncated" in bad[0], err
    inputs = diag["inputs"]["mlflow_run"]
    assert inputs["run_id"] == truth["run_id"]
    assert inputs["samples"] == 3 and inputs["checkpoints"] == 1
    check_pushed(client, truth, diag, tmp_path / "dl1")
    first_tree = _artifact_tree(client, truth["run_id"])
    first_tags = client.get_run(truth["run_id"]).data.tags
    # the second push leaves one copy of everything; the checkpoint comes from the cache
    if second is None:
        code, out, err, diag2 = analyze_push(run_cli, truth["run_id"], tmp_path / "r2", *uri)
        assert code == 2 and "broken.safetensors is truncated" in err, err
    else:
        diag2 = second(truth["run_id"], tmp_path / "r2")
    assert diag2["inputs"]["mlflow_run"]["cache_hits"] >= 1 + 3
    assert diag2["inputs"]["mlflow_run"]["downloads"] == 0
    check_pushed(client, truth, diag2, tmp_path / "dl2")
    second_tree = _artifact_tree(client, truth["run_id"])
    assert [p for p, _ in second_tree] == [p for p, _ in first_tree]
    second_tags = client.get_run(truth["run_id"]).data.tags
    for k in ("diffdiag.verdict", "diffdiag.top_cause", "mlflow.loggedArtifacts"):
        assert second_tags[k] == first_tags[k]
    assert len(second_tags["mlflow.note.content"]) == len(first_tags["mlflow.note.content"]) or \
        second_tags["mlflow.note.content"].count(NOTE_BEGIN) == 1
    return truth["run_id"]


def test_push_roundtrip_server(mlflow_server, run_cli, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    exp_id = client.create_experiment(f"faults-{tmp_path.name}")
    run_flow(client, exp_id, run_cli, tmp_path, 11, mlflow_server.url)


def test_push_roundtrip_embedded_store(run_cli, embedded_root, tmp_path, monkeypatch):
    """No URI anywhere: diffdiag's own sqlite:///<abs>/.diffdiag/mlflow.db, even with a stale ./mlruns."""
    from diffdiag.integrations.mlflow_store import embedded_location, ensure_experiment, get_client

    monkeypatch.chdir(embedded_root)
    loc = embedded_location(announce=False)
    assert loc.tracking_uri == f"sqlite:///{embedded_root.resolve()}/.diffdiag/mlflow.db"
    client = get_client(loc)
    exp_id = ensure_experiment(client, "diffdiag", loc)
    assert client.get_experiment(exp_id).artifact_location == (embedded_root / ".diffdiag" / "mlartifacts"
                                                               / "diffdiag").resolve().as_uri()
    import contextlib
    import io

    from diffdiag.integrations.mlflow_demo import analyze_and_push, log_run_to_store

    def lose_an_artifact(rid: str) -> None:
        """An artifact gone missing from the store: a dangling link in its own folder."""
        lost = Path(client.get_run(rid).info.artifact_uri.removeprefix("file://")) / "checkpoints" / "lost"
        lost.mkdir(parents=True)
        (lost / "lora.safetensors").symlink_to(tmp_path / "nowhere.safetensors")

    printed = io.StringIO()

    def demo_push(rid: str, report: Path) -> dict:
        """The second push goes through the main job's helper (read, analyse, report, push, UI command)."""
        with contextlib.redirect_stderr(io.StringIO()):
            d = analyze_and_push(rid, loc.tracking_uri, report, out=printed)
        assert any("checkpoints/lost" in w and "cannot be listed" in w for w in d.warnings)
        return validate_diagnosis(report / "diagnosis.json")

    run_flow(client, exp_id, run_cli, tmp_path, 23, before=lose_an_artifact, second=demo_push)
    assert f"mlflow ui --backend-store-uri {loc.tracking_uri}" in printed.getvalue()
    assert (embedded_root / ".diffdiag" / "mlflow.db").is_file()
    # the main job's logger: a FINISHED run in the embedded store, read back with MlflowClient
    lora = _lora_file(tmp_path / "ok" / "lora-step00000020.safetensors", np.random.default_rng(0))
    rid, uri = log_run_to_store({"loss": (np.arange(30), np.linspace(1, 0.1, 30))},
                                workdir=embedded_root / ".diffdiag", params={"learning_rate": 1e-3},
                                note="demo note", images=[("samples/grid", 20, np.zeros((8, 8, 3)))],
                                artifacts=[(lora, "checkpoints/good")])
    assert uri == loc.tracking_uri
    r = client.get_run(rid)
    assert r.info.status == "FINISHED" and r.info.experiment_id == exp_id
    assert r.data.params == {"learning_rate": "0.001"} and r.data.tags["mlflow.note.content"] == "demo note"
    assert [m.step for m in client.get_metric_history(rid, "loss")] == list(range(30))
    tree = [p for p, _ in _artifact_tree(client, rid)]
    assert "checkpoints/good/lora-step00000020.safetensors" in tree
    assert any(p.startswith("images/samples~grid+step+20+") for p in tree)
    assert not any((embedded_root / "mlruns").rglob("meta.yaml"))
    assert not (embedded_root / "mlflow.db").exists() and not (embedded_root / "mlartifacts").exists()


def test_unknown_run_is_a_clear_input_error(mlflow_server, run_cli):
    code, out, err, diag = run_cli("analyze", "--mlflow-run", "0123456789abcdef0123456789abcdef",
                                   "--mlflow-tracking-uri", mlflow_server.url)
    assert code == 2
    assert err.count("\n") == 1 and "0123456789abcdef0123456789abcdef" in err and "Traceback" not in err
    assert diag is None


def test_server_down_exits_3(run_cli):
    port = free_port()  # nothing listens there
    t = time.monotonic()
    code, out, err, diag = run_cli("analyze", "--mlflow-run", "0123456789abcdef0123456789abcdef",
                                   "--mlflow-tracking-uri", f"http://127.0.0.1:{port}")
    assert code == 3
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "2 tries" in err
    assert time.monotonic() - t < 30  # retries are bounded by the settings, not MLflow's minutes


def test_host_rejection_is_explained(mlflow_server, run_cli):
    """'127.1' reaches 127.0.0.1 but is not an allowed Host, so the server answers 403."""
    uri = f"http://127.1:{mlflow_server.port}"
    code, out, err, diag = run_cli("analyze", "--mlflow-run", "0123456789abcdef0123456789abcdef",
                                   "--mlflow-tracking-uri", uri)
    assert code == 3
    assert "--allowed-hosts 127.1" in err and err.count("\n") == 1


def test_run_without_loss_metric_still_analysed(mlflow_server, run_cli, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    exp_id = client.create_experiment(f"noloss-{tmp_path.name}")
    rid = client.create_run(exp_id).info.run_id
    for s in range(50):
        client.log_metric(rid, "val/accuracy", 0.5 + s / 100, step=s)
    client.set_terminated(rid)
    code, out, err, diag = run_cli("analyze", "--mlflow-run", rid, "--mlflow-tracking-uri", mlflow_server.url)
    assert code == 0, err
    assert "loss" in out and "--loss-key" in out
    assert diag["inputs"]["mlflow_run"]["metrics"] == ["val/accuracy"]


def test_sink_logs_anomaly_images_and_replaces_stale_ones(mlflow_server, tmp_path):
    """push_mlflow with a diagnosis located in a logged sample (the images analyzers' ids; the
    findings are written by hand here so the sink is tested independently of those analyzers)."""
    from mlflow import MlflowClient

    from diffdiag.integrations.mlflow_sink import push_mlflow
    from diffdiag.integrations.mlflow_source import read_mlflow_run
    from diffdiag.model import Diagnosis, Finding, RunData, Settings

    client = MlflowClient(mlflow_server.url)
    exp_id = client.create_experiment(f"img-{tmp_path.name}")
    truth = log_faulty_run(client, exp_id, tmp_path, seed=5, n=400)
    run = RunData()
    read_mlflow_run(truth["run_id"], run, Settings(), tracking_uri=mlflow_server.url)
    sample = run.samples[-1]
    f1 = Finding("stripes", "warning", 0.8, "Vertical stripes.", {"image": sample.path, "step": sample.step,
                                                                  "axis": "vertical", "period_px": 8,
                                                                  "bbox": [0, 0, 10, 10]})
    f2 = Finding("hf_noise_patch", "warning", 0.6, "Noise patch.", {"image": sample.path, "step": sample.step,
                                                                    "bbox": [0, 0, 4, 4]})
    report = tmp_path / "rep"
    report.mkdir()
    for findings, expect in (([f1, f2], {"stripes", "hf_noise_patch"}), ([f1], {"stripes"})):
        diag = Diagnosis(findings=findings, created="2026-01-01T00:00:00+00:00")
        out = push_mlflow(run, diag, report, run_id=truth["run_id"], tracking_uri=mlflow_server.url)
        assert out["mlflow"]["images"] == len(expect)
        tree = [p for p, _ in _artifact_tree(client, truth["run_id"])]
        own = [p for p in tree if p.startswith("images/diffdiag~")]
        assert {p.split("~")[1] for p in own if p.endswith(".png")} == expect
        assert all(f"+step+{sample.step}+" in p for p in own)
        assert len(own) == 2 * len(expect)  # full image + the UI's compressed copy
    r = client.get_run(truth["run_id"])
    assert r.data.tags["diffdiag.verdict"] == "warning" and r.data.tags["diffdiag.top_cause"] == "none"
    assert (r.info.status, r.info.end_time) == (truth["status"], truth["end_time"])


def test_hook_writes_live_findings_into_the_active_run(embedded_root, tmp_path):
    import mlflow as mlf
    from mlflow import MlflowClient

    from diffdiag.integrations.mlflow_hook import make_callback
    from diffdiag.integrations.mlflow_store import embedded_location, ensure_experiment, get_client
    from diffdiag.model import Diagnosis, Finding

    assert make_callback() is None  # no active run: nothing to do
    loc = embedded_location(embedded_root / ".diffdiag", announce=False)
    exp_id = ensure_experiment(get_client(loc), "diffdiag", loc)
    mlf.set_tracking_uri(loc.tracking_uri)
    try:
        with mlf.start_run(experiment_id=exp_id) as active:
            cb = make_callback()
            assert cb is not None and cb.run_id == active.info.run_id
            f = Finding("loss_nonfinite", "critical", 1.0, "NaN loss.", {"step": 7, "steps": [7], "key": "loss"})
            cb.on_finding(f, 7)
            cb.on_finish(Diagnosis(findings=[f], created="2026-01-01T00:00:00+00:00"), tmp_path)
        client = MlflowClient(loc.tracking_uri)
        r = client.get_run(active.info.run_id)
        hist = client.get_metric_history(r.info.run_id, "diffdiag/loss_nonfinite")
        assert [(m.step, m.value) for m in hist] == [(7, 1.0)]
        assert r.data.tags["diffdiag.alert"].startswith("step 7:")
        assert r.data.tags["diffdiag.verdict"] == "critical"
        assert r.info.status == "FINISHED"
    finally:
        mlf.set_tracking_uri(None)


def test_tracking_uri_resolution_and_ui_command(tmp_path, monkeypatch):
    from diffdiag.integrations.mlflow_store import default_tracking_uri, resolve_tracking_uri, ui_command

    monkeypatch.chdir(tmp_path)
    loc = resolve_tracking_uri(None, announce=False)
    assert loc.embedded and loc.origin == "embedded"
    assert loc.tracking_uri == f"sqlite:///{tmp_path.resolve()}/.diffdiag/mlflow.db"
    monkeypatch.setenv("DIFFDIAG_MLFLOW_DIR", str(tmp_path / "elsewhere"))
    assert default_tracking_uri() == f"sqlite:///{(tmp_path / 'elsewhere').resolve()}/mlflow.db"
    cmd = ui_command(resolve_tracking_uri(None, announce=False))
    assert f"--backend-store-uri sqlite:///{(tmp_path / 'elsewhere').resolve()}/mlflow.db" in cmd
    assert f"--artifacts-destination {(tmp_path / 'elsewhere' / 'mlartifacts').resolve()}" in cmd
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert resolve_tracking_uri(None, announce=False).origin == "env"
    assert resolve_tracking_uri("http://127.0.0.1:8/", announce=False).tracking_uri == "http://127.0.0.1:8"
    assert default_tracking_uri() == "http://127.0.0.1:9"
    assert default_tracking_uri(tmp_path / "w").endswith(f"{(tmp_path / 'w').resolve()}/mlflow.db")


def test_note_section_is_replaced_in_place_and_renders_without_markers():
    from markdown_it import MarkdownIt

    from diffdiag.integrations.mlflow_sink import MAX_TAG_VALUE, fit_note, merge_note, note_section
    from diffdiag.model import Diagnosis, Finding

    d1 = Diagnosis(findings=[Finding("loss_spike", "warning", 0.5, "A spike.", {"step": 3, "key": "loss"})])
    d2 = Diagnosis(findings=[Finding("loss_nonfinite", "critical", 1.0, "NaN.", {"step": 9, "steps": [9], "key": "loss"})])
    first = merge_note("User text.", note_section(d1))
    edited = first + "\n\nWritten by the user after the push."
    second = merge_note(edited, note_section(d2))
    assert second.startswith("User text.\n\n") and second.endswith("Written by the user after the push.")
    assert "A spike." not in second and "NaN." in second and second.count(NOTE_BEGIN) == 1
    assert merge_note(second, note_section(d2)) == second
    html = MarkdownIt("commonmark").enable("table").render(second)
    assert "diffdiag:begin" not in html and "diffdiag:end" not in html and "<table>" in html
    long_user = "x" * (MAX_TAG_VALUE - 600)
    fitted = fit_note(long_user, d2)
    assert fitted is not None and len(fitted) <= MAX_TAG_VALUE and fitted.startswith(long_user)
    assert fit_note("y" * MAX_TAG_VALUE, d2) is None  # never truncates the user's note


def test_no_embedded_store_is_one_clear_line_and_creates_nothing(run_cli, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err, diag = run_cli("analyze", "--mlflow-run", "0123456789abcdef0123456789abcdef",
                                   report=tmp_path / "rep")
    assert code == 2 and err.count("\n") == 1
    assert f"{work.resolve()}/.diffdiag/mlflow.db" in err and "--mlflow-tracking-uri" in err
    assert list(work.iterdir()) == []


def test_anomaly_images_have_clean_keys_and_their_box_drawn():
    """The key names the image (no folders, no mangled path); the finding's box is drawn on the image."""
    from diffdiag.integrations.mlflow_sink import anomaly_images
    from diffdiag.model import Diagnosis, Finding, ImageInput, RunData
    from diffdiag.reports.fig_images import COLORS

    grey = np.full((64, 64), 0.5, np.float32)
    run = RunData(samples=[ImageInput(grey, "/home/me/runs/exp-3/samples/step_000150_0.png", step=150),
                           ImageInput(grey, "mlflow:validation@200#1", step=200)])
    d = Diagnosis(findings=[
        Finding("stripes", "warning", 0.8, "Stripes.", {"image": run.samples[0].path, "axis": "vertical",
                                                        "period_px": 8, "bbox": [8, 16, 40, 48]}),
        Finding("hf_noise_patch", "warning", 0.6, "Noise.", {"image": run.samples[1].path, "bbox": [0, 0, 16, 16]})])
    out = anomaly_images(run, d, 16)
    assert [(k, s) for k, s, _ in out] == [("diffdiag/stripes/step_000150_0", 150),
                                           ("diffdiag/hf_noise_patch/validation_1", 200)]
    img = out[0][2]
    k = img.shape[0] // 64  # enlarged by an integer factor for a readable box
    assert img.shape == (64 * k, 64 * k, 3) and k >= 4
    color = np.array([int(COLORS["stripes"][i:i + 2], 16) / 255 for i in (1, 3, 5)])
    assert np.allclose(img[40 * k, 8 * k], color, atol=0.01)       # the box's left edge
    assert np.allclose(img[10, 60 * k], 0.5, atol=0.01)            # outside the box: the image
