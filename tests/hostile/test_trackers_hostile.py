"""Hostile tracker runs and servers (issue 12).

W&B: an offline run logged by the real wandb client (loss spikes, sample images, a table, a model
artifact whose last checkpoint holds a NaN) is copied and its records rewritten — CRCs right, as a
crafted file would be — so that an artifact manifest names files by absolute paths or climbs with
``../``, a staged copy lies outside wandb's staging folders, media and table paths climb out of
the run, the run id climbs; and its media files are swapped for a decompression bomb, a truncated
image, a nested-JSON table. Every one is one stderr line naming the ``.wandb`` file or the media file,
nothing is written or linked outside diffdiag's cache (a victim file at each target stays
byte-identical), and the rest of the run is analysed (its spikes and NaN checkpoint found).

MLflow: real sockets on 127.0.0.1 started by the test — a sign-in page that answers every request
with HTML, a server that answers 500 forever, one that answers JSON that is not the API — and
tracking URIs that are files but not MLflow stores (garbage, empty, another program's SQLite
database): exit 3 (servers) or exit 2 (files), one line, nothing created or changed, bounded time.
"""

from __future__ import annotations

import http.server
import json
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from . import craft as C
from .conftest import tree_digest, wandb_log
from .craft import crafts

# ============================================================================ W&B runs and manifests


@pytest.fixture(scope="module")
def wb_media_run(tmp_path_factory):
    """An offline W&B run with spikes at known steps, images at steps 100/200/300, a table and two
    checkpoints as ``model`` artifacts (the second with a NaN weight); staging in its own folder."""
    pytest.importorskip("wandb")
    import wandb
    from safetensors.numpy import save_file

    from ..wandb_util import finish_synced, isolated_wandb

    root = tmp_path_factory.mktemp("wb_media")
    env = {"WANDB_MODE": "offline", "WANDB_DATA_DIR": str(root / "data"), "WANDB_CACHE_DIR": str(root / "wcache"),
           "WANDB_CONFIG_DIR": str(root / "config"), "WANDB_SILENT": "true", "WANDB_API_KEY": None}
    rng = np.random.default_rng(5)
    n = 400
    loss = (0.1 + 0.3 * np.exp(-np.arange(n) / 120)) * rng.lognormal(0, 0.15, n)
    spikes = [150, 330]
    loss[spikes] *= 25
    with isolated_wandb(env):
        run = wandb.init(project="diffdiag-hostile", dir=str(root / "train"), id="media1",
                         settings=wandb.Settings(console="off", x_disable_stats=True))
        for s in range(n):
            row = {"train/loss": float(loss[s])}
            if s in (100, 200, 300):
                row["samples"] = wandb.Image((rng.random((32, 32, 3)) * 255).astype(np.uint8))
            run.log(row, step=s)
        run.log({"eval": wandb.Table(columns=["a"], data=[[1]])}, step=n)
        for i, nan in ((1, False), (2, True)):
            path = root / f"lora-step{i * 100:06d}.safetensors"
            save_file(C.lora_tensors(np.random.default_rng(i), nan=nan), str(path))
            art = wandb.Artifact("lora-media1", type="model")
            art.add_file(str(path))
            run.log_artifact(art)
        wfile = finish_synced(run)
    return {"dir": wfile.parent, "env": env, "spikes": spikes, "root": root}


def _pb():
    from diffdiag.integrations.wandb_records import _pb as pb

    return pb()


def _rewrite(wfile: Path, edit) -> None:
    """Rewrite ``wfile``'s records through ``edit(kind, record) -> record`` (CRCs recomputed)."""
    from diffdiag.integrations.wandb_records import split_records

    records, dropped, _ = split_records(wfile.read_bytes())
    assert dropped == 0
    pb = _pb()
    out = []
    for raw in records:
        rec = pb.Record.FromString(raw)
        kind = rec.WhichOneof("record_type")
        rec = edit(kind, rec) or rec
        out.append(rec.SerializeToString())
    wfile.write_bytes(wandb_log(out))


