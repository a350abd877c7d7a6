"""Bad log input: one clear line on stderr, exit 2, no traceback (docs/CONTRACT.md §1)."""

from __future__ import annotations

import json

import pytest

from benchmarks.scenarios import loss_logs as S


def _check(run_cli, path, *extra, expect: str):
    code, out, err, diag = run_cli("analyze", "--logdir", str(path), "--no-progress", *extra)
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and expect.lower() in lines[0].lower(), lines[0]
    return lines[0]


def test_missing_path(run_cli, tmp_path):
    line = _check(run_cli, tmp_path / "nope", expect="does not exist")
    assert "nope" in line


def test_empty_csv(run_cli, tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("")
    assert str(p) in _check(run_cli, p, expect="empty")


def test_header_only_csv(run_cli, tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("step,loss,lr\n")
    _check(run_cli, p, expect="header but no rows")


def test_non_numeric_column(run_cli, tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("step,loss\n0,0.1\n1,0.2\n2,abc\n3,nan\n")
    line = _check(run_cli, p, expect="non-numeric")
    assert "'loss'" in line and "'abc'" in line


def test_text_only_loss_column_named(run_cli, tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("step,loss,note\n0,0.1,a\n1,0.2,b\n")
    _check(run_cli, p, "--loss-key", "note", expect="not among the logged keys")


def test_unreadable_jsonl_line(run_cli, tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"step": 0, "loss": 0.1}\n{"step": 1, "loss": 0.2\n')
    line = _check(run_cli, p, expect="line 2")
    assert "not valid JSON" in line


def test_truncated_tensorboard(run_cli, tmp_path):
    sc = S.healthy(300, 0)
    d = S.write_tensorboard(sc, tmp_path / "tb")
    f = next(d.glob("events.out.tfevents*"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 37])
    line = _check(run_cli, d, expect="truncated")
    assert f.name in line


def test_no_loss_key(run_cli, tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text("\n".join(json.dumps({"step": i, "accuracy": 0.5, "lr": 1e-4}) for i in range(50)))
    line = _check(run_cli, p, expect="no loss key found")
    assert "'accuracy'" in line and "'lr'" in line and "--loss-key" in line


def test_no_log_files_in_directory(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _check(run_cli, tmp_path, expect="no training logs found")


def test_loss_key_override_missing(run_cli, tmp_path):
    p = S.write_csv(S.healthy(200, 1), tmp_path / "log.csv")
    line = _check(run_cli, p, "--loss-key", "train/missing", expect="--loss-key")
    assert "'loss'" in line
