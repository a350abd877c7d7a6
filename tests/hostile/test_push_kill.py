"""Crash-safe pushes (issue 12): SIGKILL at any moment of a push, then push again.

A push runs in a subprocess that is SIGKILLed — at named points (``DIFFDIAG_TEST_KILL_AT``, the
test-only hook of :mod:`diffdiag.killpoint`: ``os.kill(os.getpid(), SIGKILL)`` there) and at a moment
picked from outside (as soon as the push's first file lands, or a while after its staging folder
appears). After every kill the training run is exactly as the training left it: MLflow — metrics
(every step, value and timestamp), params, tags, status, start and end time, every artifact file
byte for byte; W&B — every file and link of the training's ``wandb/`` folder, ``latest-run`` and
the debug-log links included. Then one more push, and the result equals one clean push of a twin
run (the same training logged again): the same diffdiag files, tags and note section, one copy.

The killed pushes (and the push after them) go through ``diffdiag.push`` (the sink, what ``--push``
calls after the report is written), with the analysis done once here and handed over pickled, each in
a process forked from one that has already imported diffdiag and the trackers — so that a kill lands
in the push, not in imports or the analysis; the reference push of the twin runs
``diffdiag analyze --push`` itself.
Backends: MLflow's embedded SQLite store and a real ``mlflow server`` on 127.0.0.1, and offline W&B
written by the real wandb client.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from .conftest import REPO, tree_digest
from .craft import crafts

KILLED = -signal.SIGKILL
#: the named kill points of each sink, in the order a push reaches them (``test_every_kill_point_is_exercised``
#: checks that these are all the points the sinks have)
MLFLOW_POINTS = ["mlflow:after_stale", "mlflow:after_upload", "mlflow:after_images", "mlflow:after_tags"]
WANDB_POINTS = ["wandb:after_init", "wandb:after_finish", "wandb:after_move", "wandb:after_cleanup"]
#: points the MLflow server test kills at (the embedded test kills at every point)
MLFLOW_SERVER_POINTS = ["mlflow:after_stale", "mlflow:after_upload", "mlflow:after_tags"]


def test_every_kill_point_is_exercised():
    """The kill points in the sinks' source are exactly those the kill tests below use."""
    for sink, points in (("mlflow_sink", MLFLOW_POINTS), ("wandb_sink", WANDB_POINTS)):
        src = (REPO / "integrations" / f"{sink}.py").read_text()
        assert re.findall(r'kill_point\("([^"]+)"\)', src) == points, sink


_ZYGOTE = r"""
import json, os, pickle, sys, traceback
from diffdiag import api                      # imports paid once; each push runs in a fork of this process
for mod in ("mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "pandas", "PIL.Image",
            "diffdiag.integrations.mlflow_sink", "wandb", "diffdiag.integrations.wandb_sink"):
    try:
        __import__(mod)
    except ImportError:
        pass
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            os.environ.update(req["env"])
            run, diag, target, rep = pickle.load(open(req["state"], "rb"))
            api.push(diag, target, inputs=run, report_dir=rep)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}),
          flush=True)
"""


