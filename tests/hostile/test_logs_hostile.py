"""Hostile and damaged training logs and W&B run files through the real CLI (issue 12).

Every case asserts: the exit code; for a bad file exactly one stderr line naming it (at most
300 characters, no traceback, no "unexpected ... please report it"); the findings of what is
still readable (or of the other inputs) present; no input file changed; a bounded run time.
Inputs that could crash or hang the process (deep nesting, FIFOs, devices, memory bombs) run
as a subprocess with a timeout.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from .conftest import error_lines, no_error, one_error_line, record_offsets, tf_frame, wandb_log
from .craft import crafts

pytestmark = pytest.mark.timeout(300)  # a hang guard for the in-process runs


def _spike_steps(o) -> set[int]:
    return {s for fid, s in o.findings() if fid in ("loss_spike", "grad_norm_spike")}


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _healthy_jsonl(path: Path, n: int = 400, seed: int = 3, start: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    loss = (0.1 + 0.3 * np.exp(-np.arange(n) / 100)) * rng.lognormal(0, 0.2, n)
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"step": start + i, "loss": float(loss[i]), "lr": 1e-4}) + "\n")
    return path


def _spiky_csv(path: Path, spiky) -> Path:
    from benchmarks.scenarios import loss_logs as S

    return S.write_csv(spiky, path, lists=False)


# ============================================================================ TensorBoard

@pytest.fixture
def tb_dir(tb_pair, tmp_path):
    """A private copy of the two-file TensorBoard log directory."""
    d = _copy_tree(tb_pair["root"], tmp_path / "logs")
    return d, next((d / "first").glob("events*")), next((d / "second").glob("events*"))


def _mid_record(data: bytes, spiky) -> int:
    """The offset of a record in the middle of ``first`` whose step is far from every spike."""
    offs = record_offsets(data)
    spikes = spiky.truth["loss_spike"]
    for i in range(len(offs) // 2, len(offs)):
        if all(abs((i - 1) - s) > 5 for s in spikes):
            return offs[i]
    raise AssertionError("no record away from the spikes")


def test_tb_healthy_pair_is_clean(analyze, tb_dir, spiky):
    d, _, _ = tb_dir
    o = analyze("--logdir", str(d), watch=[d])
    no_error(o)
    assert set(spiky.truth["loss_spike"]) <= _spike_steps(o)


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x10
    return bytes(b)


@crafts("tensorboard", "integrity", "flip_data", "flip_length", "flip_crc", "zeroed", "cut")
@crafts("tensorboard", "bad-file", "varint", "summary_overrun", "summary_garbage")
@crafts("tensorboard", "crash-memory", "huge_length")
def test_tb_damaged_files_each_one_line(analyze, tb_dir, spiky):
    """Nine damaged copies of one event file in a log directory, each read past its damage:

    a flipped bit in a record's data, its length or its data CRC; records whose CRCs hold but whose
    Event does not parse (a truncated varint, a summary running past its end, garbage summary bytes);
    300 zeroed bytes; a frame claiming 2**62 bytes; a file cut mid-record. Each is one line naming
    the file, the byte offset and how many events were still read; the spikes are still found."""
    from diffdiag.sources.tfrecord import masked_crc32c

    d, first, _ = tb_dir
    data = first.read_bytes()
    n_events = len(record_offsets(data))  # file_version + one event per step
    at = _mid_record(data, spiky)
    length = struct.unpack_from("<Q", data, at)[0]
    last = record_offsets(data)[-1]
    head = struct.pack("<Q", 1 << 62)
    zeroed = bytearray(data)
    zeroed[at:at + 300] = bytes(300)
    damaged = {  # name -> (bytes, what the line says)
        "flip_data": (_flip(data, at + 12 + length // 2), f"damaged at byte {at} (a record's data fails its CRC"),
        "flip_length": (_flip(data, at + 1), f"damaged at byte {at} (a record's length fails its CRC"),
        "flip_crc": (_flip(data, at + 12 + length), f"damaged at byte {at} (a record's data fails its CRC"),
        "varint": (data[:at] + tf_frame(b"\x10\xff\xff") + data[at:],
                   f"damaged at byte {at} (a record does not parse as a TensorBoard event)"),
        "summary_overrun": (data[:at] + tf_frame(b"\x2a\x05\x0a\x03ab") + data[at:],
                            f"damaged at byte {at} (a record does not parse"),
        "summary_garbage": (data[:at] + tf_frame(b"\x2a\x02\xff\xff") + data[at:],
                            f"damaged at byte {at} (a record does not parse"),
        "zeroed": (bytes(zeroed), f"damaged at byte {at}"),
        "huge_length": (data + head + struct.pack("<I", masked_crc32c(head)) + b"abc",
                        f"truncated: the last record (from byte {len(data)} of {len(data) + 15})"),
        "cut": (data[: last + 20], f"truncated: the last record (from byte {last} of {last + 20}) is cut off"),
    }
    first.unlink()
    expected = {}
    for name, (content, what) in damaged.items():
        f = d / "first" / f"events.out.tfevents.1.{name}"
        f.write_bytes(content)
        expected[f.name] = what
    o = analyze("--logdir", str(d), watch=[d])
    lines = error_lines(o, expected)
    for name in ("flip_data", "flip_length", "flip_crc", "varint", "summary_overrun", "summary_garbage"):
        # exactly one event lost (the crafted ones add none), every other one read
        assert f"read the {n_events - (1 if name.startswith('flip') else 0)} intact events" in \
            lines[f"events.out.tfevents.1.{name}"], lines
    assert f"read the {n_events - 1} events before it" in lines["events.out.tfevents.1.cut"]
    assert set(spiky.truth["loss_spike"]) <= _spike_steps(o)


def _event(*values) -> bytes:
    from tensorboard.compat.proto import event_pb2, summary_pb2

    return event_pb2.Event(step=5, summary=summary_pb2.Summary(value=list(values))).SerializeToString()


@crafts("tensorboard", "crash-memory", "tensor_2**40_text_hparams")
def test_tb_summary_values_that_are_not_scalars_are_ignored(analyze, tb_dir, spiky):
    """Tensors with a 2**40-element shape, text, broken HParams content: not scalars, nothing allocated,
    no error (they are well-formed records)."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

    big = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0],
                                 tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                     dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1 << 20)] * 2))
    text = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"x" * 1000])
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name="hparams", content=b"\xff\xff\xff"))
    rec = _event(summary_pb2.Summary.Value(tag="loss", tensor=big),
                 summary_pb2.Summary.Value(tag="note", tensor=text),
                 summary_pb2.Summary.Value(tag="_hparams_/session_start_info", metadata=meta))
    d, first, _ = tb_dir
    first.write_bytes(first.read_bytes() + tf_frame(rec))
    o = analyze("--logdir", str(d), watch=[d])
    no_error(o)
    assert set(spiky.truth["loss_spike"]) <= _spike_steps(o)


