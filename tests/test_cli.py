"""The command line as a user meets it (docs/CONTRACT.md §1): entry points, output formats, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import validate_diagnosis

BIN = Path(sys.executable).parent


def _write_jsonl(path: Path, n: int = 3000, nan_steps: tuple[int, ...] = (), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    loss = 0.1 * np.exp(rng.normal(0, 0.5, n)) * (1 + np.exp(-np.arange(n) / 500))
    with path.open("w") as fh:
        for step in range(n):
            v = float("nan") if step in nan_steps else float(loss[step])
            fh.write(json.dumps({"step": step, "loss": v, "lr": 1e-4}) + "\n")
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DIFFDIAG_STRICT", None)  # users never set it: check the user-facing behaviour
    return env


def test_no_source_is_usage_error(run_cli) -> None:
    code, out, err, diag = run_cli("analyze")
    assert code == 2 and diag is None
    assert err.strip().count("\n") == 0 and "no source given" in err and "Traceback" not in err


def test_push_without_tracker_is_usage_error(run_cli, tmp_path) -> None:
    log = _write_jsonl(tmp_path / "log.jsonl", 200)
    code, _, err, _ = run_cli("analyze", "--logdir", str(log), "--push")
    assert code == 2 and "--push" in err


def test_bad_option_value_exit_2(tmp_path) -> None:
    r = subprocess.run([str(BIN / "diffdiag"), "analyze", "--logdir", "x", "--spike-sigma", "-1"],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 2 and "positive" in r.stderr and "Traceback" not in r.stderr


def test_json_format_and_fail_on(run_cli, tmp_path) -> None:
    log = _write_jsonl(tmp_path / "log.jsonl", 3000, nan_steps=(812, 2410))
    code, out, _, diag = run_cli("analyze", "--logdir", str(log), "--format", "json", "--fail-on", "critical")
    assert code == 1  # a critical finding reached --fail-on
    doc = validate_diagnosis(json.loads(out))
    assert doc == diag
    nonfinite = [f for f in doc["findings"] if f["id"] == "loss_nonfinite"]
    assert len(nonfinite) == 1 and nonfinite[0]["location"]["steps"] == [812, 2410]
    assert nonfinite[0]["severity"] == "critical" and nonfinite[0]["location"]["step"] == 812
    assert Path(doc["outputs"]["html"]).exists() and Path(doc["outputs"]["pdf"]).exists()


def test_fail_on_not_reached_exit_0(run_cli, tmp_path) -> None:
    log = _write_jsonl(tmp_path / "log.jsonl", 3000, seed=3)
    code, out, _, diag = run_cli("analyze", "--logdir", str(log), "--fail-on", "warning")
    assert code == 0
    assert all(f["severity"] == "info" for f in diag["findings"])
    assert "diffdiag" in out and "report:" in out


@pytest.mark.parametrize("entry", [["-m", "diffdiag"], ["diagnose-loss"], ["diffdiag", "analyze"]])
def test_entry_points_share_arguments(entry, tmp_path) -> None:
    log = _write_jsonl(tmp_path / "log.jsonl", 500, nan_steps=(100,))
    report = tmp_path / "rep"
    cmd = [sys.executable, *entry] if entry[0] == "-m" else [str(BIN / entry[0]), *entry[1:]]
    r = subprocess.run([*cmd, "--logdir", str(log), "--report", str(report), "--format", "json"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    doc = validate_diagnosis(report / "diagnosis.json")
    assert json.loads(r.stdout)["findings"] == doc["findings"]
    assert any(f["id"] == "loss_nonfinite" for f in doc["findings"])


def test_missing_path_one_line(tmp_path) -> None:
    r = subprocess.run([str(BIN / "diffdiag"), "analyze", "--logdir", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"diffdiag: error: {tmp_path / 'nope'}: log path does not exist"]


def test_unreadable_image_others_still_analysed(run_cli, tmp_path) -> None:
    """An unreadable --images file: the logs are still analysed and reported, then exit 2 naming the file."""
    log = _write_jsonl(tmp_path / "log.jsonl", 800, nan_steps=(300,))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    code, out, err, diag = run_cli("analyze", "--logdir", str(log), "--images", str(bad))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "broken.png" in lines[0] and lines[0].startswith("diffdiag: error:")
    assert [f["id"] for f in diag["findings"]].count("loss_nonfinite") == 1
    assert any("broken.png" in w for w in diag["outputs"]["warnings"])
