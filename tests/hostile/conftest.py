"""Helpers for the hostile-input tests.

* :func:`analyze` runs ``diffdiag analyze`` in-process (fast) and :func:`analyze_subprocess`
  as ``python -m diffdiag`` (for inputs that could crash or hang the process). Both run from an
  empty working directory with canary secrets in the credential environment variables
  (:data:`CANARY_ENV`), and check for every input: no file under the test's folder changed
  outside the report folder and diffdiag's cache (the inputs in ``watch`` too, wherever they
  are), nothing written into the working directory, no canary in stdout, stderr or any
  report file, no library warning (in-process), no crash by signal (subprocess), a bounded run
  time; they return an :class:`Outcome`.
* :func:`one_error_line` asserts the rule for a bad input: one stderr line naming the file
  (at most 300 characters), no traceback, no "unexpected ... please report it".
* Real inputs are made once per session: TensorBoard event files with tensorboard's own
  writer, an offline W&B run with the real wandb client (no server: ``WANDB_MODE=offline``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ..conftest import validate_diagnosis

REPO = Path(__file__).resolve().parents[2]
#: no hostile input may take longer than this (a hang guard, not a speed test: benchmarks/ time things)
DEADLINE_S = 90.0
#: canary credentials, set (unless a test set its own) for every hostile run: none may show in any output
CANARY_ENV = {
    "WANDB_API_KEY": "wandbkeycanary7e1c0b5d9a2f48b6c3e0d7a1f9b2c4e6",
    "MLFLOW_TRACKING_PASSWORD": "mlflowpasscanary-31f7",
    "MLFLOW_TRACKING_TOKEN": "mlflowtokencanary-82ac",
    "DATABRICKS_TOKEN": "dapicanary-5be9d04f",
    "AWS_SECRET_ACCESS_KEY": "awssecretcanary/4Qm+Zt8",
    "AWS_ACCESS_KEY_ID": "AKIACANARY0DIFFDIAG",
}


def tree_digest(*roots: Path) -> dict[str, str]:
    """sha256 of every regular file under ``roots`` (links by their target, other entries by kind)."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        paths = [root] if not root.is_dir() or root.is_symlink() else sorted(root.rglob("*"))
        for p in paths:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[str(p)] = "link:" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
                out[str(p)] = h.hexdigest()
            elif not stat.S_ISDIR(st.st_mode):
                out[str(p)] = f"mode:{stat.S_IFMT(st.st_mode)}"
    return out


@dataclasses.dataclass
class Outcome:
    code: int
    out: str
    err: str
    diag: dict | None
    seconds: float
    warnings: list[str]

    def findings(self, fid: str | None = None) -> list[tuple[str, Any]]:
        """``(id, step)`` of the findings (of one id)."""
        return [(f["id"], f["location"].get("step")) for f in (self.diag or {}).get("findings", [])
                if fid is None or f["id"] == fid]


def one_error_line(o: Outcome, name: str, *, expect: str = "", code: int = 2) -> str:
    """Assert the bad-input rule; return the line."""
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert len(lines) == 1, o.err[:3000]
    line = lines[0]
    assert o.code == code, (o.code, line)
    assert len(line) <= 300, line
    assert name in line, line
    assert expect.lower() in line.lower(), line
    assert "Traceback" not in o.err and "unexpected" not in o.err.lower(), line
    return line


def error_lines(o: Outcome, expected: dict[str, str], *, code: int = 2) -> dict[str, str]:
    """Several bad files in one run: exactly one stderr line per file, naming it, saying ``expected[name]``."""
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    assert o.code == code, (o.code, o.err[:3000])
    assert "Traceback" not in o.err and "unexpected" not in o.err.lower(), o.err[:3000]
    assert len(lines) == len(expected), o.err[:5000]
    out = {}
    for name, expect in expected.items():
        mine = [ln for ln in lines if f"/{name}:" in ln]
        assert len(mine) == 1, (name, o.err[:5000])
        assert len(mine[0]) <= 300, mine[0]
        assert expect.lower() in mine[0].lower(), (expect, mine[0])
        out[name] = mine[0]
    return out


def no_error(o: Outcome) -> None:
    assert o.code == 0, o.err[:3000]
    assert not o.err.strip(), o.err[:3000]


def _argv(inputs: list[str], report: Path) -> list[str]:
    return ["analyze", *inputs, "--no-progress", "--report", str(report)]