@crafts("tensorboard", "bad-file", "random_bytes", "empty")
def test_tb_garbage_and_empty_files_among_several(analyze, tb_dir, spiky):
    """An event file of random bytes and an empty one beside a good one: one line each, the good one analysed."""
    d, _, second = tb_dir
    second.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    empty = d / "second" / "events.out.tfevents.2.empty"
    empty.write_bytes(b"")
    o = analyze("--logdir", str(d), watch=[d])
    error_lines(o, {second.name: "not a readable TensorBoard event file: no events (damaged at byte 0",
                    empty.name: "the TensorBoard event file is empty"})
    assert set(spiky.truth["loss_spike"]) <= _spike_steps(o)
    assert o.diag is not None and o.diag["inputs"]["logdir"] == str(d)


@crafts("tensorboard", "bad-file", "every_file_bad")
def test_tb_every_file_bad_prints_each(analyze, tb_dir):
    d, first, second = tb_dir
    first.write_bytes(b"\0" * 100)
    second.write_bytes(b"")
    o = analyze("--logdir", str(d), watch=[d])
    error_lines(o, {first.name: "not a readable TensorBoard event file", second.name: "empty"})
    assert o.diag is None


@crafts("tensorboard", "deadline", "fifo_event_file")
@crafts("jsonl", "deadline", "fifo_jsonl")
def test_tb_fifo_in_logdir_is_refused_unopened(analyze_subprocess, tb_dir, spiky):
    """Named pipes called like an event file and like a JSONL log: refused from os.stat, never opened
    (they would block)."""
    d, _, _ = tb_dir
    fifo = d / "second" / "events.out.tfevents.fifo"
    os.mkfifo(fifo)
    os.mkfifo(d / "second" / "train.jsonl")
    o = analyze_subprocess("--logdir", str(d), watch=[d], timeout=120)
    error_lines(o, {fifo.name: "named pipe", "train.jsonl": "named pipe"})
    assert set(spiky.truth["loss_spike"]) <= _spike_steps(o)


