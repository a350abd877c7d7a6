"""Where diffdiag's MLflow data lives: the embedded default store, URI resolution, a local server.

MLflow's own defaults depend on the current directory (``sqlite:///./mlflow.db``
with artifacts in ``./mlruns``, and an old ``./mlruns`` folder silently switches
MLflow to its deprecated file store). diffdiag never relies on them: when no
tracking URI is given (neither ``--mlflow-tracking-uri`` nor
``MLFLOW_TRACKING_URI``), it uses its own store
``sqlite:///<abs>/.diffdiag/mlflow.db`` with artifacts in
``<abs>/.diffdiag/mlartifacts`` — absolute paths, printed when first used.
The folder is ``./.diffdiag`` below the current directory unless
``DIFFDIAG_MLFLOW_DIR`` names another one.

:func:`start_server` starts a real ``mlflow server`` on 127.0.0.1 (used by the
tests and the benchmark).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

#: environment variable naming the embedded store's folder (default ``./.diffdiag``)
STORE_DIR_ENV = "DIFFDIAG_MLFLOW_DIR"
DB_NAME = "mlflow.db"
ARTIFACTS_NAME = "mlartifacts"
#: experiment that diffdiag's own runs (the demo) go to in the embedded store
DEFAULT_EXPERIMENT = "diffdiag"


@dataclass
class StoreLocation:
    """A resolved tracking location.

    Attributes
    ----------
    tracking_uri : str
        What MlflowClient is given.
    embedded : bool
        True for diffdiag's own SQLite store.
    store_dir : Path or None
        The embedded store's folder (``.../.diffdiag``), else None.
    artifact_root : Path or None
        Where the embedded store's experiments keep artifacts, else None.
    origin : str
        ``"flag"``, ``"env"`` or ``"embedded"``.
    """

    tracking_uri: str
    embedded: bool = False
    store_dir: Path | None = None
    artifact_root: Path | None = None
    origin: str = "flag"


def set_quiet_env() -> None:
    """Disable MLflow telemetry for this process (idempotent)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


def embedded_store_dir(store_dir: str | Path | None = None) -> Path:
    """The embedded store's folder as an absolute path.

    Parameters
    ----------
    store_dir : str or Path, optional
        Explicit folder; else ``$DIFFDIAG_MLFLOW_DIR``; else ``./.diffdiag``.
    """
    raw = store_dir or os.environ.get(STORE_DIR_ENV) or ".diffdiag"
    return Path(raw).expanduser().resolve()


def sqlite_uri(db_path: Path) -> str:
    """``sqlite:///`` URI of an absolute database path."""
    return "sqlite:///" + str(Path(db_path).resolve())


def embedded_location(store_dir: str | Path | None = None, announce: bool = True,
                      create: bool = True) -> StoreLocation:
    """diffdiag's own SQLite store.

    Parameters
    ----------
    store_dir : str or Path, optional
        See :func:`embedded_store_dir`.
    announce : bool
        Print the store's path to stderr.
    create : bool
        Create the folders when missing (reading never needs to).
    """
    d = embedded_store_dir(store_dir)
    if create:
        (d / ARTIFACTS_NAME).mkdir(parents=True, exist_ok=True)
    loc = StoreLocation(sqlite_uri(d / DB_NAME), True, d, d / ARTIFACTS_NAME, "embedded")
    if announce and (create or (d / DB_NAME).exists()):  # a missing store is named by the error instead
        print(f"diffdiag: MLflow store {d / DB_NAME} (artifacts in {d / ARTIFACTS_NAME})", file=sys.stderr)
    return loc


def resolve_tracking_uri(tracking_uri: str | None = None, announce: bool = True,
                         store_dir: str | Path | None = None) -> StoreLocation:
    """Pick the tracking location: the flag, else ``MLFLOW_TRACKING_URI``, else the embedded store.

    A plain filesystem path given as URI is taken as a SQLite database when it
    ends in ``.db``, as an old MLflow file store when it is one, else as the
    folder of an embedded store (``<path>/mlflow.db``).
    """
    set_quiet_env()
    if tracking_uri:
        origin = "flag"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        tracking_uri, origin = os.environ["MLFLOW_TRACKING_URI"], "env"
    else:
        return embedded_location(store_dir, announce, create=False)
    if "://" not in tracking_uri and not tracking_uri.startswith("databricks"):
        p = Path(tracking_uri).expanduser().resolve()
        if p.is_dir() and not (p / DB_NAME).exists() and any(p.glob("*/meta.yaml")):
            # an old MLflow file store: let MLflow open it (it says how if that is disabled)
            return StoreLocation(p.as_uri(), False, None, None, origin)
        if p.suffix == ".db":
            return StoreLocation(sqlite_uri(p), True, p.parent, p.parent / ARTIFACTS_NAME, origin)
        loc = embedded_location(p, announce, create=False)
        loc.origin = origin
        return loc
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if db.is_absolute() and db.parent.exists() and db.parent.joinpath(ARTIFACTS_NAME).is_dir():
            return StoreLocation(tracking_uri, True, db.parent, db.parent / ARTIFACTS_NAME, origin)
    return StoreLocation(tracking_uri.rstrip("/"), False, None, None, origin)