@pytest.fixture
def wb(wb_media_run, tmp_path, monkeypatch):
    """A private copy of the run in ``tmp/in/wandb/``; W&B's folders and diffdiag's cache private too."""
    from ..wandb_util import isolated_wandb

    d = tmp_path / "in" / "wandb" / wb_media_run["dir"].name
    shutil.copytree(wb_media_run["dir"], d)
    monkeypatch.setenv("DIFFDIAG_CACHE", str(tmp_path / "cache"))
    with isolated_wandb(wb_media_run["env"]):
        yield d, next(d.glob("run-*.wandb"))


def _spikes_found(o, spikes) -> bool:
    return set(spikes) <= {f["location"].get("step") for f in o.diag["findings"] if f["id"] == "loss_spike"}


@crafts("wandb-offline", "confinement", "manifest_absolute_path", "manifest_climbing_path", "staged_copy_outside")
def test_wandb_manifest_paths_that_escape_are_refused(analyze, wb, wb_media_run, tmp_path):
    """Artifact manifest entries named by an absolute path and by a path climbing with ../, a staged
    copy said to lie outside wandb's staging folders, an artifact name and a run id that climb: one
    line each naming the .wandb file; every victim file at the named places byte-identical; nothing
    linked into the cache for them; the other checkpoint (with its NaN) still analysed."""
    d, wfile = wb
    victims = tmp_path / "victims"
    victims.mkdir()
    (victims / "abs.safetensors").write_bytes(b"victim 1")
    (victims / "outside.safetensors").write_bytes(b"a file outside wandb's staging folders")
    n = {"art": 0}

    def edit(kind, rec):
        if kind != "artifact" or rec.artifact.type != "model":
            return
        n["art"] += 1
        c = rec.artifact.manifest.contents[0]
        if n["art"] == 1:  # the first checkpoint: its name and staged copy are attacks
            c.path = str(victims / "abs.safetensors")
            extra = rec.artifact.manifest.contents.add()
            extra.CopyFrom(c)
            extra.path = "../../../../../../victims/climb.safetensors"
            extra2 = rec.artifact.manifest.contents.add()
            extra2.CopyFrom(c)
            extra2.path = "fine.safetensors"
            extra2.local_path = str(victims / "outside.safetensors")
        return rec

    _rewrite(wfile, edit)
    before = tree_digest(victims)
    o = analyze("--wandb-run", str(d), watch=[d, victims])
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == 2 and len(lines) == 3, o.err
    assert all(wfile.name in ln and len(ln) <= 300 for ln in lines) and "Traceback" not in o.err, lines
    assert "is absolute; not read, nothing written" in lines[0]
    assert "climbs out of its folder with '..'; not read, nothing written" in lines[1]
    assert "outside wandb's staging and the run's folders; not read" in lines[2], lines
    assert tree_digest(victims) == before and not (victims / "climb.safetensors").exists()
    assert _spikes_found(o, wb_media_run["spikes"])
    assert [f["id"] for f in o.diag["findings"] if f["id"] == "checkpoint_nonfinite"] == ["checkpoint_nonfinite"]
    cache = tmp_path / "cache"
    linked = [p for p in cache.rglob("*") if p.is_file()]
    assert all(p.name == "lora-step000200.safetensors" for p in linked), linked


@crafts("wandb-offline", "confinement", "artifact_name_climbs")
def test_wandb_run_id_and_artifact_name_that_climb(analyze, wb, wb_media_run):
    d, wfile = wb

    def edit(kind, rec):
        if kind == "artifact" and rec.artifact.type == "model":
            rec.artifact.name = "../../../../evil"
            return rec

    _rewrite(wfile, edit)
    o = analyze("--wandb-run", str(d), watch=[d])
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == 2 and lines and all("is not usable as a folder name" in ln and wfile.name in ln
                                         for ln in lines), o.err
    assert _spikes_found(o, wb_media_run["spikes"])