# ============================================================================ JSONL

#: file name -> (the line put at line 201 of a 400-line healthy JSONL log, what the error says)
BAD_JSONL_LINES = {
    "step_inf.jsonl": (b'{"step": 1e400, "loss": 0.1}', "line 201: 'step' is not finite (inf)"),
    "step_minus_inf.jsonl": (b'{"step": -1e400, "loss": 0.1}', "line 201: 'step' is not finite (-inf)"),
    "step_nan.jsonl": (b'{"step": NaN, "loss": 0.1}', "line 201: 'step' is not finite (nan)"),
    "step_int_overflow.jsonl": (b'{"step": 123456789012345678901234567890, "loss": 0.1}',
                                "line 201: 'step' 123456789012345678901234567890 is beyond the int64 range"),
    "step_1e300.jsonl": (b'{"step": 1e300, "loss": 0.1}', "line 201: 'step' 1e+300 is beyond the int64 range"),
    "step_text.jsonl": (b'{"step": "soon", "loss": 0.1}', "line 201: 'step' is not a number ('soon')"),
    "step_list.jsonl": (b'{"step": [1], "loss": 0.1}', "line 201: 'step' is not a number ([1])"),
    "step_huge_text.jsonl": (b'{"step": "' + b"7" * 3_000_000 + b'x", "loss": 0.1}', "(3000001 characters)"),
    "invalid.jsonl": (b'{"step": 5, "loss": 0.1', "line 201 is not valid JSON"),
    "not_object.jsonl": (b"[1, 2, 3]", "line 201 is not a JSON object"),
    "not_utf8.jsonl": (b'{"step": 5, "loss": "\xff\xfe"}', "line 201 is not UTF-8 text (byte 0xff at column 22)"),
}


@crafts("jsonl", "absurd-steps", "step_inf", "step_minus_inf", "step_nan", "step_int_overflow", "step_1e300",
        "step_text", "step_list")
@crafts("jsonl", "crash-memory", "step_huge_text", "nul")
@crafts("jsonl", "bad-file", "invalid", "not_object", "not_utf8", "cut", "all_bad")
def test_jsonl_bad_lines_each_one_line(analyze, tmp_path, spiky):
    """Eleven JSONL files with one bad line each (non-finite, beyond-int64 and non-numeric steps, a 3 MB
    step, broken JSON, an array, bytes that are not UTF-8), a NUL-filled one, a cut-off last line and one
    whose every line is bad, beside a spiky CSV: one line per file naming the line, that line skipped and
    the rest read (the message says so), the CSV's spikes found."""
    d = tmp_path / "logs"
    d.mkdir()
    _spiky_csv(d / "a.csv", spiky)
    start = len(spiky.steps)
    expected = {}
    for name, (line, what) in BAD_JSONL_LINES.items():
        p = _healthy_jsonl(d / name, start=start)
        _replace_line(p, 200, line)
        expected[name] = what
        start += 400
    nul = _healthy_jsonl(d / "nul.jsonl", start=start)
    nul.write_bytes(nul.read_bytes()[:500] + b"\0" * 4096 + nul.read_bytes()[500:])
    expected[nul.name] = "holds a NUL byte at byte 500 (line "
    cut = _healthy_jsonl(d / "cut.jsonl", start=start + 400)
    cut.write_bytes(cut.read_bytes() + b'{"step": 99999, "lo')
    expected[cut.name] = "line 401 is not valid JSON"
    (d / "all_bad.jsonl").write_bytes(b"not json\n" * 50)
    expected["all_bad.jsonl"] = "line 1 is not valid JSON (Expecting value)"
    o = analyze("--logdir", str(d), watch=[d])
    lines = error_lines(o, expected)
    for name in BAD_JSONL_LINES:
        assert "skipped it and read the other 399 records" in lines[name], lines[name]
    assert "skipped it and read the other 400 records" in lines["cut.jsonl"]
    assert set(spiky.truth["loss_spike"]) <= _spike_steps(o)