#: environment variables naming folders that are not the user's files: diffdiag's cache, wandb's own state
TOOL_DIRS = ("DIFFDIAG_CACHE", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR")


class _Guard:
    """What every hostile run checks around it: files outside the report folder and :data:`TOOL_DIRS`,
    an empty working directory, the canary secrets (set in the environment unless a test set its own)."""

    def __init__(self, tmp_path: Path, watch: list[Path] | tuple[Path, ...], env: dict[str, str]) -> None:
        self.report = tmp_path / "report"
        self.cwd = tmp_path / "cwd"
        self.cwd.mkdir(exist_ok=True)
        assert not any(self.cwd.iterdir()), "the working directory is not empty"
        for k, v in CANARY_ENV.items():
            env.setdefault(k, v)
        self.canaries = [v for k, v in CANARY_ENV.items() if env.get(k) == v]
        # diffdiag's outputs, its cache, and the tracker client's own state (wandb's cache, staging, config)
        self.own = [str(self.report), *(env[k] for k in TOOL_DIRS if env.get(k))]
        self.roots = [tmp_path, *watch]
        self.before = self._digest()

    def _digest(self) -> dict[str, str]:
        return {p: h for p, h in tree_digest(*self.roots).items()
                if not any(p == o or p.startswith(o + os.sep) for o in self.own)}

    def check(self, out: str, err: str) -> None:
        after = self._digest()
        changed = sorted(p for p in set(self.before) | set(after) if self.before.get(p) != after.get(p))
        assert not changed, f"diffdiag changed files that are not its outputs: {changed[:10]}"
        assert not list(self.cwd.iterdir()), f"diffdiag wrote into the working directory: {list(self.cwd.iterdir())}"
        texts = [("stdout", out.encode()), ("stderr", err.encode())]
        if self.report.is_dir():
            texts += [(str(p), p.read_bytes()) for p in sorted(self.report.rglob("*")) if p.is_file()]
        for where, blob in texts:
            leaked = [c for c in self.canaries if c.encode() in blob]
            assert not leaked, f"{where} holds the canary secret(s) {leaked}"


@pytest.fixture
def analyze(tmp_path, monkeypatch):
    """``analyze(*args, watch=[paths to checksum outside tmp_path])`` -> Outcome, in-process."""
    from diffdiag.cli import main

    def _run(*args: str, watch: list[Path] | tuple[Path, ...] = ()) -> Outcome:
        env = dict(os.environ)
        guard = _Guard(tmp_path, watch, env)
        for k in CANARY_ENV:
            if k in env:
                monkeypatch.setenv(k, env[k])
        monkeypatch.chdir(guard.cwd)
        out, err = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            code = main(_argv(list(args), guard.report))
        seconds = time.perf_counter() - t0
        guard.check(out.getvalue(), err.getvalue())
        assert seconds < DEADLINE_S, seconds
        # a warning here is a line on a user's stderr
        assert not caught, [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
        p = guard.report / "diagnosis.json"
        diag = validate_diagnosis(p) if p.exists() else None
        return Outcome(code, out.getvalue(), err.getvalue(), diag, seconds, [])

    return _run


@pytest.fixture
def analyze_subprocess(tmp_path):
    """``analyze_subprocess(*args, watch=[...], timeout=...)`` -> Outcome of ``python -m diffdiag``.

    A crash by signal (segfault) or a run past ``timeout`` fails the test.
    """

    def _run(*args: str, watch: list[Path] | tuple[Path, ...] = (), timeout: float = DEADLINE_S,
             memory_mb: int | None = None) -> Outcome:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        env.pop("DIFFDIAG_STRICT", None)  # what a user runs
        guard = _Guard(tmp_path, watch, env)
        report = guard.report
        pre = None
        if memory_mb:
            def pre() -> None:  # an address-space cap: exhausting memory fails fast instead of swapping
                import resource

                lim = memory_mb << 20
                resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "diffdiag", *_argv(list(args), report)], env=env,
                                  capture_output=True, text=True, timeout=timeout, preexec_fn=pre,
                                  stdin=subprocess.DEVNULL, cwd=guard.cwd)
        except subprocess.TimeoutExpired:
            pytest.fail(f"diffdiag ran past {timeout} s on {args}")
        seconds = time.perf_counter() - t0
        assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {proc.stderr[-2000:]}"
        guard.check(proc.stdout, proc.stderr)
        p = report / "diagnosis.json"
        diag = validate_diagnosis(p) if p.exists() else None
        return Outcome(proc.returncode, proc.stdout, proc.stderr, diag, seconds, [])

    return _run