def get_client(loc: StoreLocation):
    """An ``MlflowClient`` for a location (the registry on the same URI)."""
    from mlflow import MlflowClient

    set_quiet_env()
    uri = loc.tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client, name: str = DEFAULT_EXPERIMENT, loc: StoreLocation | None = None) -> str:
    """Id of experiment ``name``, created when missing.

    In the embedded store the experiment's artifact location is explicit
    (``<store>/mlartifacts/<name>``), never MLflow's cwd-relative default.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if loc is not None and loc.embedded and loc.artifact_root is not None:
        loc.artifact_root.mkdir(parents=True, exist_ok=True)
        location = (loc.artifact_root / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def mlflow_cli() -> str:
    """How a shell reaches the ``mlflow`` command of the environment diffdiag runs in.

    ``mlflow`` when that is on ``PATH`` and is this environment's script; else
    the script's full path (a virtual environment that is not activated); else
    ``<this python> -m mlflow``. Quoted for a POSIX shell.
    """
    import shlex
    import shutil

    exe = _mlflow_exe()
    found = shutil.which("mlflow")
    if len(exe) == 1 and found and Path(found).resolve() == Path(exe[0]).resolve():
        return "mlflow"
    return shlex.join(exe)


def ui_command(loc: StoreLocation | str | None = None, port: int = 5000) -> str:
    """The shell command that opens the MLflow UI on a store.

    Parameters
    ----------
    loc : StoreLocation or str, optional
        Default: the embedded store.
    """
    if loc is None:
        loc = embedded_location(announce=False, create=False)
    if isinstance(loc, str):
        loc = resolve_tracking_uri(loc, announce=False)
    if not loc.embedded:
        return f"open {loc.tracking_uri} in a browser"
    import shlex

    # one worker and no job runner: a local UI for one person starts in seconds, not minutes on a busy machine
    cmd = (f"MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {mlflow_cli()} ui "
           f"--backend-store-uri {shlex.quote(loc.tracking_uri)} --port {port} --workers 1")
    if loc.artifact_root is not None:
        cmd += f" --artifacts-destination {shlex.quote(str(loc.artifact_root))}"
    return cmd


def print_ui_command(loc: StoreLocation | str | None = None, file=None) -> str:
    """Print (and return) how to review a store in the MLflow UI."""
    cmd = ui_command(loc)
    print(f"Review it in the MLflow UI:\n  {cmd}\n  then open http://127.0.0.1:5000", file=file or sys.stdout)
    return cmd


# --------------------------------------------------------------------------- a local server

def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MlflowServer:
    """A running ``mlflow server`` started by :func:`start_server`."""

    url: str
    port: int
    proc: subprocess.Popen
    root: Path
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM the server's process (it stops its whole tree), then SIGKILL if needed."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)

    def __enter__(self) -> "MlflowServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _mlflow_exe() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


def start_server(root: str | Path, port: int | None = None, timeout: float = 90.0,
                 extra_args: list[str] | None = None,
                 ready: Callable[[str], bool] | None = None) -> MlflowServer:
    """Start ``mlflow server`` on 127.0.0.1 with a SQLite store and proxied artifacts under ``root``.

    Waits until a real API call (``experiments/search``) answers — ``/health``
    answers even when requests are refused. The server runs in its own
    process group; :meth:`MlflowServer.stop` ends it.

    Parameters
    ----------
    root : str or Path
        Folder for ``mlflow.db``, ``artifacts/`` and ``server.log``.
    port : int, optional
        Default: a free port.
    timeout : float
        Seconds to wait for readiness.
    """
    import requests

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = _mlflow_exe() + ["server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                           "--backend-store-uri", sqlite_uri(root / DB_NAME),
                           "--artifacts-destination", str(root / "artifacts")] + list(extra_args or [])
    log_path = root / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(root),
                            start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    server = MlflowServer(url, port, proc, root, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            r = requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                             timeout=2)
            if r.status_code == 200 and (ready is None or ready(url)):
                return server
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"mlflow server on port {port} not ready after {timeout:.0f} s: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.25)


def default_tracking_uri(workdir: str | Path | None = None, announce: bool = False) -> str:
    """The tracking URI diffdiag uses when none is given: ``MLFLOW_TRACKING_URI`` if set,
    else the embedded store ``sqlite:///<abs workdir>/mlflow.db`` (``workdir`` default ``./.diffdiag``).
    """
    if workdir is None and os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return embedded_location(workdir, announce).tracking_uri  # created: the caller is about to log there