@crafts("jsonl", "crash-memory", "loss_400_digits")
def test_jsonl_integer_beyond_float_range_is_inf(analyze, tmp_path):
    """A loss written as a 400-digit integer: +inf data (a non-finite loss finding), not a crash."""
    p = _healthy_jsonl(tmp_path / "l.jsonl")
    _replace_line(p, 100, b'{"step": 100, "loss": 1' + b"0" * 400 + b"}")
    o = analyze("--logdir", str(p), watch=[p])
    assert o.code == 0 and not o.err.strip(), o.err
    assert ("loss_nonfinite", 100) in o.findings("loss_nonfinite")


@crafts("jsonl", "crash-memory", "deep_arrays", "deep_objects", "closers_in_a_string")
def test_jsonl_deep_nesting_does_not_crash(analyze_subprocess, tmp_path, spiky):
    """100 000 levels of nesting segfault pyarrow's JSON reader (and overflow a recursive parser):
    measured before any parser runs, those lines skipped and named; a caption full of brackets inside
    a string is not nesting and is read."""
    d = tmp_path / "logs"
    d.mkdir()
    _spiky_csv(d / "a.csv", spiky)
    deep = 100_000
    lines = {
        "arrays.jsonl": b'{"step": 1, "x": ' + b"[" * deep + b"]" * deep + b"}",
        "objects.jsonl": b'{"a": ' * deep + b"1" + b"}" * deep,
        # closing brackets inside a string must not hide the nesting that follows
        "closers_in_a_string.jsonl": b'{"s": "' + b"]" * deep + b'", "x": ' + b"[" * deep + b"]" * deep + b"}",
    }
    for i, (name, line) in enumerate(lines.items()):
        _replace_line(_healthy_jsonl(d / name, start=len(spiky.steps) + 400 * i), 5, line)
    caption = _healthy_jsonl(d / "caption.jsonl", start=len(spiky.steps) + 1200)
    _replace_line(caption, 3, b'{"step": %d, "loss": 0.2, "caption": "' % (len(spiky.steps) + 1203)
                  + b"[{" * 200 + b'"}')
    o = analyze_subprocess("--logdir", str(d), watch=[d], timeout=180)
    error_lines(o, {name: "line 6 nests brackets deeper than 64 levels; skipped it" for name in lines})
    assert set(spiky.truth["loss_spike"]) <= _spike_steps(o)


def _replace_line(p: Path, index: int, text: bytes) -> None:
    lines = p.read_bytes().splitlines(keepends=True)
    lines[index] = text + b"\n"
    p.write_bytes(b"".join(lines))


# ============================================================================ CSV

def _small_csv(p: Path, start: int, n: int = 300) -> Path:
    p.write_text("step,loss,lr\n" + "".join(f"{start + i},{0.1 + 0.001 * (i % 7)},0.0001\n" for i in range(n)))
    return p


def _set_row(p: Path, index: int, row: str) -> None:
    lines = p.read_text().splitlines()
    lines[index] = row
    p.write_text("\n".join(lines) + "\n")


