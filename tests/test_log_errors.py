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


# ----------------------------------------------------------------------------- the safe-reading helpers

def test_crc32c_implementations_agree():
    """The numpy batch CRC-32C and the plain-Python one give the standard check value and agree with
    each other (and with google-crc32c when installed) on ranges of every awkward length."""
    import numpy as np

    from diffdiag.sources import tfrecord as T

    assert T._crc32c_py(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    rng = np.random.default_rng(0)
    buf = rng.integers(0, 256, 20000, dtype=np.uint8)
    lengths = np.array([0, 1, 7, 8, 9, 15, 16, 17, 100, 101, 4096, 4097, 9000], dtype=np.int64)
    starts = rng.integers(0, 20000 - 9000, len(lengths)).astype(np.int64)
    want = [T._crc32c_py(buf[a:a + n].tobytes()) for a, n in zip(starts, lengths)]
    assert [int(c) for c in T.crc32c_many(buf, starts, lengths)] == want
    saved = T._crc_c
    T._crc_c = None
    try:
        assert [int(c) for c in T.crc32c_many(buf, starts, lengths)] == want
    finally:
        T._crc_c = saved


def test_tfrecord_scan_same_without_the_c_crc(tmp_path, monkeypatch):
    """A real event file scans to the same frames with the numpy fallback as with google-crc32c."""
    from diffdiag.sources import tfrecord as T

    d = S.write_tensorboard(S.healthy(300, 2), tmp_path / "tb")
    f = next(d.glob("events.out.tfevents*"))
    a = T.scan_records(f)
    monkeypatch.setattr(T, "_crc_c", None)
    b = T.scan_records(f)
    assert a.damage == b.damage == [] and a.skipped_bytes == b.skipped_bytes == 0
    assert a.offsets.tolist() == b.offsets.tolist() and len(a.offsets) == 301


def test_quote_is_short_and_one_line():
    from diffdiag.safeio import quote

    assert quote("abc") == "'abc'"
    q = quote("x\n" * 10_000_000)
    assert len(q) < 260 and "\n" not in q and q.endswith("(20000000 characters)")
    assert len(quote(b"\0" * 1000)) < 260 and len(quote(list(range(10 ** 5)))) < 260


def test_require_regular_file(tmp_path):
    import os

    from diffdiag.errors import InputError
    from diffdiag.safeio import require_regular_file

    f = tmp_path / "ok.csv"
    f.write_text("x")
    assert require_regular_file(f) == f
    os.mkfifo(tmp_path / "p")
    for p, what in ((tmp_path / "p", "a named pipe (FIFO)"), (tmp_path, "a directory"),
                    (tmp_path / "missing", "does not exist")):
        with pytest.raises(InputError, match=what.replace("(", r"\(").replace(")", r"\)")) as exc:
            require_regular_file(p)
        assert str(p) in str(exc.value)


def test_scan_text_file_finds_lines(tmp_path):
    """Line numbers and byte offsets are exact across the 8 MiB reading blocks."""
    from diffdiag.errors import InputError
    from diffdiag.safeio import scan_text_file

    p = tmp_path / "l.jsonl"
    line = b'{"a": [1, 2]}\n'
    n = (9 << 20) // len(line)
    p.write_bytes(line * n + b"[" * 70 + b"\n" + line + b"\xff\n")
    with pytest.raises(InputError, match=f"line {n + 3} is not UTF-8 text \\(byte 0xff at byte {n * len(line) + 71 + len(line)}\\)"):
        scan_text_file(p, max_openers=64)
    assert scan_text_file(p, max_openers=64, utf8=False) == [n + 1]