class Pusher:
    """Pushes in fresh processes, forked from one that has already imported diffdiag and the trackers
    (a kill then lands in the push, not in imports). Nothing is connected before the fork."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        env.pop("DIFFDIAG_STRICT", None)
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True, bufsize=1)

    def push(self, state: Path, env: dict[str, str], *, kill_at: str | None = None,
             kill_when: Callable[[], bool] | None = None, delay: float = 0.0, timeout: float = 120) -> int:
        """Push the pickled (run, diagnosis, target, report_dir); ``kill_at``: the named kill point;
        ``kill_when``: SIGKILL from here once it returns True (``delay`` s later). Returns the exit status."""
        env = dict(env, DIFFDIAG_TEST_KILL_AT=kill_at or "")
        self.proc.stdin.write(json.dumps({"state": str(state), "env": env}) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self.proc.stdout.readline())["pid"]
        if kill_when is not None:
            end = time.monotonic() + timeout
            while time.monotonic() < end and not kill_when():
                time.sleep(0.01)
            time.sleep(delay)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"the push process died: {self.log.read_text(errors='replace')[-2000:]}")
        code = json.loads(line)["code"]
        if code not in (0, KILLED):
            pytest.fail(f"push failed ({code}): {self.log.read_text(errors='replace')[-2000:]}")
        return code

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def pusher(tmp_path_factory):
    p = Pusher(tmp_path_factory.mktemp("pusher") / "stderr.log")
    yield p
    p.close()


def _analysis(tmp_path: Path, name: str, **spec: Any) -> tuple[Path, Path]:
    """Read + analyse + write the report once; pickle what the push needs. Returns (state, report)."""
    from diffdiag import api

    run = api.load(**spec)
    diag = api.analyze(run)
    report = tmp_path / f"report-{name}"
    api.write_report(run, diag, report)
    target = api.target_of(run)
    state = tmp_path / f"{name}.pickle"
    state.write_bytes(pickle.dumps((run, diag, target, report)))
    return state, report


def _clean_push(*args: str, report: Path) -> None:
    import contextlib
    import io

    from diffdiag.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["analyze", *args, "--push", "--no-progress", "--report", str(report)])
    assert code == 0, err.getvalue()


# ============================================================================ MLflow

def _log_training(client, exp_id: str, workdir: Path) -> str:
    """A finished training run: loss with a spike, a logged image at a step, a checkpoint artifact,
    a params/tags set and a user note (identical every time it is called)."""
    from mlflow.entities import Metric, Param, RunTag
    from safetensors.numpy import save_file

    from . import craft as C

    rng = np.random.default_rng(7)
    n = 400
    loss = 0.1 + 0.3 * np.exp(-np.arange(n) / 100) + 0.01 * rng.standard_normal(n)
    loss[260] = 2.5
    rid = client.create_run(exp_id, run_name="train").info.run_id
    client.log_batch(rid, metrics=[Metric(k, float(v[i]), 10_000 + i, i) for i in range(n)
                                   for k, v in (("loss", loss), ("lr", np.full(n, 1e-4)))],
                     params=[Param("learning_rate", "1e-4"), Param("rank", "4")],
                     tags=[RunTag("team", "vision"), RunTag("mlflow.note.content", "Training note: keep me.")])
    img = np.zeros((48, 48, 3), np.uint8)
    img[:, ::4] = 255  # vertical stripes: an image finding located in a logged sample
    client.log_image(rid, img, key="samples/grid", step=300)
    ck = workdir / f"ck-{rid}" / "checkpoint-300"
    ck.mkdir(parents=True)
    save_file(C.lora_tensors(np.random.default_rng(3), nan=True), str(ck / "lora.safetensors"))
    client.log_artifacts(rid, str(ck.parent), "checkpoints")
    client.set_terminated(rid)
    return rid


def _files(root: Path) -> dict[str, str]:
    """Artifact path -> sha256 of every file of a run whose artifacts are on this machine."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _own(path: str) -> bool:
    return path.startswith(("diffdiag/", "images/diffdiag~"))


def _mlflow_state(client, rid: str, artifacts: Path) -> dict[str, Any]:
    r = client.get_run(rid)
    return {"info": (r.info.status, r.info.start_time, r.info.end_time, r.info.run_name, r.info.lifecycle_stage),
            "metrics": {k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, k)]
                        for k in sorted(r.data.metrics)},
            "params": dict(r.data.params), "tags": dict(r.data.tags), "files": _files(artifacts)}


def _training_part(state: dict[str, Any]) -> dict[str, Any]:
    """What the training wrote: diffdiag's tags, note section, table registry entries and files left out."""
    from diffdiag.integrations.mlflow_sink import LOGGED_ARTIFACTS_TAG, NOTE_TAG, TABLES, _NOTE_RE

    tags = {k: v for k, v in state["tags"].items() if not k.startswith("diffdiag.")}
    if NOTE_TAG in tags:
        tags[NOTE_TAG] = _NOTE_RE.sub("", tags[NOTE_TAG]).rstrip()
    if LOGGED_ARTIFACTS_TAG in tags:
        logged = [e for e in json.loads(tags[LOGGED_ARTIFACTS_TAG]) if e.get("path") not in TABLES]
        tags[LOGGED_ARTIFACTS_TAG] = json.dumps(logged) if logged else None
        if tags[LOGGED_ARTIFACTS_TAG] is None:
            del tags[LOGGED_ARTIFACTS_TAG]
    return {**state, "tags": tags, "files": {p: h for p, h in state["files"].items() if not _own(p)}}