@crafts("tracker-media", "confinement", "image_path_climbs", "image_path_absolute", "table_path_absolute")
def test_wandb_media_and_table_paths_that_escape(analyze, wb, wb_media_run, tmp_path):
    """History rows whose image and table paths climb out of the run folder or are absolute (the
    victim files there exist and are images/JSON a reader would happily take): one line each naming
    the .wandb file; the other images and the spikes still analysed."""
    d, wfile = wb
    victims = tmp_path / "victims"
    victims.mkdir()
    (victims / "img.png").write_bytes(C.png_bytes(np.zeros((8, 8), np.uint8)))
    (victims / "t.json").write_text(json.dumps({"columns": ["x"], "data": [["stolen"]]}))
    targets = iter(["../../../../victims/img.png", str(victims / "img.png")])

    def edit(kind, rec):
        if kind != "history":
            return
        for it in rec.history.item:  # media are nested keys: ["samples", "path"] = "media/images/..."
            if list(it.nested_key)[-1:] != ["path"]:
                continue
            value = json.loads(it.value_json)
            if value.startswith("media/images/"):
                t = next(targets, None)
                if t is not None:
                    it.value_json = json.dumps(t)
            elif value.startswith("media/table/"):
                it.value_json = json.dumps(str(victims / "t.json"))
        return rec

    _rewrite(wfile, edit)
    o = analyze("--wandb-run", str(d), watch=[d, victims])
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == 2 and len(lines) == 3, o.err
    assert all(wfile.name in ln and "; not read" in ln for ln in lines)
    assert sum("climbs out of its folder" in ln for ln in lines) == 1
    assert sum("is absolute" in ln for ln in lines) == 2
    assert _spikes_found(o, wb_media_run["spikes"])
    assert "stolen" not in json.dumps(o.diag)


@crafts("tracker-media", "pixel-limit", "wandb_image_144mp")
@crafts("tracker-media", "bad-file", "wandb_image_cut")
@crafts("tracker-media", "crash-memory", "wandb_table_deep_json")
def test_wandb_media_files_that_are_bad(analyze, wb, wb_media_run):
    """The run's media files swapped: a 144 MP PNG header (the same pixel limit as --images), a cut
    image, a table of 100 000 nested lists: one line each naming the media file; spikes found."""
    d, _ = wb
    images = sorted((d / "files" / "media" / "images").glob("*.png"))
    assert len(images) == 3
    C.png_header_bomb(images[0], 12000, 12000)
    C.truncated(images[1], images[1].read_bytes())
    table = next((d / "files" / "media" / "table").glob("*.json"))
    table.write_text("[" * 100_000 + "]" * 100_000)
    o = analyze("--wandb-run", str(d), watch=[d])
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == 2 and len(lines) == 3, o.err
    by = {Path(ln.split(": ")[1]).name if ln.startswith("diffdiag: error: ") else ln: ln for ln in lines}
    assert any(images[0].name in ln and "144 megapixels, over the 64 megapixel limit" in ln for ln in lines), by
    assert any(images[1].name in ln and "truncated" in ln for ln in lines)
    assert any(table.name in ln and "W&B table" in ln for ln in lines)
    assert _spikes_found(o, wb_media_run["spikes"])
    assert [s for s in o.diag["findings"] if s["location"].get("image") == "wandb:samples@300"] is not None


# ============================================================================ MLflow servers and stores

class _Server:
    """An HTTP server on 127.0.0.1 (a real socket) answering every request with ``status``/``body``."""

    def __init__(self, status: int, body: bytes, ctype: str) -> None:
        outer = self
        self.hits = 0

        class H(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.hits += 1
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *a) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


LOGIN = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>user/pass</form></body></html>"


