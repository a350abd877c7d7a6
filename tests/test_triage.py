"""``diffdiag triage`` end to end, on both engines, with real runs of every kind.

The corpus (built once per module): log folders written by the labelled generators of
``benchmarks/scenarios/loss_logs.py`` (healthy, spikes, NaN), one unreadable log folder,
two W&B runs logged offline with the real wandb client (one healthy, one faulty with
sample images and checkpoint artifacts: ``tests/test_wandb_offline.make_faulty_run``),
and an MLflow experiment in diffdiag's embedded SQLite store with a healthy and a
faulty run (``tests/test_mlflow.log_faulty_run``). Ground truth: the generators say what
each run holds, and ``diffdiag analyze`` on each run says what its row must say.

The Ray tests start one local Ray (2 CPUs) for the session and are skipped cleanly
when ray is not installed. W&B's servers cannot run here: the listing test uses the
recording stand-in of ``tests/wandb_fake_server.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from diffdiag.model import RunData, Settings
from diffdiag.triage import Filters, TriageOptions, triage
from diffdiag.triage.journal import Journal

from .conftest import REPO, validate_diagnosis

wandb = pytest.importorskip("wandb")
pytest.importorskip("mlflow")

from .wandb_util import finish_synced, isolated_wandb  # noqa: E402

SCHEMA = json.loads((REPO / "diffdiag" / "triage.schema.json").read_text())
FIELDS = ["run", "name", "verdict", "worst_severity", "findings", "top_causes", "first_bad_step", "report", "error"]


def validate_triage(path: Path) -> dict:
    """Validate ``triage.json`` against the shipped schema (and every run's diagnosis.json); return it."""
    import jsonschema

    doc = json.loads(path.read_text())
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    for row in doc["runs"]:
        assert list(row) == FIELDS
        if row["report"]:
            assert (path.parent / row["report"]).is_file()
            validate_diagnosis(path.parent / Path(row["report"]).parent / "diagnosis.json")
    return doc


# ----------------------------------------------------------------------------- the corpus
def _log_runs(root: Path) -> dict[str, Path]:
    from benchmarks.scenarios import loss_logs as L

    out = {}
    for name, sc, write in [("logs-healthy", L.healthy(n_steps=1200, seed=1), L.write_csv),
                            ("logs-spikes", L.injected_spikes(n_steps=1200, seed=2), L.write_jsonl),
                            ("logs-nan", L.nonfinite(n_steps=1200, seed=3), L.write_csv)]:
        d = root / name
        d.mkdir(parents=True)
        write(sc, d / ("train.csv" if write is L.write_csv else "train.jsonl"))
        out[name] = d
    bad = root / "logs-unreadable"
    bad.mkdir()
    (bad / "train.csv").write_bytes(b"step,loss\n\x00\x00\x00garbage")
    out["logs-unreadable"] = bad
    return out


def _healthy_wandb_run(root: Path) -> Path:
    rng = np.random.default_rng(5)
    run = wandb.init(project="diffdiag-test", dir=str(root), id="healthy5", config={"learning_rate": 1e-4},
                     tags=["lora", "baseline"], settings=wandb.Settings(console="off", x_disable_stats=True))
    n = 1200
    loss = (0.08 + 0.4 * np.exp(-np.arange(n) / 250)) * rng.lognormal(0, 0.15, n)
    for i in range(n):
        run.log({"train/loss": float(loss[i]), "lr": 1e-4}, step=i)
    finish_synced(run)
    return Path(run.dir).parent


def _healthy_mlflow_run(client, exp_id: str) -> str:
    from mlflow.entities import Metric

    rng = np.random.default_rng(9)
    rid = client.create_run(exp_id, run_name="healthy-9", tags={"team": "vision"}).info.run_id
    n = 1200
    loss = 0.1 + 0.3 * np.exp(-np.arange(n) / 300) + 0.01 * rng.standard_normal(n)
    t0 = int(time.time() * 1000)
    ms = [Metric(k, float(v), t0 + s, s) for s in range(n) for k, v in (("train/loss", loss[s]), ("lr", 1e-4))]
    for i in range(0, len(ms), 1000):
        client.log_batch(rid, metrics=ms[i:i + 1000])
    client.set_terminated(rid)
    return rid


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every kind of run; ``runs`` are the RUN arguments, ``mlflow`` the experiment to list."""
    from diffdiag.integrations.mlflow_store import embedded_location, ensure_experiment, get_client

    from .test_mlflow import log_faulty_run
    from .test_wandb_offline import make_faulty_run

    root = tmp_path_factory.mktemp("triage-corpus")
    env = {"WANDB_MODE": "offline", "WANDB_DATA_DIR": str(root / "wb-data"), "WANDB_CACHE_DIR": str(root / "wb-cache"),
           "WANDB_CONFIG_DIR": str(root / "wb-config"), "WANDB_SILENT": "true", "WANDB_API_KEY": None,
           "DIFFDIAG_CACHE": str(root / "dd-cache"), "MLFLOW_TRACKING_URI": None, "DIFFDIAG_MLFLOW_DIR": None}
    with isolated_wandb(env):
        logs = _log_runs(root / "logs")
        wb_healthy = _healthy_wandb_run(root / "wb")
        faulty = make_faulty_run(root / "wb", seed=1)
        loc = embedded_location(root / "mlstore", announce=False)
        client = get_client(loc)
        exp_id = ensure_experiment(client, "triage-exp", loc)
        ml_faulty = log_faulty_run(client, exp_id, root / "ml-work", seed=4, n=1200)
        ml_healthy = _healthy_mlflow_run(client, exp_id)
        yield {"root": root, "logs": logs, "wandb_healthy": wb_healthy, "wandb_faulty": faulty,
               "wandb_dir": faulty["wandb_dir"], "mlflow_uri": loc.tracking_uri, "mlflow_exp": "triage-exp",
               "mlflow_faulty": ml_faulty, "mlflow_healthy": ml_healthy,
               "runs": [str(logs["logs-healthy"]), str(logs["logs-spikes"]), str(wb_healthy), str(faulty["dir"]),
                        str(logs["logs-unreadable"]), str(logs["logs-nan"])]}


def _options(corpus, report: Path, **kw) -> TriageOptions:
    base = dict(runs=list(corpus["runs"]), report_dir=report, mlflow_experiments=[corpus["mlflow_exp"]],
                mlflow_tracking_uri=corpus["mlflow_uri"], workers=2, progress=False)
    base.update(kw)
    return TriageOptions(**base)


@pytest.fixture(scope="module")
def local_result(corpus, tmp_path_factory):
    """The corpus triaged with the local engine (2 workers), with --push."""
    out = tmp_path_factory.mktemp("triage-local") / "triage"
    env = {"WANDB_MODE": "offline", "WANDB_DATA_DIR": str(corpus["root"] / "wb-data"),
           "WANDB_CACHE_DIR": str(corpus["root"] / "wb-cache"), "WANDB_CONFIG_DIR": str(corpus["root"] / "wb-config"),
           "DIFFDIAG_CACHE": str(corpus["root"] / "dd-cache"), "WANDB_API_KEY": None}
    with isolated_wandb(env):
        result = triage(_options(corpus, out, push=True))
    return result, out


# ----------------------------------------------------------------------------- local engine
def test_rows_in_input_order_with_known_verdicts(corpus, local_result):
    result, out = local_result
    doc = validate_triage(out / "triage.json")
    assert doc["runs"] == result.rows and doc["schema"] == "diffdiag.triage/1"
    by_run = {r["run"]: r for r in doc["runs"]}
    # RUN arguments first, in their order; then the experiment's two runs (newest first)
    assert [r["run"] for r in doc["runs"][:6]] == corpus["runs"]
    assert {r["run"] for r in doc["runs"][6:]} == {corpus["mlflow_faulty"]["run_id"], corpus["mlflow_healthy"]}
    assert len(doc["runs"]) == 8
    logs = corpus["logs"]
    assert by_run[str(logs["logs-healthy"])]["verdict"] == "ok"
    assert by_run[str(logs["logs-healthy"])]["findings"] == {}
    spikes = by_run[str(logs["logs-spikes"])]
    assert spikes["verdict"] == "warning" and spikes["findings"]["loss_spike"] >= 3
    assert spikes["top_causes"] == {"loss_spikes": "loss_spikes.corrupted_batch"}
    nan = by_run[str(logs["logs-nan"])]
    assert nan["verdict"] == "critical" and nan["findings"]["loss_nonfinite"] == 1
    # the unreadable run: one line naming its file; the rest were analysed
    bad = by_run[str(logs["logs-unreadable"])]
    assert bad["verdict"] is None and bad["report"] is None and "train.csv" in bad["error"]
    assert "\n" not in bad["error"]
    f = corpus["wandb_faulty"]
    wrow = by_run[str(f["dir"])]
    assert wrow["verdict"] == "critical" and wrow["findings"]["loss_nonfinite"] == 1
    assert wrow["findings"]["checkpoint_nonfinite"] >= 1 and wrow["findings"]["artifact_onset"] >= 1
    assert wrow["first_bad_step"] == min(f["spikes"])  # the first injected spike
    assert by_run[str(corpus["wandb_healthy"])]["verdict"] in ("ok", "info")
    assert by_run[corpus["mlflow_healthy"]]["verdict"] in ("ok", "info")
    ml = by_run[corpus["mlflow_faulty"]["run_id"]]
    assert ml["verdict"] == "critical" and ml["findings"]["loss_nonfinite"] == 1 and ml["name"] == "faulty-4"
    assert "broken.safetensors" in ml["error"]  # its truncated checkpoint: one line, the rest analysed
    assert [r["run"] for r in doc["runs"] if r["error"]] == [str(logs["logs-unreadable"]), ml["run"]]
    # every analysed row is what `diffdiag analyze` says of that run
    for r in doc["runs"]:
        if r["report"]:
            diag = json.loads((out / Path(r["report"]).parent / "diagnosis.json").read_text())
            assert sum(r["findings"].values()) == len(diag["findings"])
    assert result.exit_code() == 2  # one unreadable run


def test_html_table_and_small_multiples(local_result):
    _result, out = local_result
    page = (out / "triage.html").read_text()
    assert page.count("<tr data-verdict=") == 8
    assert "class='sortable'" in page and "addEventListener('click'" in page
    assert page.count("<svg ") == 7  # a curve for every run that logged a loss (all but the unreadable one)
    assert "loss_spikes.corrupted_batch" in page and "c-critical" in page
    assert "<title>loss_nonfinite (critical) at step" in page
    doc = json.loads((out / "triage.json").read_text())
    for r in doc["runs"]:
        if r["report"]:
            assert f"href='{r['report']}'" in page


def test_push_wrote_triage_runs_and_each_run(corpus, local_result, tmp_path):
    from mlflow import MlflowClient

    from diffdiag.integrations.wandb_records import read_wandb_file

    result, out = local_result
    assert not [e for e in result.errors if e.startswith("push")], result.errors
    # W&B: the diffdiag-triage run beside the offline runs, with the table; and a Report spec
    wb = result.outputs["wandb"]
    rec = read_wandb_file(next(Path(wb["dir"]).glob("run-diffdiag-triage.wandb")))
    assert rec.run["run_id"] == "diffdiag-triage" and rec.run["job_type"] == "diffdiag-triage"
    assert rec.run["project"] == "diffdiag-test"
    table = [m for m in rec.media if "triage" in m.key]
    assert table, [m.key for m in rec.media]
    spec = json.loads((out / "wandb_report.json").read_text())
    assert spec["tables"] == ["diffdiag/triage"] and spec["offline"] is True
    # each W&B run got its companion, as analyze --push does
    wdir = corpus["wandb_dir"]
    assert any(wdir.glob(f"*run-*/run-diffdiag-{corpus['wandb_faulty']['id']}.wandb"))
    # MLflow: a triage run in the experiment with the artifact and tags; the runs got their own push
    client = MlflowClient(corpus["mlflow_uri"])
    ml = result.outputs["mlflow"]
    tr = client.get_run(ml["run_id"])
    assert tr.data.tags["diffdiag.kind"] == "triage" and tr.data.tags["diffdiag.triage.runs"] == "8"
    assert tr.data.tags["diffdiag.triage.critical"] == str(sum(r["verdict"] == "critical" for r in result.rows))
    names = {a.path for a in client.list_artifacts(ml["run_id"], "diffdiag")}
    assert names == {"diffdiag/triage.json", "diffdiag/triage.html"}
    faulty = client.get_run(corpus["mlflow_faulty"]["run_id"])
    assert faulty.data.tags["diffdiag.verdict"] == "critical"
    assert faulty.info.status == "FINISHED"
    # a listing never shows diffdiag's own triage run
    from diffdiag.triage.listing import list_mlflow_experiment

    listed = list(list_mlflow_experiment(corpus["mlflow_exp"], Filters(), tracking_uri=corpus["mlflow_uri"]))
    assert len(listed) == 2


def test_cli_rerun_skips_every_finished_run(corpus, local_result):
    """The real command into the same folder: the journal's runs are skipped, the unreadable one is tried
    again and is one line on stderr; exit 2."""
    import contextlib
    import io

    from diffdiag.cli import main

    result, out = local_result
    lines = len(list(Journal(out).entries()))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["triage", *corpus["runs"], "--mlflow-experiment", corpus["mlflow_exp"],
                     "--mlflow-tracking-uri", corpus["mlflow_uri"], "--report", str(out), "--push",
                     "--no-progress"])
    assert code == 2
    err = stderr.getvalue().strip().splitlines()
    assert all(line.startswith("diffdiag: error: ") for line in err) and "Traceback" not in stderr.getvalue()
    # the unreadable run, and the MLflow run whose truncated checkpoint was skipped (the rest was analysed)
    assert len(err) == 2 and "logs-unreadable" in err[0] and "broken.safetensors" in err[1], err
    assert "(1 analysed now, 7 already in the journal)" in stdout.getvalue()
    assert "critical problems found" in stdout.getvalue()
    assert validate_triage(out / "triage.json")["runs"] == result.rows
    assert len(list(Journal(out).entries())) == lines + 1


def test_filters_on_listings(corpus):
    from diffdiag.triage.listing import list_mlflow_experiment, list_wandb_project

    uri, exp = corpus["mlflow_uri"], corpus["mlflow_exp"]

    def ml(*specs):
        return sorted(i.name for i in list_mlflow_experiment(exp, Filters.parse(specs), tracking_uri=uri))

    assert ml() == ["faulty-4", "healthy-9"]
    assert ml("name=faulty-*") == ["faulty-4"]
    assert ml("tag=team=vision") == ["faulty-4", "healthy-9"]
    assert ml("state=failed,killed") == []
    assert ml("state=finished") == ["faulty-4", "healthy-9"]
    assert ml("created_before=2000-01-01") == []
    assert ml("created_after=2000-01-01T00:00Z") == ["faulty-4", "healthy-9"]
    wb = corpus["wandb_dir"]

    def wl(*specs):
        return sorted(i.name for i in list_wandb_project(str(wb), Filters.parse(specs)))

    assert len(wl()) == 2  # the two training runs; never a diffdiag companion
    assert wl("tag=baseline") == ["healthy5"]
    assert wl("state=finished", "name=faulty*") == ["faulty1"]
    with pytest.raises(Exception, match="KEY=VALUE"):
        Filters.parse(["colour=red"])
    with pytest.raises(Exception, match="ISO-8601"):
        Filters.parse(["created_after=yesterday"])


def _kill_pool_worker_on_first_entry(killed: list[int]):
    """After the first run comes back, SIGKILL a worker of the pool (a child of the fork server)."""
    import psutil

    def on_entry(entry):
        if killed:
            return
        for server in psutil.Process().children():
            try:
                if "forkserver" not in " ".join(server.cmdline()):
                    continue
                workers = [w for w in server.children() if w.status() != psutil.STATUS_ZOMBIE]
            except psutil.Error:
                continue
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
                return
    return on_entry


def test_local_worker_killed_mid_run_loses_and_duplicates_nothing(corpus, tmp_path):
    logs = corpus["logs"]
    runs = [str(logs["logs-healthy"]), str(logs["logs-nan"])]
    killed: list[int] = []
    result = triage(TriageOptions(runs=runs, report_dir=tmp_path / "t", workers=2, progress=False),
                    on_entry=_kill_pool_worker_on_first_entry(killed))
    assert killed, "no worker process was found to kill"
    assert [r["run"] for r in result.rows] == runs
    assert [r["verdict"] for r in result.rows] == ["ok", "critical"]
    entries = list(Journal(tmp_path / "t").entries())
    assert sorted(e["row"]["run"] for e in entries) == sorted(runs)  # each once
    assert not {e["pid"] for e in entries[1:]} & set(killed)  # after the kill, from the new pool


def test_rerun_after_kill_skips_finished_runs(corpus, tmp_path):
    """Kill the whole triage (driver and workers) once a run is journalled; the rerun finishes the rest."""
    logs = corpus["logs"]
    runs = [str(logs["logs-healthy"]), str(logs["logs-nan"])]
    out = tmp_path / "t"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "diffdiag", "triage", *runs, "--report", str(out), "--workers", "1",
                             "--no-progress"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    journal = Journal(out)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(journal.entries()) and proc.poll() is None:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started
        proc.wait()
    first = list(journal.entries())
    assert len(first) == 1, "the triage finished before it could be killed"
    assert not (out / "triage.json").exists()
    result = triage(TriageOptions(runs=runs, report_dir=out, workers=1, progress=False))
    assert result.skipped == 1 and result.analysed == 1
    assert [r["verdict"] for r in result.rows] == ["ok", "critical"]
    entries = list(journal.entries())
    assert sorted(e["row"]["run"] for e in entries) == sorted(runs)  # no row lost, none twice
    validate_triage(out / "triage.json")


# ----------------------------------------------------------------------------- a listing that fails midway
def test_project_listing_that_fails_midway_keeps_every_listed_row(tmp_path_factory):
    from .test_wandb_online import API_KEY
    from .wandb_fake_server import FakeRun, FakeWandbServer

    root = tmp_path_factory.mktemp("triage-online")
    env = {"WANDB_MODE": None, "WANDB_API_KEY": API_KEY, "WANDB_CONFIG_DIR": str(root / "config"),
           "WANDB_CACHE_DIR": str(root / "cache"), "WANDB_DATA_DIR": str(root / "data"),
           "DIFFDIAG_CACHE": str(root / "dd"), "DIFFDIAG_WANDB_RETRIES": "2", "DIFFDIAG_WANDB_BACKOFF": "0.05",
           "DIFFDIAG_WANDB_TIMEOUT": "5"}
    with isolated_wandb(env), FakeWandbServer(entity="alice") as srv, pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_BASE_URL", srv.url)
        rng = np.random.default_rng(1)
        for i in range(3):
            n = 600
            loss = (0.1 + 0.4 * np.exp(-np.arange(n) / 120) * rng.lognormal(0, 0.15, n)).tolist()
            if i == 1:
                loss[400] = float("nan")
            srv.add_run(FakeRun("alice", "sweep", f"run{i}", history={"_step": list(range(n)), "train/loss": loss},
                                summary={"_step": n - 1}))
        srv.fail_listing_after = 2  # the second page (page size 2) is refused
        result = triage(TriageOptions(wandb_projects=["alice/sweep"], report_dir=root / "t", workers=1,
                                      page_size=2, progress=False))
    doc = validate_triage(root / "t" / "triage.json")
    assert [r["run"] for r in doc["runs"]] == ["alice/sweep/run0", "alice/sweep/run1"]
    assert [r["verdict"] for r in doc["runs"]] == ["ok", "critical"]
    assert len(doc["errors"]) == 1 and "stopped after 2 runs" in doc["errors"][0]
    assert result.exit_code() == 3
    assert API_KEY not in (root / "t" / "triage.json").read_text()


# ----------------------------------------------------------------------------- Ray
@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session: 2 CPUs, no dashboard."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        import logging

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def _busy_ray_worker(timeout: float = 120.0) -> int | None:
    """The pid of a Ray worker while it runs a triage task (Ray titles it ``ray::analyse_run``)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["pid", "cmdline"]):
            if " ".join(p.info.get("cmdline") or []).startswith("ray::analyse_run"):
                return p.info["pid"]
        time.sleep(0.1)
    return None