def _diffdiag_part(state: dict[str, Any], rid: str) -> dict[str, Any]:
    """What diffdiag wrote, with what differs between twin runs (ids, times) normalised."""
    from diffdiag.integrations.mlflow_sink import NOTE_TAG, _NOTE_RE

    def norm(text: str) -> str:
        text = text.replace(rid, "RUN")
        text = re.sub(r"\d{4}-\d\d-\d\dT[\d:]+(\+00:00|Z)?", "TIME", text)
        return re.sub(r"\+timestamp\+\d+\+", "+timestamp+T+", text)

    tags = {k: norm(v) for k, v in state["tags"].items() if k.startswith("diffdiag.") and k != "diffdiag.created"}
    note = _NOTE_RE.search(state["tags"].get(NOTE_TAG, ""))
    return {"tags": tags, "note": norm(note.group(0)) if note else None,
            "files": sorted(norm(p) for p in state["files"] if _own(p))}


def _artifact_root(client, rid: str, server_root: Path | None) -> Path:
    uri = client.get_run(rid).info.artifact_uri
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    assert server_root is not None and uri.startswith("mlflow-artifacts:/"), uri
    return server_root / "artifacts" / uri[len("mlflow-artifacts:/"):]


def _mlflow_kill_flow(pusher: Pusher, client, uri: str, tmp_path: Path, points: list[str],
                      server_root: Path | None, env: dict[str, str], loc=None) -> None:
    from diffdiag.integrations.mlflow_store import ensure_experiment

    exp = ensure_experiment(client, f"kill-{tmp_path.name}", loc)  # embedded: artifacts inside the store
    ref, victim = _log_training(client, exp, tmp_path), _log_training(client, exp, tmp_path)
    arts = {r: _artifact_root(client, r, server_root) for r in (ref, victim)}
    t0 = _training_part(_mlflow_state(client, victim, arts[victim]))
    # the reference: one clean push of the twin, with the CLI
    _clean_push("--mlflow-run", ref, "--mlflow-tracking-uri", uri, report=tmp_path / "report-ref")
    want = _diffdiag_part(_mlflow_state(client, ref, arts[ref]), ref)
    assert want["files"] and want["tags"]["diffdiag.verdict"] in ("warning", "critical")
    state, _ = _analysis(tmp_path, "victim", mlflow_run=victim, mlflow_tracking_uri=uri)
    own_dir = arts[victim] / "diffdiag"
    # first: killed from outside as soon as the first file of the push lands (mid-upload); then the named points
    kills = [dict(kill_when=lambda: own_dir.is_dir() and any(own_dir.iterdir()))]
    kills += [dict(kill_at=p) for p in points]
    for k in kills:
        code = pusher.push(state, env, **k)
        assert code == KILLED, (k, code)
        assert _training_part(_mlflow_state(client, victim, arts[victim])) == t0, f"training changed ({k})"
    assert pusher.push(state, env) == 0  # the next push, to completion
    final = _mlflow_state(client, victim, arts[victim])
    assert _training_part(final) == t0
    assert _diffdiag_part(final, victim) == want