@pytest.fixture
def mlflow_env(monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("DIFFDIAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFDIAG_MLFLOW_RETRIES", "2")
    monkeypatch.setenv("DIFFDIAG_MLFLOW_BACKOFF", "0.05")
    monkeypatch.setenv("DIFFDIAG_TRACKER_TIMEOUT", "20")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@crafts("mlflow", "bad-file", "login_page", "server_error", "json_not_the_api")
@crafts("mlflow", "secrets", "password_in_url_of_a_login_page")
@pytest.mark.parametrize("case", ["login_page", "server_error", "json_not_the_api"])
def test_mlflow_servers_that_are_not_mlflow(analyze, mlflow_env, case):
    """A sign-in page in front of the server (200, HTML), a server failing with 500, a server
    answering JSON that is not the API: exit 3, one line naming the server, in seconds."""
    status, body, ctype, expect = {
        "login_page": (200, LOGIN, "text/html", "answered /api/2.0/mlflow/runs/get with an HTML page"),
        "server_error": (500, b"<h1>Internal Server Error</h1>", "text/html", "answered HTTP 500"),
        "json_not_the_api": (200, b"[1, 2, 3]", "application/json", "something that is not the MLflow API"),
    }[case]
    from .test_secrets_hostile import URL_SECRET

    server = _Server(status, body, ctype)
    try:  # named with a password in the URL: the line says where, never the password
        o = analyze("--mlflow-run", "0123456789abcdef0123456789abcdef", "--mlflow-tracking-uri",
                    server.url.replace("http://", f"http://user:{URL_SECRET}@"))
    finally:
        server.close()
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == 3 and len(lines) == 1 and server.url[len("http://"):] in lines[0] and expect in lines[0], o.err
    assert URL_SECRET not in o.err + o.out
    assert len(lines[0]) <= 300 and "Traceback" not in o.err and o.diag is None
    assert server.hits <= 2  # a refusal is not retried for minutes


@crafts("mlflow", "bad-file", "store_garbage", "store_empty", "store_other_sqlite", "store_folder")
@pytest.mark.parametrize("case", ["garbage", "empty", "other_sqlite", "folder_db"])
def test_mlflow_stores_that_are_not_mlflow(analyze, mlflow_env, tmp_path, case):
    """Tracking URIs naming a file that is no MLflow store: exit 2, one line naming it, and the file
    unchanged — MLflow would create its tables in an empty file or another program's database."""
    d = tmp_path / "in"
    d.mkdir()
    db = d / "store.db"
    expect = {"garbage": "is not an SQLite database", "empty": "is an empty file, not an MLflow store",
              "other_sqlite": "is an SQLite database but not an MLflow store", "folder_db": "is a directory"}[case]
    if case == "garbage":
        db.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    elif case == "empty":
        db.write_bytes(b"")
    elif case == "other_sqlite":
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE notes (id INTEGER, text TEXT)")
        con.execute("INSERT INTO notes VALUES (1, 'another program''s data')")
        con.commit()
        con.close()
    else:
        db.mkdir()
    before = tree_digest(d)
    for uri in (str(db), f"sqlite:///{db}"):
        o = analyze("--mlflow-run", "0123456789abcdef0123456789abcdef", "--mlflow-tracking-uri", uri, watch=[d])
        lines = [ln for ln in o.err.splitlines() if ln.strip()]
        assert o.code == 2 and len(lines) == 1 and "store.db" in lines[0] and expect in lines[0], (uri, o.err)
        assert "Traceback" not in o.err
    assert tree_digest(d) == before and sorted(p.name for p in d.iterdir()) == ["store.db"]


class _StallingWrites:
    """A proxy on 127.0.0.1 in front of a real MLflow server: reads (GET, and the searches MLflow sends
    as POST) are passed through, writes (POST/PUT/PATCH/DELETE) are read and then never answered."""

    def __init__(self, upstream: str) -> None:
        import requests

        self.writes = 0
        self.paths: list[str] = []
        self.stop = threading.Event()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self, body: bytes | None = None) -> None:
                r = requests.request(self.command, upstream + self.path, data=body, timeout=30,
                                     headers={"Host": "127.0.0.1", "Content-Type": "application/json"})
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def _stall(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and "/search" in self.path:  # a read that MLflow sends as POST
                    return self.do_GET(body)
                outer.writes += 1
                outer.paths.append(f"{self.command} {self.path}")
                outer.stop.wait(120)

            do_POST = do_PUT = do_PATCH = do_DELETE = _stall

            def log_message(self, *a) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@crafts("mlflow", "deadline", "server_stalls_on_writes")
def test_mlflow_push_to_a_server_that_stalls_on_writes(analyze, mlflow_server, mlflow_env, monkeypatch):
    """The run is read through the proxy; every write of the push meets silence (MLflow's own client
    would wait 120 s per request, 7 times): exit 3 when the push's deadline passes, one line, the
    report written, and the training run unchanged (nothing of the push got through)."""
    import time

    from mlflow import MlflowClient

    from .test_secrets_hostile import _log_run

    from mlflow.tracking._tracking_service import utils as tracking_utils

    rid = _log_run(mlflow_server.url)
    client = MlflowClient(mlflow_server.url)
    before = client.get_run(rid)
    # MLflow caches each run's artifact store by run id in this process: uploads would go to the
    # server that logged it, not through the proxy (a CLI process starts without that cache)
    tracking_utils._artifact_repos_cache.clear()
    monkeypatch.setenv("DIFFDIAG_TRACKER_TIMEOUT", "6")
    proxy = _StallingWrites(mlflow_server.url)
    try:
        t0 = time.monotonic()
        o = analyze("--mlflow-run", rid, "--mlflow-tracking-uri", proxy.url, "--push")
        took = time.monotonic() - t0
    finally:
        proxy.close()
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == 3 and len(lines) == 1 and "no answer within the 6 s deadline" in lines[0], o.err
    assert proxy.writes >= 1 and o.diag is not None  # the report was written before the push
    assert took < 90
    after = client.get_run(rid)
    assert (after.info.status, after.info.end_time, after.data.tags, after.data.params) == \
        (before.info.status, before.info.end_time, before.data.tags, before.data.params)
    from diffdiag.integrations.mlflow_source import walk_artifacts

    assert not [f.path for f in walk_artifacts(client, rid, errors=[]) if f.path.startswith("diffdiag/")]


@crafts("wandb-online", "deadline", "server_never_answers")
def test_wandb_server_that_never_answers(analyze, monkeypatch, tmp_path):
    """An online W&B run on a server (a real socket on 127.0.0.1) that accepts and never answers:
    exit 3 once the deadline passes, one line, bounded time (wandb's own client would wait minutes)."""
    import time

    pytest.importorskip("wandb")
    import wandb  # noqa: F401 - imported before the clock starts

    from ..test_deadline import _Stalling

    monkeypatch.setenv("DIFFDIAG_TRACKER_TIMEOUT", "5")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wconfig"))
    monkeypatch.setenv("DIFFDIAG_CACHE", str(tmp_path / "cache"))
    server = _Stalling()
    try:
        t0 = time.monotonic()
        o = analyze("--wandb-run", f"http://127.0.0.1:{server.port}/ent/proj/runs/abc123")
        took = time.monotonic() - t0
    finally:
        server.close()
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == 3 and len(lines) == 1 and "5 s deadline" in lines[0], o.err
    assert took < 5 + 10 and o.diag is None


@crafts("tracker-media", "pixel-limit", "mlflow_image_artifact_144mp")
@crafts("tracker-media", "bad-file", "mlflow_image_artifact_cut")
@crafts("mlflow", "bad-file", "mlflow_checkpoint_garbage")
def test_mlflow_artifacts_that_are_bad(analyze, mlflow_server, mlflow_env, tmp_path):
    """A real MLflow run (on the real server) whose image artifacts are a 144 MP PNG header (the same
    pixel limit as --images) and a cut PNG, and whose checkpoint artifact is random bytes: one line
    each naming the artifact, exit 2; the loss spike and the good logged image still analysed."""
    from mlflow import MlflowClient

    from .test_secrets_hostile import _log_run

    rid = _log_run(mlflow_server.url)
    client = MlflowClient(mlflow_server.url)
    up = tmp_path / "up"
    (up / "samples").mkdir(parents=True)
    (up / "ck").mkdir()
    C.png_header_bomb(up / "samples" / "step_200.png", 12000, 12000)
    C.truncated(up / "samples" / "step_300.png", C.png_bytes(np.zeros((32, 32), np.uint8) + 128))
    (up / "ck" / "lora-step000300.safetensors").write_bytes(
        bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)))
    client.log_artifacts(rid, str(up / "samples"), "samples")
    client.log_artifacts(rid, str(up / "ck"), "checkpoints")
    o = analyze("--mlflow-run", rid, "--mlflow-tracking-uri", mlflow_server.url)
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == 2 and len(lines) == 3 and "Traceback" not in o.err, o.err
    assert all(len(ln) <= 300 for ln in lines), lines
    assert sum("samples/step_200.png" in ln and "144 megapixels" in ln for ln in lines) == 1, lines
    assert sum("samples/step_300.png" in ln and "truncated" in ln for ln in lines) == 1, lines
    assert sum("lora-step000300.safetensors" in ln for ln in lines) == 1, lines
    found = {(f["id"], f["location"].get("step")) for f in o.diag["findings"]}
    assert ("loss_spike", 250) in found
    assert any(f["id"] == "image_degenerate" and "samples/black" in str(f["location"].get("image"))
               for f in o.diag["findings"]), o.diag["findings"]
