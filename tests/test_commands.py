"""Commands diffdiag prints can be pasted as they are (issue 15).

After ``make``, ``mlflow`` lives only in ``.venv/bin``: the ``mlflow ui`` line the
demo prints names it by its full path, and runs from a shell whose ``PATH``
lacks the virtual environment. ``make ui`` runs the same command on the demo's
store.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from diffdiag.integrations.mlflow_store import embedded_location, free_port, mlflow_cli, ui_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"   # a new shell: the venv not activated


def _venv_not_on(path: str) -> bool:
    return str(Path(sys.executable).parent) not in path.split(os.pathsep)


def test_mlflow_cli_is_this_environments(monkeypatch):
    here = Path(sys.executable).parent / "mlflow"
    monkeypatch.setenv("PATH", BARE_PATH)
    if shutil.which("mlflow", path=BARE_PATH) is None or not here.is_file():
        assert mlflow_cli() in (str(here), f"{sys.executable} -m mlflow")
    monkeypatch.setenv("PATH", f"{here.parent}{os.pathsep}{BARE_PATH}")
    if here.is_file():
        assert mlflow_cli() == "mlflow"


@pytest.mark.slow
def test_printed_mlflow_ui_command_runs_as_pasted(tmp_path):
    """The demo's ``mlflow ui`` line, run by ``bash -c`` with a bare PATH, serves the store."""
    assert _venv_not_on(BARE_PATH)
    loc = embedded_location(tmp_path / ".diffdiag", announce=False)
    port = free_port()
    env = {"PATH": BARE_PATH, "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    cmd = ui_command(loc, port=port)
    assert f"--port {port}" in cmd and "--artifacts-destination" in cmd and "--workers 1" in cmd
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, (cmd, proc.poll(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert (tmp_path / ".diffdiag" / "mlflow.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".diffdiag"]   # nothing else written in the cwd


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_ui_runs_the_command_diffdiag_prints(tmp_path):
    store = tmp_path / "store"
    (store / "mlflow.db").parent.mkdir()
    (store / "mlflow.db").touch()
    out = subprocess.run(["make", "-n", "--no-print-directory", "ui", f"DEMO_STORE={store}", "UI_PORT=5123"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    line = " ".join(out.replace("\\\n", " ").split())
    printed = ui_command(embedded_location(store, announce=False, create=False), port=5123)
    tail = printed.split(" ui ", 1)[1]
    assert "/mlflow ui " in line
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in line and "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in printed
    for arg in ("--backend-store-uri", "--artifacts-destination", "--port", "--workers"):
        want = tail.split(arg, 1)[1].split()[0]
        got = line.split(arg, 1)[1].split()[0].strip('"')
        assert got == want, (arg, line, printed)
