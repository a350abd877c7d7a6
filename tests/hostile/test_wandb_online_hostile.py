"""Hostile online W&B runs (issue 12), read and pushed with the real wandb client.

W&B's servers cannot run here: :mod:`tests.wandb_fake_server` (a recording GraphQL + file server
on 127.0.0.1) stands in for them. The run it serves has loss spikes at known steps and hostile
media: a PNG whose header claims 144 megapixels (the same limit as ``--images``), a cut image, and
a media path that climbs out of the run with ``../``. The analysis and ``--push`` run from an
empty working directory with ``WANDB_DIR`` unset — what a user's shell looks like — and the
working directory must stay empty (wandb's ``wandb.init`` writes ``./wandb`` unless told
otherwise), diffdiag's cache may only hold what it downloaded, and no canary secret (the API key
included) may reach any output or request body the server recorded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from . import craft as C
from .craft import crafts

pytest.importorskip("wandb")
pytest.importorskip("pyarrow")

N = 400
SPIKES = (120, 290)


def _fake_run():
    from ..wandb_fake_server import FakeRun

    rng = np.random.default_rng(9)
    loss = (0.1 + 0.3 * np.exp(-np.arange(N) / 100)) * rng.lognormal(0, 0.15, N)
    loss[list(SPIKES)] *= 25
    good = C.png_bytes((rng.random((32, 32, 3)) * 255).astype(np.uint8))
    files = {"media/images/samples_99_good.png": good,
             "media/images/samples_199_bomb.png": C.png_header_bomb_bytes(12000, 12000),
             "media/images/samples_299_cut.png": good[: len(good) // 2]}
    paths = {100: "media/images/samples_99_good.png", 200: "media/images/samples_199_bomb.png",
             300: "media/images/samples_299_cut.png", 350: "../../../../etc/passwd.png"}
    samples = [{"_type": "image-file", "path": paths[s], "width": 32, "height": 32, "format": "png",
                "sha256": "0" * 64, "size": 10} if s in paths else None for s in range(N)]
    return FakeRun("alice", "hostile", "run66", history={"_step": list(range(N)), "train/loss": loss.tolist(),
                                                         "samples": samples},
                   config={"learning_rate": 1e-4}, summary={"_step": N - 1}, group="g", files=files)


@pytest.fixture
def online(monkeypatch, tmp_path):
    from ..wandb_fake_server import FakeWandbServer
    from ..wandb_util import isolated_wandb

    env = {"WANDB_MODE": None, "WANDB_BASE_URL": None, "WANDB_DIR": None,
           "WANDB_CONFIG_DIR": str(tmp_path / "wconfig"), "WANDB_CACHE_DIR": str(tmp_path / "wcache"),
           "WANDB_DATA_DIR": str(tmp_path / "wdata"), "DIFFDIAG_CACHE": str(tmp_path / "c"),
           "DIFFDIAG_WANDB_RETRIES": "2", "DIFFDIAG_WANDB_BACKOFF": "0.05", "DIFFDIAG_TRACKER_TIMEOUT": "30"}
    with isolated_wandb(env), FakeWandbServer(entity="alice") as srv:
        srv.add_run(_fake_run())
        yield srv


@crafts("wandb-online", "confinement", "push_from_a_user_cwd", "media_path_climbs")
@crafts("tracker-media", "pixel-limit", "wandb_online_image_144mp")
@crafts("tracker-media", "bad-file", "wandb_online_image_cut")
@crafts("wandb-online", "secrets", "api_key_in_requests")
def test_online_hostile_media(analyze, online):
    """Read and ``--push`` from an empty cwd: one line per bad medium (the 144 MP header refused from
    its header, the cut image, the climbing path refused unread), exit 2, the spikes found, the
    companion run written on the server, the cwd still empty (checked by ``analyze``), the API key
    sent only as the credential and never in what was logged."""
    import os

    url = f"{online.url}/alice/hostile/runs/run66"
    o = analyze("--wandb-run", url, "--push")
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == 2, o.err
    assert "Traceback" not in o.err and all(len(ln) <= 300 for ln in lines), o.err
    assert len(lines) == 3, o.err
    assert sum("samples_199_bomb.png" in ln and "144 megapixels, over the 64 megapixel limit" in ln
               for ln in lines) == 1, lines
    assert sum("samples_299_cut.png" in ln and "truncated" in ln for ln in lines) == 1, lines
    assert sum("passwd.png" in ln and "climbs out of its folder" in ln for ln in lines) == 1, lines
    assert set(SPIKES) <= {f["location"].get("step") for f in o.diag["findings"] if f["id"] == "loss_spike"}
    comp = online.runs[("alice", "hostile", "diffdiag-run66")]
    assert comp.job_type == "diffdiag" and comp.stream_history, "the companion run was not written"
    assert not any("/etc/passwd" in r.path for r in online.requests)
    key = os.environ["WANDB_API_KEY"]
    logged = json.dumps([r.variables for r in online.requests]) + json.dumps(comp.stream_history) + \
        json.dumps(comp.summary) + json.dumps(comp.config)
    assert key not in logged and key[:16] not in logged


@crafts("wandb-online", "confinement", "triage_push_from_a_user_cwd")
def test_online_triage_push_writes_nothing_into_the_cwd(online, tmp_path, monkeypatch):
    """``diffdiag triage URL --push`` from an empty cwd with ``WANDB_DIR`` unset: the per-run companion
    and the ``diffdiag-triage`` run land on the server, the bad media are one line each, the cwd
    stays empty."""
    import contextlib
    import io

    from diffdiag.cli import main

    from .conftest import CANARY_ENV

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("WANDB_API_KEY", CANARY_ENV["WANDB_API_KEY"])
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["triage", f"{online.url}/alice/hostile/runs/run66", "--report", str(tmp_path / "t"),
                     "--workers", "1", "--push", "--no-progress"])
    assert code == 2 and "Traceback" not in err.getvalue(), err.getvalue()
    assert not list(cwd.iterdir()), list(cwd.rglob("*"))[:10]
    assert ("alice", "hostile", "diffdiag-triage") in online.runs
    assert online.runs[("alice", "hostile", "diffdiag-triage")].stream_history
    assert CANARY_ENV["WANDB_API_KEY"] not in err.getvalue() + (tmp_path / "t" / "triage.json").read_text()
