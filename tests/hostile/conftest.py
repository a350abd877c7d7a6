"""Helpers for the hostile-input tests.

* :func:`analyze` runs ``diffdiag analyze`` in-process (fast) and :func:`analyze_subprocess`
  as ``python -m diffdiag`` (for inputs that could crash or hang the process); both check
  that no file under the inputs changed and return an :class:`Outcome`.
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


@pytest.fixture
def analyze(tmp_path):
    """``analyze(*args, inputs=[paths to checksum])`` -> Outcome, in-process."""
    from diffdiag.cli import main

    def _run(*args: str, watch: list[Path] | tuple[Path, ...] = ()) -> Outcome:
        report = tmp_path / "report"
        before = tree_digest(*watch)
        out, err = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            code = main(_argv(list(args), report))
        seconds = time.perf_counter() - t0
        assert tree_digest(*watch) == before, "an input file changed"
        assert seconds < DEADLINE_S, seconds
        # a warning here is a line on a user's stderr
        assert not caught, [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
        p = report / "diagnosis.json"
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
        report = tmp_path / "report"
        before = tree_digest(*watch)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        env.pop("DIFFDIAG_STRICT", None)  # what a user runs
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
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"diffdiag ran past {timeout} s on {args}")
        seconds = time.perf_counter() - t0
        assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {proc.stderr[-2000:]}"
        assert tree_digest(*watch) == before, "an input file changed"
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