def test_ray_engine_same_rows_with_a_worker_killed_mid_run(corpus, local_result, ray_local, tmp_path):
    """The corpus on Ray (2 CPUs): the rows the local engine gave, though a busy worker is SIGKILLed
    mid-run (Ray runs its task again): no row lost, none twice."""
    from diffdiag.triage.engines import RayEngine

    local, _ = local_result
    killed: list[int] = []

    def kill_one():
        pid = _busy_ray_worker()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    with RayEngine(2) as engine:
        result = triage(_options(corpus, tmp_path / "t"), engine=engine)
    killer.join(5)
    assert engine.name == "ray" and engine.workers == 2
    assert killed, "no busy Ray worker was found to kill"
    validate_triage(tmp_path / "t" / "triage.json")
    assert result.rows == local.rows
    entries = list(Journal(tmp_path / "t").entries())
    assert sorted(e["row"]["run"] for e in entries) == sorted(r["run"] for r in local.rows)  # each once
    assert not {e.get("pid") for e in entries} & set(killed)  # the killed run came back from its retry


# ----------------------------------------------------------------------------- datasets, both engines
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """55 images: photos, a darkened subset, tiled textures, a corrupt file, a hidden file, a sub-folder;
    masks: one empty, one of the wrong size, one not binary, one orphan."""
    from PIL import Image

    from benchmarks.scenarios.datasets import darkened_dataset, tiled_texture, write_dataset_case

    root = tmp_path_factory.mktemp("triage-dataset")
    case = darkened_dataset(seed=3, n=52, n_dark=4, factor=0.3)
    rng = np.random.default_rng(0)
    case.images["tiled_a.png"] = tiled_texture(rng, 192, (24, 40))
    case.images["deep/er/tiled_b.png"] = tiled_texture(rng, 160, (32, 32))
    img_dir, _ = write_dataset_case(case, root)
    (img_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img_dir / ".hidden.png")
    masks = root / "masks"
    masks.mkdir()
    names = sorted(case.images)
    first = np.asarray(Image.open(img_dir / names[0]))
    Image.fromarray(np.zeros(first.shape[:2], np.uint8)).save(masks / f"{Path(names[0]).stem}.png")
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(masks / f"{Path(names[1]).stem}.png")
    second = np.asarray(Image.open(img_dir / names[2]))
    Image.fromarray(rng.integers(0, 255, second.shape[:2], dtype=np.uint8)).save(masks / f"{Path(names[2]).stem}.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(masks / "orphan.png")
    return img_dir, masks


def _scan_fields(scan) -> dict:
    return {"root": str(scan.root), "files": scan.files, "sizes": scan.sizes, "tiling": scan.tiling,
            "masks": scan.masks, "unreadable": scan.unreadable, "counts": (scan.n_masks_matched,
            scan.images_without_mask, scan.orphan_masks),
            **{k: getattr(scan, k).tobytes() for k in ("mean", "std", "p01", "p99")}}


def _findings(scan) -> list[dict]:
    from diffdiag.checks.dataset import check_dataset

    return [f.to_dict() for f in check_dataset(RunData(dataset=scan), Settings()).findings]


def test_dataset_scans_identical_across_engines_workers_and_blocks(dataset, ray_local):
    from diffdiag.sources.dataset import load_dataset
    from diffdiag.triage.ray_dataset import scan_dataset_ray

    img_dir, masks = dataset
    local2 = load_dataset(img_dir, masks, progress=False, workers=2)
    base = _scan_fields(local2)
    found = _findings(local2)
    ids = {f["id"] for f in found}
    assert {"dataset_brightness_skew", "dataset_tiled_source", "dataset_invalid_mask"} <= ids
    assert len(local2.files) == 54 and [u[0] for u in local2.unreadable] == ["corrupt.png"]
    assert _scan_fields(load_dataset(img_dir, masks, progress=False, workers=1)) == base
    for workers, block in ((2, None), (1, 7)):
        scan = scan_dataset_ray(str(img_dir), str(masks), workers=workers, block_images=block)
        assert _scan_fields(scan) == base, (workers, block)
        assert _findings(scan) == found


def test_analyze_dataset_engine_ray(dataset, ray_local, run_cli):
    """``diffdiag analyze --dataset DIR --engine ray``: the local scan's findings, the bad files named."""
    from diffdiag.sources.dataset import load_dataset

    img_dir, masks = dataset
    code, _o, err, diag = run_cli("analyze", "--dataset", str(img_dir), "--masks", str(masks), "--engine", "ray",
                                  "--workers", "2", "--format", "json")
    assert "Traceback" not in err
    assert diag["findings"] == json.loads(json.dumps(_findings(load_dataset(img_dir, masks, progress=False))))
    assert "corrupt.png" in err and code == 2


def test_ray_dataset_reads_a_uri(dataset, ray_local):
    """A ``file://`` URI goes through pyarrow's filesystem layer (as ``s3://`` does): the same scan."""
    from diffdiag.sources.dataset import load_dataset
    from diffdiag.triage.ray_dataset import scan_dataset_ray

    img_dir, masks = dataset
    local = load_dataset(img_dir, None, progress=False, workers=1)
    scan = scan_dataset_ray(img_dir.resolve().as_uri(), None, workers=2)
    assert scan.files == local.files and scan.unreadable == local.unreadable
    assert _findings(scan) == _findings(local)