@crafts("csv", "absurd-steps", "step_inf", "step_nan", "step_1e300", "step_digits")
@crafts("csv", "crash-memory", "huge_cell", "wide")
@crafts("csv", "bad-file", "not_utf8")
def test_csv_bad_files_each_one_line(analyze, tmp_path, spiky):
    """CSV files with a step of 1e400, NaN, 1e300 or 23 digits, a 3 MB bad cell, bytes that are not UTF-8
    and 20 001 columns, beside a spiky CSV: one line each (values quoted short), the spikes found."""
    d = tmp_path / "logs"
    d.mkdir()
    _spiky_csv(d / "a.csv", spiky)
    start = len(spiky.steps)
    rows = {
        "step_inf.csv": ("1e400,0.1,0.0001", "column 'step' is not a finite whole number in data row 5 (inf)"),
        "step_nan.csv": ("nan,0.1,0.0001", "column 'step' is not a finite whole number in data row 5 ('nan')"),
        "step_1e300.csv": ("1e300,0.1,0.0001", "column 'step' is beyond the int64 range in data row 5 (1e+300)"),
        "step_digits.csv": ("99999999999999999999999,0.1,0.0001", "is beyond the int64 range in data row 5"),
        "huge_cell.csv": (f"{start},{'z' * 3_000_000},0.0001", "(3000000 characters) in data row 5"),
    }
    expected = {}
    for name, (row, what) in rows.items():
        _set_row(_small_csv(d / name, start), 5, row)
        expected[name] = what
    bad = _small_csv(d / "not_utf8.csv", start)
    data = bad.read_bytes()
    cut = data.index(b"\n", 1000) + 1
    bad.write_bytes(data[:cut] + b"\xc3\x28,0.1,0.1\n" + data[cut:])
    expected[bad.name] = f"line {data[:cut].count(10) + 1} is not UTF-8 text (byte 0xc3 at byte {cut})"
    wide = d / "wide.csv"
    wide.write_text("step," + ",".join(f"c{i}" for i in range(20000)) + "\n0," + ",".join("1" * 20000) + "\n")
    expected[wide.name] = "the CSV header has 20001 columns; at most 10000 are read"
    o = analyze("--logdir", str(d), watch=[d])
    error_lines(o, expected)
    assert set(spiky.truth["loss_spike"]) <= _spike_steps(o)


@crafts("csv", "crash-memory", "nul_40mb", "one_line_50mb")
def test_csv_memory_bombs_in_bounded_memory(analyze_subprocess, tmp_path, spiky):
    """40 MB of NUL bytes and a 50 MB CSV without a line break, in a process capped at 3 GiB of address
    space: refused at the first NUL / after the first 4 MiB line, the spiky CSV beside them analysed."""
    d = tmp_path / "logs"
    d.mkdir()
    _spiky_csv(d / "a.csv", spiky)
    with (d / "nul.csv").open("wb") as fh:
        fh.truncate(40 << 20)
    with (d / "one_line.csv").open("wb") as fh:
        for _ in range(50):
            fh.write(b"x" * (1 << 20))
    o = analyze_subprocess("--logdir", str(d), watch=[d], memory_mb=3072, timeout=180)
    error_lines(o, {"nul.csv": "holds a NUL byte at byte 0 (line 1): not a text log",
                    "one_line.csv": "line 1 (from byte 0) is longer than 4 MiB: not a training log"})
    assert set(spiky.truth["loss_spike"]) <= _spike_steps(o)


# ============================================================================ not regular files

@crafts("csv", "deadline", "fifo_as_logdir")
def test_fifo_as_logdir_is_refused_unopened(analyze_subprocess, tmp_path):
    fifo = tmp_path / "log.csv"
    os.mkfifo(fifo)
    o = analyze_subprocess("--logdir", str(fifo), timeout=120)
    one_error_line(o, str(fifo), expect="is a named pipe (FIFO), not a regular file")


@crafts("csv", "deadline", "dev_zero_as_logdir")
@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_device_as_logdir_is_refused_unopened(analyze_subprocess):
    """/dev/zero would never end: refused from os.stat alone."""
    o = analyze_subprocess("--logdir", "/dev/zero", timeout=120)
    one_error_line(o, "/dev/zero", expect="is a character device")