# ----------------------------------------------------------------------------- real inputs, once

@pytest.fixture(scope="session")
def spiky():
    """A 1500-step loss log with isolated spikes (their steps are the ground truth)."""
    from benchmarks.scenarios import loss_logs as S

    return S.injected_spikes(1500, 7, n_spikes=3)


@pytest.fixture(scope="session")
def tb_pair(tmp_path_factory, spiky):
    """Two TensorBoard event files of one resumed run, written by tensorboard's own writer:
    ``first`` (steps 0..1499, with spikes) and ``second`` (steps 1500..2299, healthy)."""
    from benchmarks.scenarios import loss_logs as S

    root = tmp_path_factory.mktemp("tb")
    S.write_tensorboard(spiky, root / "first")
    rest = S.healthy(800, 8)
    rest = dataclasses.replace(rest, steps=rest.steps + len(spiky.steps))
    S.write_tensorboard(rest, root / "second")
    first = next((root / "first").glob("events.out.tfevents*"))
    second = next((root / "second").glob("events.out.tfevents*"))
    return {"root": root, "first": first, "second": second}


def record_offsets(data: bytes) -> list[int]:
    """Byte offsets of the TFRecord frames of an intact event file."""
    import struct

    offs, pos = [], 0
    while pos < len(data):
        offs.append(pos)
        pos += 16 + struct.unpack_from("<Q", data, pos)[0]
    return offs


def tf_frame(payload: bytes) -> bytes:
    """One TFRecord frame with correct CRCs around ``payload`` (a crafted record that passes the checks)."""
    import struct

    from diffdiag.sources.tfrecord import masked_crc32c

    head = struct.pack("<Q", len(payload))
    return head + struct.pack("<I", masked_crc32c(head)) + payload + struct.pack("<I", masked_crc32c(payload))


def wandb_log(payloads: list[bytes]) -> bytes:
    """A ``.wandb`` file holding ``payloads`` as records, framed as wandb frames them (a LevelDB log of
    32 KiB blocks, chunk CRC-32 over type and data): for crafted records inside an otherwise real run."""
    import struct
    import zlib

    block = 32 * 1024
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for payload in payloads:
        left, first = payload, True
        while True:
            room = block - len(out) % block
            if room < 7:
                out += bytes(room)
                continue
            n = min(len(left), room - 7)
            last = n == len(left)
            typ = (1 if last else 2) if first else (4 if last else 3)
            out += struct.pack("<IHB", zlib.crc32(left[:n], zlib.crc32(bytes([typ]))), n, typ) + left[:n]
            left, first = left[n:], False
            if last:
                break
    return bytes(out)


@pytest.fixture(scope="session")
def wandb_run(tmp_path_factory):
    """An offline W&B run with the real wandb client: 1200 steps, loss spikes at known steps."""
    wandb = pytest.importorskip("wandb")
    from ..wandb_util import finish_synced, isolated_wandb

    root = tmp_path_factory.mktemp("wandb_hostile")
    rng = np.random.default_rng(11)
    n = 1200
    loss = (0.1 + 0.4 * np.exp(-np.arange(n) / 300)) * rng.lognormal(0, 0.2, n)
    spikes = [300, 700, 1000]
    loss[spikes] *= 25
    with isolated_wandb({"WANDB_MODE": "offline", "WANDB_DATA_DIR": str(root / "data"),
                         "WANDB_CACHE_DIR": str(root / "cache"), "WANDB_CONFIG_DIR": str(root / "config"),
                         "WANDB_SILENT": "true", "DIFFDIAG_CACHE": str(root / "dd-cache"), "WANDB_API_KEY": None}):
        run = wandb.init(project="diffdiag-hostile", dir=str(root / "train"), id="hostile1",
                         settings=wandb.Settings(console="off", x_disable_stats=True))
        for s in range(n):
            run.log({"train/loss": float(loss[s]), "lr": 1e-4}, step=s)
        wfile = finish_synced(run)
    return {"dir": wfile.parent, "file": wfile, "spikes": spikes}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite store, proxied artifacts), one for the hostile tests."""
    pytest.importorskip("mlflow")
    from diffdiag.integrations.mlflow_store import start_server

    server = start_server(tmp_path_factory.mktemp("mlflow-server-hostile"))
    try:
        yield server
    finally:
        server.stop()
