"""W&B offline runs, end to end, with the real wandb client (no server: WANDB_MODE=offline).

A module-scoped fixture trains nothing but logs like a trainer does: a decaying,
noisy loss with injected faults (spikes, a NaN), LR and grad norm, sample images
that grow vertical stripes part-way through, and LoRA checkpoints (the last one
with NaN weights) as a ``model`` artifact. diffdiag then reads the run directory,
diagnoses it, pushes a companion run beside it, and the companion is read back
with the same reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")

from diffdiag.errors import InputError  # noqa: E402
from diffdiag.integrations.wandb_records import read_wandb_file  # noqa: E402
from diffdiag.integrations.wandb_source import read_wandb_run  # noqa: E402
from diffdiag.model import RunData, Settings  # noqa: E402

from .wandb_util import finish_synced, isolated_wandb  # noqa: E402

STEP0 = 1000  # logged steps start here, so W&B's internal media counter never equals a step


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """Private W&B folders (staging, cache, config) and diffdiag cache for this module."""
    root = tmp_path_factory.mktemp("wandb_env")
    with isolated_wandb({"WANDB_MODE": "offline", "WANDB_DATA_DIR": str(root / "data"),
                         "WANDB_CACHE_DIR": str(root / "cache"), "WANDB_CONFIG_DIR": str(root / "config"),
                         "WANDB_SILENT": "true", "DIFFDIAG_CACHE": str(root / "dd-cache"), "WANDB_API_KEY": None}):
        yield root


def _striped(img: np.ndarray, period: int, amp: float) -> np.ndarray:
    x = np.arange(img.shape[1])
    stripe = amp * (((x // (period // 2)) % 2) * 2 - 1)
    return np.clip(img + stripe[None, :, None], 0, 1)


def _lora(rng: np.random.Generator, scale: float, nan: bool = False) -> dict[str, np.ndarray]:
    out = {}
    for name in ("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_up_blocks_1_attentions_0_proj_out"):
        down = (rng.standard_normal((4, 32)) * 0.05 * scale).astype(np.float32)
        up = (rng.standard_normal((32, 4)) * 0.05 * scale).astype(np.float32)
        if nan:
            up[0, 0] = np.nan
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = np.array(4.0, dtype=np.float32)
    return out


def make_faulty_run(root: Path, seed: int, n_steps: int = 2000) -> dict:
    """Log a faulty training run offline; return the ground truth."""
    from safetensors.numpy import save_file
    from skimage import data, transform

    rng = np.random.default_rng(seed)
    steps = STEP0 + np.arange(n_steps)
    base = 0.08 + 0.5 * np.exp(-np.arange(n_steps) / (300 + 100 * seed))
    loss = base * rng.lognormal(0.0, 0.25, n_steps)
    spike_at = np.sort(rng.choice(np.arange(80, n_steps - 150), size=3, replace=False))
    loss[spike_at] *= 12.0
    nan_at = int(rng.integers(n_steps - 120, n_steps - 20))
    loss[nan_at] = np.nan
    onset = int(rng.choice([1000, 1200, 1400]))
    sample_every = 200
    cam = transform.resize(data.camera(), (96, 96), anti_aliasing=True).astype(np.float32)
    cam = np.repeat(cam[:, :, None], 3, axis=2)
    run = wandb.init(project="diffdiag-test", group=f"grp{seed}", dir=str(root), id=f"faulty{seed}",
                     config={"learning_rate": 1e-4, "weight_decay": 0.01, "network_dim": 4},
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    sample_steps, ckpts = [], []
    for i, s in enumerate(steps):
        row = {"train/loss": float(loss[i]), "lr": 1e-4, "grad_norm": float(1.0 + 0.1 * rng.standard_normal())}
        if i % sample_every == 0:
            img = cam if i < onset else _striped(cam, 8, 0.25)
            row["samples"] = wandb.Image((img * 255).astype(np.uint8), caption=f"step {s}")
            sample_steps.append(int(s))
        run.log(row, step=int(s))
        if i in (800, n_steps - 1):
            path = root / f"lora-step{int(s):06d}.safetensors"
            save_file(_lora(np.random.default_rng(seed), 1.0, nan=(i == n_steps - 1)), str(path))
            art = wandb.Artifact(f"lora-{seed}", type="model", metadata={"step": int(s)})
            art.add_file(str(path))
            run.log_artifact(art)
            ckpts.append(path.name)
    run.log({"eval": wandb.Table(columns=["prompt", "clip"], data=[["a cat", 0.31], ["a dog", 0.29]])},
            step=int(steps[-1]) + 1)
    run.summary["best_loss"] = float(np.nanmin(loss))
    finish_synced(run)
    run_dir = Path(run.dir).parent
    return {"dir": run_dir, "wandb_dir": run_dir.parent, "id": f"faulty{seed}", "steps": steps, "loss": loss,
            "spikes": (STEP0 + spike_at).tolist(), "nan_step": STEP0 + nan_at, "onset": STEP0 + onset,
            "sample_steps": sample_steps, "checkpoints": ckpts, "seed": seed}


@pytest.fixture(scope="module")
def faulty(wandb_env):
    return make_faulty_run(wandb_env / "train", seed=1)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_reader_gives_exact_columns_and_media_steps(faulty):
    rec = read_wandb_file(next(faulty["dir"].glob("run-*.wandb")))
    steps, values = rec.scalars["train/loss"]
    np.testing.assert_array_equal(steps, faulty["steps"])
    np.testing.assert_array_equal(values, faulty["loss"])  # NaN kept, values bit-exact
    assert rec.dropped_bytes == 0 and not rec.warnings
    images = [m for m in rec.media if m.kind == "image-file"]
    assert [m.step for m in images] == faulty["sample_steps"]
    # the file names carry wandb's internal counter, not the step: the reader must not use them
    assert any(str(m.step) not in m.path for m in images)
    assert rec.config["weight_decay"] == 0.01 and rec.run["group"] == "grp1"
    assert rec.summary["best_loss"] == pytest.approx(float(np.nanmin(faulty["loss"])))
    arts = [a for a in rec.artifacts if a["type"] == "model"]
    assert len(arts) == 2 and all(Path(a["files"][0]["local_path"]).exists() for a in arts)


def test_source_fills_run_data(faulty):
    run = RunData()
    read_wandb_run(str(faulty["dir"]), run, Settings(max_images=50))
    assert run.log.loss_key == "train/loss" and run.log.lr_key == "lr"
    assert [s.step for s in run.samples] == faulty["sample_steps"]
    assert run.samples[0].image.shape == (96, 96, 3) and run.samples[0].image.dtype == np.float32
    assert run.config["weight_decay"] == 0.01
    assert sorted(p.name for p in run.checkpoints) == sorted(faulty["checkpoints"])
    assert all(p.read_bytes()[:8] for p in run.checkpoints)
    assert run.tracker_tables["eval"][0]["data"] == [["a cat", 0.31], ["a dog", 0.29]]
    t = run.tracker
    assert t["kind"] == "wandb" and t["run_id"] == faulty["id"] and t["offline"] is True
    assert t["project"] == "diffdiag-test" and t["group"] == "grp1" and t["dir"] == str(faulty["dir"])
    # the wandb/ folder resolves to its latest run, and a .wandb file to its directory
    for ref in (faulty["wandb_dir"], next(faulty["dir"].glob("run-*.wandb"))):
        other = RunData()
        read_wandb_run(str(ref), other, Settings())
        assert other.tracker["run_id"] == faulty["id"]
    # a push target named by its ref alone finds the same record the source wrote (diffdiag.push)
    from diffdiag.integrations.wandb_source import tracker_record

    assert tracker_record(str(faulty["dir"])) == t


def _assert_diagnosis(faulty: dict, diag: dict) -> None:
    nonfinite = [f for f in diag["findings"] if f["id"] == "loss_nonfinite"]
    assert len(nonfinite) == 1
    assert nonfinite[0]["location"]["step"] == faulty["nan_step"]
    assert nonfinite[0]["location"]["key"] == "train/loss" and nonfinite[0]["severity"] == "critical"
    assert diag["inputs"]["wandb_run"] == str(faulty["dir"])
    # the last checkpoint artifact holds NaN weights
    ck = [f for f in diag["findings"] if f["id"] == "checkpoint_nonfinite"]
    assert ck and faulty["checkpoints"][-1] in ck[0]["location"]["checkpoint"]
    spikes = {f["location"]["step"] for f in diag["findings"] if f["id"] == "loss_spike"}
    assert set(faulty["spikes"]) <= spikes
    assert any(c["symptom"] == "loss_spikes" for c in diag["causes"])
    # the sample images grow vertical stripes at a known step: seen in the W&B samples, at that step
    onset = [f for f in diag["findings"] if f["id"] == "artifact_onset" and f["location"]["artifact"] == "stripes"]
    assert onset and onset[0]["location"]["step"] == faulty["onset"]
    striped = {f["location"]["image"] for f in diag["findings"] if f["id"] == "stripes"}
    assert striped == {f"wandb:samples@{s}#0" for s in faulty["sample_steps"] if s >= faulty["onset"]}


def _companions(wandb_dir: Path, run_id: str) -> list[Path]:
    return sorted(d for d in wandb_dir.iterdir() if d.is_dir() and (d / f"run-diffdiag-{run_id}.wandb").exists())


def test_analyze_by_directory_push_companion_read_back_idempotent(faulty, run_cli, tmp_path):
    """Analyse the offline run by its directory, push twice: one companion run, read back with our reader."""
    src_file = next(faulty["dir"].glob("run-*.wandb"))
    before = _sha(src_file)
    latest = os.readlink(faulty["wandb_dir"] / "latest-run")
    for i in range(2):
        code, out, err, diag = run_cli("analyze", "--wandb-run", str(faulty["dir"]), "--push", "--format", "json",
                                       report=tmp_path / f"rep{i}")
        assert code == 0, err
        if i == 0:
            _assert_diagnosis(faulty, diag)
        comps = _companions(faulty["wandb_dir"], faulty["id"])
        assert len(comps) == 1, comps  # pushing twice leaves one copy
        assert diag["outputs"]["wandb"]["companion_run"] == f"diffdiag-{faulty['id']}"
        assert diag["outputs"]["wandb"]["dir"] == str(comps[0])
    assert _sha(src_file) == before  # the training run is never touched
    assert os.readlink(faulty["wandb_dir"] / "latest-run") == latest
    rec = read_wandb_file(next(comps[0].glob("run-*.wandb")))
    assert rec.run["run_id"] == f"diffdiag-{faulty['id']}" and rec.run["job_type"] == "diffdiag"
    assert rec.run["group"] == "grp1" and rec.run["project"] == "diffdiag-test"
    assert rec.config["source_run"] == faulty["id"]
    tables = {m.key: m for m in rec.media if m.kind == "table-file"}
    assert set(tables) == {"diffdiag/findings", "diffdiag/causes"}
    doc = json.loads((comps[0] / "files" / tables["diffdiag/findings"].path).read_text())
    assert doc["columns"][:3] == ["index", "id", "severity"]
    assert [r[1] for r in doc["data"]] == [f["id"] for f in diag["findings"]]
    figs = [m for m in rec.media if m.kind == "image-file" and m.key.startswith("diffdiag/figures/")]
    assert {Path(f).stem for f in diag["outputs"]["figures"]} == {m.key.rsplit("/", 1)[1] for m in figs}
    assert all((comps[0] / "files" / m.path).exists() for m in figs)
    # the striped samples come back annotated: their stripe bands as W&B bounding boxes
    annotated = [m for m in rec.media if m.key == "diffdiag/annotated"]
    striped = sorted({f["location"]["image"] for f in diag["findings"] if f["id"] == "stripes"})
    assert sorted(m.value["caption"].split(":")[0] + ":" + m.value["caption"].split(":")[1]
                  for m in annotated) == striped
    for m in annotated:
        boxes = json.loads((comps[0] / "files" / m.value["boxes"]["diffdiag"]["path"]).read_text())
        assert any("stripes" in b["box_caption"] for b in boxes["box_data"])
        assert all(b["domain"] == "pixel" for b in boxes["box_data"])
    report_art = [a for a in rec.artifacts if a["type"] == "diffdiag-report"]
    assert report_art and {"report.html", "diagnosis.json"} <= {f["path"] for f in report_art[0]["files"]}
    assert rec.summary["diffdiag/n_findings"] == len(diag["findings"])
    # the companion does not shadow the training run when the wandb/ folder is analysed
    run = RunData()
    read_wandb_run(str(faulty["wandb_dir"]), run, Settings())
    assert run.tracker["run_id"] == faulty["id"]


def test_truncated_file_reads_what_is_whole(faulty, run_cli, tmp_path):
    src = faulty["dir"]
    dst = tmp_path / "wandb" / src.name
    shutil.copytree(src, dst)
    wfile = next(dst.glob("run-*.wandb"))
    data = wfile.read_bytes()
    cut = int(len(data) * 0.6) + 3  # mid-record
    wfile.write_bytes(data[:cut])
    rec = read_wandb_file(wfile)
    assert rec.dropped_bytes > 0 and "dropped the last" in rec.warnings[0]
    steps, values = rec.scalars["train/loss"]
    n = len(steps)
    assert 0 < n < len(faulty["steps"])
    np.testing.assert_array_equal(steps, faulty["steps"][:n])
    np.testing.assert_array_equal(values, faulty["loss"][:n])
    code, out, err, diag = run_cli("analyze", "--wandb-run", str(dst))
    assert code == 0, err
    assert "dropped the last" in out


def test_unsupported_version_and_bad_input(faulty, run_cli, tmp_path):
    dst = tmp_path / "v9"
    shutil.copytree(faulty["dir"], dst)
    wfile = next(dst.glob("run-*.wandb"))
    data = bytearray(wfile.read_bytes())
    data[6] = 9
    wfile.write_bytes(bytes(data))
    code, out, err, diag = run_cli("analyze", "--wandb-run", str(dst))
    assert code == 2 and diag is None
    assert "format version 9" in err and "supported: format version 0" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(InputError, match="not a W&B run log"):
        bad = tmp_path / "run-x.wandb"
        bad.write_bytes(b"hello world, not wandb")
        read_wandb_file(bad)
    code, out, err, _ = run_cli("analyze", "--wandb-run", str(tmp_path / "nothing-here"))
    assert code == 2 and "neither a local W&B run directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err, _ = run_cli("analyze", "--wandb-run", str(empty))
    assert code == 2 and "holds no W&B run" in err


def test_missing_staged_checkpoint_is_a_clear_note(faulty, tmp_path):
    rec = read_wandb_file(next(faulty["dir"].glob("run-*.wandb")))
    staged = [Path(a["files"][0]["local_path"]) for a in rec.artifacts if a["type"] == "model"]
    moved = [(p, tmp_path / p.name) for p in staged]
    for a, b in moved:
        shutil.move(a, b)
    try:
        run = RunData()
        read_wandb_run(str(faulty["dir"]), run, Settings())
    finally:
        for a, b in moved:
            shutil.move(b, a)
    assert run.checkpoints == [] or all(p.exists() for p in run.checkpoints)
    notes = [w for w in run.warnings if "is not on this machine" in w]
    assert len(notes) == 2 and "--checkpoints" in notes[0] and "no longer exists" in notes[0]


def test_hook_streams_findings_without_steps_of_its_own(wandb_env):
    """The wandb hook callback writes summary keys/tables and rate-limited alerts, never a history step."""
    from diffdiag.integrations.wandb_hook import make_callback
    from diffdiag.model import Cause, Diagnosis, Finding

    assert make_callback() is None  # no active run: nothing to do
    run = wandb.init(project="diffdiag-test", dir=str(wandb_env / "hook"), id="hooked",
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    t = [0.0]
    cb = make_callback(clock=lambda: t[0], alert_interval_s=100, table_interval_s=10)
    assert cb is not None
    live = []
    for s in range(60):
        t[0] = float(s)
        run.log({"loss": 0.1}, step=s)
        if s in (12, 30, 31, 32, 45):
            sev = "warning" if s == 12 else "critical"
            fid = "loss_spike" if s == 12 else "loss_nonfinite"
            f = Finding(fid, sev, 0.9, f"{fid} at {s}", {"step": s, "key": "loss"}, {"live": True})
            cb.on_finding(f, s)
            live.append(f)
    diag = Diagnosis(findings=live, causes=[Cause("loss_spikes.corrupted_batch", "loss_spikes", 0.8, ["x"], [1],
                                                  "check the data")])
    cb.on_finish(diag, wandb_env / "hook-report")
    rec = read_wandb_file(finish_synced(run))
    steps, _ = rec.scalars["loss"]
    assert steps.tolist() == list(range(60))  # no extra rows: the hook never advanced the step
    assert set(rec.scalars) == {"loss", "_runtime", "_timestamp"}
    assert rec.summary["diffdiag/live/loss_nonfinite/count"] == 4
    assert rec.summary["diffdiag/live/loss_nonfinite/last_step"] == 45
    assert rec.summary["diffdiag/live/worst_severity"] == "critical"
    assert rec.summary["diffdiag/verdict"] == "critical problems found"
    assert rec.summary["diffdiag/top_cause/loss_spikes"] == "loss_spikes.corrupted_batch"
    for key in ("diffdiag/live_findings", "diffdiag/findings", "diffdiag/causes"):
        assert rec.summary[key]["_type"] == "table-file"
    live_table = json.loads((Path(run.dir) / rec.summary["diffdiag/live_findings"]["path"]).read_text())
    assert [r[0] for r in live_table["data"]] == [12, 30, 31, 32, 45]
    # critical at 30, 31, 32 (one alert: 100 s interval) and 45 (still inside the interval)
    assert cb.alerts_sent == 1
    assert [a["title"] for a in rec.alerts] == ["diffdiag: loss_nonfinite at step 30"]
    assert rec.alerts[0]["level"] == "ERROR"


def test_loss_diagnostics_hook_streams_into_active_run(wandb_env):
    """The training hook (LossDiagnostics, trackers="auto") finds the active offline run and writes to it."""
    hook = pytest.importorskip("diffdiag.integrations.hook")
    import warnings

    run = wandb.init(project="diffdiag-test", dir=str(wandb_env / "hook2"), id="hooked2",
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    rng = np.random.default_rng(5)
    diag = hook.LossDiagnostics(report_dir=str(wandb_env / "hook2-report"), write_report=False, warn=False,
                                sync_every=1, diag_interval=50)
    nan_step = 140
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(200):
            loss = float(0.1 * rng.lognormal(0, 0.2)) if s != nan_step else float("nan")
            run.log({"loss": loss}, step=s)
            diag.log_step(s, loss, lr=1e-4)
        result = diag.finish()
    path = finish_synced(run)
    assert result is not None and result.by_id("loss_nonfinite")
    rec = read_wandb_file(path)
    assert rec.scalars["loss"][0].tolist() == list(range(200))
    assert rec.summary["diffdiag/live/loss_nonfinite/last_step"] == nan_step
    assert rec.summary["diffdiag/findings"]["_type"] == "table-file"
    assert rec.summary["diffdiag/worst_severity"] == "critical"
    assert [a["title"] for a in rec.alerts] == [f"diffdiag: loss_nonfinite at step {nan_step}"]


def test_annotated_images_boxes_and_error_mask():
    """Anomaly boxes become W&B pixel boxes; a reference/output pair's error becomes a mask."""
    from skimage import data, transform

    from diffdiag.integrations.wandb_sink import annotated_images
    from diffdiag.model import Diagnosis, Finding, ImageInput

    ref = transform.resize(data.camera(), (64, 80), anti_aliasing=True).astype(np.float32)
    out = ref.copy()
    out[10:30, 40:60] = np.clip(out[10:30, 40:60] + 0.4 * (np.arange(20)[None, :] % 2), 0, 1)
    run = RunData(images=[ImageInput(out, "out.png", reference=ref, reference_path="ref.png")])
    diag = Diagnosis(findings=[
        Finding("hf_noise_patch", "warning", 0.8, "noise", {"image": "out.png", "bbox": [40, 10, 60, 30]}),
        Finding("loss_spike", "warning", 0.5, "spike", {"step": 3, "key": "loss"}),
    ])
    items = annotated_images(run, diag)
    assert len(items) == 1
    item = items[0]
    assert item["image"].dtype == np.uint8 and item["image"].shape == (64, 80)
    (box,) = item["boxes"]
    assert box["position"] == {"minX": 40.0, "minY": 10.0, "maxX": 60.0, "maxY": 30.0}
    assert box["domain"] == "pixel" and box["class_id"] == 2 and box["box_caption"] == "#0 hf_noise_patch"
    mask = item["mask"]
    assert mask.shape == (64, 80)
    assert mask[10:30, 40:60].any() and not mask[40:, :].any() and not mask[:, :30].any()
    img = wandb.Image(item["image"], boxes={"diffdiag": {"box_data": item["boxes"]}},
                      masks={"error": {"mask_data": item["mask"]}})
    assert img is not None