@crafts("csv", "deadline", "socket")
@crafts("jsonl", "bad-file", "broken_link")
def test_socket_and_broken_link_in_logdir(analyze, tmp_path, spiky):
    """A Unix socket called log.csv and a link to nowhere called gone.jsonl in a log directory:
    one line each, the spiky CSV beside them analysed."""
    d = tmp_path / "logs"
    d.mkdir()
    _spiky_csv(d / "a.csv", spiky)
    (d / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(d / "c.csv"))
        o = analyze("--logdir", str(d), watch=[d])
    finally:
        s.close()
    error_lines(o, {"c.csv": "is a socket, not a regular file; refused without reading it",
                    "gone.jsonl": "does not exist"})
    assert set(spiky.truth["loss_spike"]) <= _spike_steps(o)


# ============================================================================ W&B run files

def _chunks(data: bytes) -> list[tuple[int, int, int]]:
    """``(offset, length, type)`` of every chunk of an intact .wandb file."""
    out, pos, block = [], 7, 32 * 1024
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        crc, length, typ = struct.unpack_from("<IHB", data, pos)
        if typ == 0:
            break
        out.append((pos, length, typ))
        pos += 7 + length
    return out


@pytest.fixture
def wb(wandb_run, tmp_path):
    """A private copy of the offline run directory and its .wandb file's chunks."""
    d = _copy_tree(wandb_run["dir"], tmp_path / "wandb" / wandb_run["dir"].name)
    f = next(d.glob("run-*.wandb"))
    return d, f, _chunks(f.read_bytes())


def _is_step(item) -> bool:
    return item.key == "_step" or list(item.nested_key) == ["_step"]


def _history_chunk(data: bytes, chunks, step: int) -> tuple[int, int, int]:
    """The FULL chunk of the history row logged at ``step``."""
    from diffdiag.integrations.wandb_records import _pb

    pb = _pb()
    for pos, length, typ in chunks:
        if typ != 1:
            continue
        rec = pb.Record()
        rec.ParseFromString(data[pos + 7:pos + 7 + length])
        if rec.WhichOneof("record_type") == "history":
            steps = [json.loads(i.value_json) for i in rec.history.item if _is_step(i)]
            if steps == [step]:
                return pos, length, typ
    raise AssertionError(f"no history row at step {step}")


def test_wandb_healthy_run(analyze, wb, wandb_run):
    d, _, _ = wb
    o = analyze("--wandb-run", str(d), watch=[d])
    no_error(o)
    assert set(wandb_run["spikes"]) <= {s for fid, s in o.findings("loss_spike")}


@crafts("wandb-file", "integrity", "edited_value")
def test_wandb_edited_value_with_bad_crc(analyze, wb, wandb_run):
    """Someone edits a logged loss in place (same length, CRC not updated): that row is skipped, one
    line names the file and the chunk's byte offset, exit 2; the spikes elsewhere are still found."""
    d, f, chunks = wb
    data = bytearray(f.read_bytes())
    pos, length, _ = _history_chunk(bytes(data), chunks, 500)
    i = data.index(b"train/loss", pos) + 20
    data[i] = ord("9") if data[i] != ord("9") else ord("8")
    f.write_bytes(bytes(data))
    o = analyze("--wandb-run", str(d), watch=[d])
    one_error_line(o, f.name, expect=f"damaged at byte {pos} (a chunk fails its CRC check)")
    assert "skipped the damaged records" in o.err
    assert set(wandb_run["spikes"]) <= {s for fid, s in o.findings("loss_spike")}


@crafts("wandb-file", "integrity", "chunk_length", "chunk_type")
@pytest.mark.parametrize("field", ["length", "type"])
def test_wandb_damaged_chunk_header(analyze, wb, wandb_run, field):
    d, f, chunks = wb
    data = bytearray(f.read_bytes())
    pos, length, _ = _history_chunk(bytes(data), chunks, 600)
    if field == "length":  # not covered by the CRC: the next chunk is found by searching
        data[pos + 4] ^= 0x03
    else:
        data[pos + 6] = 9
    f.write_bytes(bytes(data))
    o = analyze("--wandb-run", str(d), watch=[d])
    one_error_line(o, f.name, expect=f"damaged at byte {pos}")
    assert set(wandb_run["spikes"]) <= {s for fid, s in o.findings("loss_spike")}