@pytest.fixture
def mlflow_kill_env(monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    env = {"DIFFDIAG_CACHE": str(tmp_path / "cache"), "DIFFDIAG_MLFLOW_RETRIES": "2",
           "DIFFDIAG_MLFLOW_BACKOFF": "0.05"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return env


@crafts("mlflow", "kill", "embedded_mid_upload", *(f"embedded_{p}" for p in MLFLOW_POINTS))
def test_mlflow_embedded_push_killed_at_every_step(pusher, mlflow_kill_env, tmp_path):
    from diffdiag.integrations.mlflow_store import embedded_location, get_client

    loc = embedded_location(tmp_path / "store", announce=False)
    _mlflow_kill_flow(pusher, get_client(loc), loc.tracking_uri, tmp_path, MLFLOW_POINTS, None, mlflow_kill_env, loc)


@crafts("mlflow", "kill", "server_mid_upload", *(f"server_{p}" for p in MLFLOW_SERVER_POINTS))
def test_mlflow_server_push_killed(pusher, mlflow_server, mlflow_kill_env, tmp_path):
    from mlflow import MlflowClient

    _mlflow_kill_flow(pusher, MlflowClient(mlflow_server.url), mlflow_server.url, tmp_path, MLFLOW_SERVER_POINTS,
                      mlflow_server.root, mlflow_kill_env)


# ============================================================================ W&B offline

def _companion_record(d: Path) -> dict[str, Any]:
    """A companion run as the reader sees it, with what differs between twins left out."""
    from diffdiag.integrations.wandb_records import read_wandb_file

    rec = read_wandb_file(next(d.glob("run-*.wandb")))
    return {"run": {k: rec.run.get(k) for k in ("job_type", "group", "project")},
            "config": {k: v for k, v in rec.config.items() if k != "source_run"},
            "summary": sorted(rec.summary), "media": sorted((m.key, m.kind, m.step) for m in rec.media),
            "artifacts": sorted((a["type"], sorted(f["path"] for f in a["files"])) for a in rec.artifacts),
            "files": sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()
                            and "media" not in p.parts and not p.name.startswith("run-"))}


@crafts("wandb-offline", "kill", *WANDB_POINTS, "while_staging")
def test_offline_wandb_push_killed_at_every_step(pusher, wandb_run, tmp_path):
    """The training's wandb/ folder (run folder, latest-run and the debug-log links) stays byte-identical
    through kills after wandb.init, after finish, after the companion is moved into place, after the
    older companions are removed, and at a moment a while after the push's staging folder appears; the next push leaves exactly one companion,
    equal to a clean push of a twin copy, and no staging folder."""
    from ..wandb_util import isolated_wandb
    from diffdiag.integrations.wandb_sink import STAGING_PREFIX

    train = wandb_run["dir"].parent  # the training's wandb/ folder
    assert (train / "latest-run").is_symlink()
    env = {"WANDB_MODE": "offline", "WANDB_DATA_DIR": str(tmp_path / "wdata"),
           "WANDB_CACHE_DIR": str(tmp_path / "wcache"), "WANDB_CONFIG_DIR": str(tmp_path / "wconfig"),
           "WANDB_SILENT": "true", "DIFFDIAG_CACHE": str(tmp_path / "cache")}
    twins = {}
    for name in ("ref", "victim"):
        twins[name] = tmp_path / name / "wandb"
        shutil.copytree(train, twins[name], symlinks=True)
    run_name = wandb_run["dir"].name
    with isolated_wandb(env):
        _clean_push("--wandb-run", str(twins["ref"] / run_name), report=tmp_path / "report-ref")
        refs = [d for d in twins["ref"].iterdir() if d.is_dir() and d.name != run_name and not d.is_symlink()]
        assert len(refs) == 1
        want = _companion_record(refs[0])
        wdir = twins["victim"]
        t0 = tree_digest(wdir)
        for link in ("latest-run", "debug.log", "debug-internal.log"):  # wandb's links, checked by target
            assert t0[str(wdir / link)].startswith("link:offline-run-"), (link, t0.get(str(wdir / link)))
        state, _ = _analysis(tmp_path, "victim", wandb_run=str(wdir / run_name))

        def training_unchanged(k) -> None:
            now = tree_digest(wdir)
            assert {p: h for p, h in now.items() if p in t0} == t0, f"training changed ({k})"
            extra = {Path(p).relative_to(wdir).parts[0] for p in now if p not in t0}
            assert all("diffdiag-" in e for e in extra), extra  # only companions and staging folders

        kills = [dict(kill_at=p) for p in WANDB_POINTS]
        # a moment just after the staging folder appears (the push then has wandb.init, the records and the
        # move ahead of it: well over 0.1 s even on a quiet machine, where 1 s was already past its end)
        kills.append(dict(kill_when=lambda: any(wdir.glob(f"{STAGING_PREFIX}*")), delay=0.1))
        for k in kills:
            assert pusher.push(state, env, **k) == KILLED, k
            training_unchanged(k)
        assert pusher.push(state, env) == 0  # the next push, to completion
    training_unchanged("the final push")
    comps = [d for d in wdir.iterdir() if d.is_dir() and d.name != run_name and not d.is_symlink()]
    assert len(comps) == 1 and not list(wdir.glob(f"{STAGING_PREFIX}*")), comps
    assert _companion_record(comps[0]) == want