@crafts("wandb-file", "bad-file", "garbage_record_valid_crc")
def test_wandb_record_with_valid_crc_that_does_not_decode(analyze, wb, wandb_run):
    """A chunk rewritten with garbage and a matching CRC: it passes the check, does not decode, is named."""
    d, f, chunks = wb
    data = bytearray(f.read_bytes())
    pos, length, typ = _history_chunk(bytes(data), chunks, 650)
    junk = b"\x12" + b"\xff" * (length - 1)  # history field, a length varint that never ends
    data[pos + 7:pos + 7 + length] = junk
    struct.pack_into("<I", data, pos, zlib.crc32(junk, zlib.crc32(bytes([typ]))))
    f.write_bytes(bytes(data))
    o = analyze("--wandb-run", str(d), watch=[d])
    one_error_line(o, f.name, expect="skipped 1 history record that passes its CRC check but does not decode")
    assert set(wandb_run["spikes"]) <= {s for fid, s in o.findings("loss_spike")}


@crafts("wandb-file", "integrity", "header_only")
def test_wandb_header_only(analyze, wb):
    """A run killed right after wandb.init: the file holds only its header. Not 'no problems found'."""
    d, f, _ = wb
    f.write_bytes(f.read_bytes()[:7])
    o = analyze("--wandb-run", str(d), watch=[d])
    one_error_line(o, f.name, expect="holds no records (only its file header)")
    assert "no problems found" not in o.out and o.diag is None


@crafts("wandb-file", "integrity", "cut_tail")
def test_wandb_truncated_tail_is_a_note(analyze, wb, wandb_run):
    """A run still being written (or killed): the cut-off last record is a note, not an error."""
    d, f, chunks = wb
    data = f.read_bytes()
    pos = chunks[-3][0]
    f.write_bytes(data[:pos + 5])
    o = analyze("--wandb-run", str(d), watch=[d])
    no_error(o)
    assert "dropped the last" in o.out


@crafts("wandb-file", "absurd-steps", "step_1e400_nan_2**70")
def test_wandb_steps_not_finite_int64(analyze, wb, wandb_run):
    """History rows whose _step is 1e400, NaN and 2**70 (a crafted file, CRCs right): one line naming the
    file, those rows placed by W&B's own row counter, the rest analysed."""
    from diffdiag.integrations.wandb_records import _pb, split_records

    d, f, _ = wb
    records, _, _ = split_records(f.read_bytes())
    pb = _pb()
    odd = {"800": "1e400", "850": "NaN", "900": str(2 ** 70)}
    for i, raw in enumerate(records):
        rec = pb.Record.FromString(raw)
        if rec.WhichOneof("record_type") != "history":
            continue
        for it in rec.history.item:
            if _is_step(it) and it.value_json in odd:
                it.value_json = odd.pop(it.value_json)
                records[i] = rec.SerializeToString()
    assert not odd
    f.write_bytes(wandb_log(records))
    o = analyze("--wandb-run", str(d), watch=[d])
    one_error_line(o, f.name, expect="3 history rows have a _step that is not a finite int64 (first: inf)")
    assert set(wandb_run["spikes"]) <= {s for fid, s in o.findings("loss_spike")}


@crafts("wandb-file", "deadline", "fifo_run_file", "fifo_in_run_folder")
def test_wandb_fifo_is_refused_unopened(analyze_subprocess, tmp_path):
    """A named pipe called like a run file, given directly and inside a run folder: refused, no hang."""
    run_dir = tmp_path / "wandb" / "offline-run-20250101_000000-x"
    run_dir.mkdir(parents=True)
    fifo = run_dir / "run-x.wandb"
    os.mkfifo(fifo)
    for ref in (fifo, run_dir):
        o = analyze_subprocess("--wandb-run", str(ref), timeout=120)
        one_error_line(o, str(fifo), expect="is a named pipe (FIFO), not a regular file")


def test_wandb_writer_round_trip(wb):
    """The test-side LevelDB-log writer (for crafted files) reproduces what wandb wrote, byte for byte."""
    from diffdiag.integrations.wandb_records import split_records

    _, f, _ = wb
    data = f.read_bytes()
    records, dropped, _ = split_records(data)
    assert dropped == 0 and wandb_log(records) == data.rstrip(b"\0")[: len(wandb_log(records))]
