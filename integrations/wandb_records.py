"""Read W&B's ``run-<id>.wandb`` transaction log (offline and synced run directories).

wandb 0.31 removed its Python reader of these files, so diffdiag reads them itself.
The layout (stable since wandb 0.10):

* a 7-byte file header ``<4s H B>``: ``b":W&B"``, magic ``0xBEE1``, format version (0);
* a LevelDB log: 32 KiB blocks counted from the start of the file; each chunk has a
  7-byte header ``<I crc> <H length> <B type>`` with type FULL (1), FIRST (2),
  MIDDLE (3) or LAST (4); a block tail shorter than a header is zero padding;
* every reassembled record is a serialized ``wandb.proto.wandb_internal_pb2.Record``.

Histories are collected into numpy columns. The per-record work is kept small:
records are classified by their first protobuf tag (summaries, system stats and
console output are not parsed unless asked for), history items are gathered per
key as raw JSON text and decoded with one ``json.loads`` per key.

Media files written by wandb carry wandb's internal step in their names: steps
always come from the history row's ``_step``, never from a file name.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from operator import itemgetter, methodcaller
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from diffdiag.errors import InputError
from diffdiag.safeio import open_regular, quote

MAGIC_IDENT = b":W&B"
MAGIC = 0xBEE1
SUPPORTED_VERSIONS = (0,)
SUPPORTED_TEXT = "format version 0 (written by wandb 0.10 through 0.31)"
FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK = 32 * 1024
HEADER_LEN = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

# The tag of a serialized Record's type field (field number << 3 | wire type 2), found
# right after the optional record number (field 1, a varint). Records whose fields come
# in another order (control=16, uuid=19 first) take the slow, general path.
_TAG_NUM = (1 << 3) | 0
_TAG_HISTORY = (2 << 3) | 2
_TAG_SUMMARY = (3 << 3) | 2
_TAG_STATS = (7 << 3) | 2
_TAG_OUTPUT_RAW = 13 << 3 | 2  # 0x6a


@dataclass
class MediaRef:
    """One media value logged in a history row (image, table, ...).

    Attributes
    ----------
    key : str
        The history key it was logged under (e.g. ``"samples"``).
    step : int
        The history row's ``_step`` (never the number in the file name).
    value : dict
        W&B's media descriptor (``_type``, ``path``, ``caption``, ``width``, ...).
    index : int
        Position within a list of media logged under one key in one step.
    """

    key: str
    step: int
    value: dict[str, Any]
    index: int = 0

    @property
    def kind(self) -> str:
        return str(self.value.get("_type", ""))

    @property
    def path(self) -> str | None:
        p = self.value.get("path")
        return str(p) if p else None


@dataclass
class WandbRecords:
    """What one ``.wandb`` file holds, as diffdiag uses it.

    Attributes
    ----------
    path : Path
    version : int
        The file's format version.
    run : dict
        ``run_id``, ``entity``, ``project``, ``group``, ``job_type``, ``display_name``, ``tags``.
    config : dict
        The run's configuration (nested keys rebuilt, ``_wandb`` dropped).
    summary : dict
        Final summary (updates applied in order), only when ``summary=True`` was asked.
    scalars : dict of str to (ndarray int64, ndarray float64)
        Numeric history per key: ``(steps, values)``; non-finite values kept.
    other : dict of str to list of (int, object)
        Non-numeric, non-media history values per key: ``[(step, value), ...]``.
    media : list of MediaRef
        Images, tables and other media, in logging order.
    artifacts : list of dict
        Logged artifacts: ``name``, ``type``, ``aliases``, ``digest``, ``metadata`` and
        ``files`` (``path``, ``size``, ``digest``, ``local_path`` or None, ``ref``).
    n_records : int
        Records read.
    dropped_bytes : int
        Bytes at the end that did not form a whole record (a truncated tail: a run still
        being written, or one that was killed).
    warnings : list of str
        Notes (a truncated tail, a file without records).
    errors : list of str
        Damage inside the file: one line naming the file and the first damaged byte offset
        (chunks whose CRC fails, records that do not decode); those records were skipped.
    """

    path: Path
    version: int = 0
    run: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    scalars: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    other: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    media: list[MediaRef] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    n_records: int = 0
    dropped_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exit_code: int | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    slow_items: int = 0  # history items that missed the fast path (nested keys, typed values)
    chunk_types: dict[int, int] = field(default_factory=dict)


def _pb():
    try:
        from wandb.proto import wandb_internal_pb2
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        from diffdiag.errors import NotAvailableError

        raise NotAvailableError(
            f"reading W&B runs needs the optional package '{exc.name}': pip install 'diffdiag[wandb]'") from None
    return wandb_internal_pb2


def read_header(data: bytes, path: Path) -> int:
    """Check the file header and return the format version.

    Raises
    ------
    InputError
        When the file is not a ``.wandb`` log or its version is not supported.
    """
    if len(data) < HEADER_LEN:
        raise InputError("is not a W&B run log (.wandb): the file is shorter than its 7-byte header", path)
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != MAGIC_IDENT or magic != MAGIC:
        raise InputError("is not a W&B run log (.wandb): bad file header", path)
    if version not in SUPPORTED_VERSIONS:
        raise InputError(f"has .wandb format version {version}, which this diffdiag does not read; "
                         f"supported: {SUPPORTED_TEXT}", path)
    return int(version)


def iter_raw_records(data: bytes, path: Path | str = "") -> Iterator[bytes]:
    """Yield each whole record's payload (serialized ``Record``), in order.

    The generator's ``dropped`` attribute is not available; use :func:`split_records`
    to also learn how many trailing bytes were dropped.
    """
    records, _, _ = split_records(data)
    yield from records


#: CRC-32 (zlib, not masked) of each chunk type byte: a chunk's CRC covers its type and data
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (FULL, FIRST, MIDDLE, LAST)}


def _chunk_at(data: bytes, pos: int, n: int) -> tuple[int, int, int] | None:
    """``(type, data start, data end)`` of a whole chunk at ``pos`` whose CRC holds, else None."""
    if pos + HEADER_LEN > n or BLOCK - pos % BLOCK < HEADER_LEN:
        return None
    crc, length, typ = CHUNK_HEADER.unpack_from(data, pos)
    start = pos + HEADER_LEN
    end = start + length
    tcrc = _TYPE_CRC.get(typ)
    if tcrc is None or end > n or length > BLOCK - pos % BLOCK - HEADER_LEN:
        return None
    if zlib.crc32(memoryview(data)[start:end], tcrc) != crc:
        return None
    return typ, start, end


def _good_next(data: bytes, pos: int, n: int) -> bool:
    """Whether reading can go on at ``pos``: the end of the file, a block trailer, zero padding,
    or a chunk whose CRC holds."""
    if pos >= n or BLOCK - pos % BLOCK < HEADER_LEN:
        return True
    if data[pos:pos + HEADER_LEN] == b"\0" * HEADER_LEN:
        return True
    return _chunk_at(data, pos, n) is not None


def _next_good(data: bytes, pos: int, n: int) -> int:
    """The first offset after damaged ``pos`` in the same block where a sound chunk starts, else the
    next block's start (a chunk's length is not covered by its CRC, so the damage may have moved it)."""
    block_end = min(n, (pos // BLOCK + 1) * BLOCK)
    types = (FULL, FIRST, MIDDLE, LAST)
    for q in range(pos + 1, block_end - HEADER_LEN + 1):
        if data[q + 6] in types and _chunk_at(data, q, n) is not None:
            return q
    return block_end


def split_records(data: bytes | memoryview, counts: dict[int, int] | None = None,
                  damage: list[tuple[int, str]] | None = None) -> tuple[list[bytes], int, str]:
    """Reassemble the LevelDB-log chunks after the file header, checking every chunk's CRC.

    A chunk whose CRC-32 (zlib's, over its type byte and data, as wandb writes it) fails is
    dropped with the record it belongs to. When the chunk after it is sound (the damage did
    not touch the length), reading goes on there, so only that record is lost; otherwise at
    the next sound chunk in the same 32 KiB block, else at the next block (where LevelDB's
    own reader resumes).

    Parameters
    ----------
    data : bytes
        The whole file.
    counts : dict, optional
        Filled with how many FIRST/MIDDLE/LAST chunks were seen (records split over blocks).
    damage : list, optional
        Filled with ``(byte offset, what is wrong)`` for each damaged place.

    Returns
    -------
    records : list of bytes
        Payloads of the whole records.
    dropped : int
        Bytes from the first incomplete chunk at the end of the file to the end (0 when whole).
    problem : str
        Why the end was dropped ('' when it was not).
    """
    data = data if isinstance(data, bytes) else bytes(data)
    n = len(data)
    pos = HEADER_LEN
    out: list[bytes] = []
    append = out.append
    unpack = CHUNK_HEADER.unpack_from
    crc32 = zlib.crc32
    full_crc = _TYPE_CRC[FULL]
    damage = damage if damage is not None else []
    pending: list[bytes] | None = None
    pending_start = pos
    resyncing = False  # after damage: continuation chunks of the lost record are skipped quietly
    while pos < n:
        # fast path: a whole record (FULL chunk) inside the current block, CRC intact
        off = pos & (BLOCK - 1)
        if off <= BLOCK - HEADER_LEN and pos + HEADER_LEN <= n and data[pos + 6] == FULL and pending is None:
            crc, length, _ = unpack(data, pos)
            end = pos + HEADER_LEN + length
            if end <= n and end - pos + off <= BLOCK:
                rec = data[pos + HEADER_LEN:end]
                if crc32(rec, full_crc) == crc:
                    append(rec)
                    pos = end
                    resyncing = False
                    continue
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER_LEN:  # block trailer (zero padding)
            pos += left_in_block
            continue
        if pos + HEADER_LEN > n:
            return out, n - (pending_start if pending is not None else pos), "the file ends inside a record header"
        crc, length, typ = unpack(data, pos)
        start = pos + HEADER_LEN
        end = start + length
        if typ == 0 and length == 0 and crc == 0 and not data[pos:pos + left_in_block].strip(b"\0"):
            pos += left_in_block  # zeros to the end of the block (pre-allocated: the writer stopped here)
            continue
        if end > n and typ in _TYPE_CRC and length <= left_in_block - HEADER_LEN:
            return out, n - (pending_start if pending is not None else pos), "the last record is cut off"
        chunk = _chunk_at(data, pos, n)
        if chunk is None:
            what = ("an unknown chunk type" if typ not in _TYPE_CRC else "a chunk runs past its block"
                    if length > left_in_block - HEADER_LEN else "a chunk fails its CRC check")
            damage.append((pending_start if pending is not None else pos, what))
            pending = None
            resyncing = True
            if typ in _TYPE_CRC and end <= n and length <= left_in_block - HEADER_LEN and _good_next(data, end, n):
                pos = end  # only this chunk is damaged
            else:
                pos = _next_good(data, pos, n)
            continue
        if typ == FULL:
            if pending is not None:
                damage.append((pending_start, "a record's first part without its last"))
                pending = None
            append(data[start:end])
            resyncing = False
        elif typ == FIRST:
            if counts is not None:
                counts[FIRST] = counts.get(FIRST, 0) + 1
            if pending is not None:
                damage.append((pending_start, "a record's first part without its last"))
            pending_start = pos
            pending = [data[start:end]]
            resyncing = False
        elif pending is None:  # MIDDLE or LAST without FIRST
            if not resyncing:
                damage.append((pos, "a continuation chunk without its first part"))
                resyncing = True
        else:
            pending.append(data[start:end])
            if counts is not None:
                counts[typ] = counts.get(typ, 0) + 1
            if typ == LAST:
                append(b"".join(pending))
                pending = None
        pos = end
    if pending is not None:
        return out, n - pending_start, "the last record is cut off"
    return out, 0, ""


def _nest(target: dict[str, Any], keys: list[str] | tuple[str, ...], value: Any) -> None:
    d = target
    for k in keys[:-1]:
        nxt = d.get(k)
        if not isinstance(nxt, dict):
            nxt = d[k] = {}
        d = nxt
    d[keys[-1]] = value


def _item_json(item: Any) -> str:
    """The JSON text of a history/summary item: ``value_json`` or a typed ``value`` field."""
    vj = item.value_json
    if vj:
        return vj
    which = item.WhichOneof("value") if hasattr(item, "WhichOneof") and "value" in [
        o.name for o in item.DESCRIPTOR.oneofs] else None
    if which is None:
        return "null"
    if which == "none":
        return "null"
    if which == "boolean":
        return "true" if item.boolean else "false"
    if which == "integer":
        return str(int(item.integer))
    if which == "number":
        return json.dumps(float(item.number))
    if which == "text":
        return json.dumps(item.text)
    if which == "json":
        return item.json or "null"
    return "null"


def _item_key(item: Any) -> tuple[str, ...]:
    nk = item.nested_key
    if nk:
        return tuple(nk)
    return (item.key,)


def _undecodable(n: int, what: str) -> str:
    if n == 1:
        return f"skipped 1 {what} that passes its CRC check but does not decode"
    return f"skipped {n} {what}s that pass their CRC check but do not decode"


def _loads(text: str | bytes) -> Any:
    """``json.loads`` that fails with ValueError (never RecursionError) on a too deeply nested value."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON value nested too deeply") from None


def _int64_ok(v: Any) -> bool:
    """Whether a number is finite and within int64 (a usable step)."""
    try:
        return -(2 ** 63) <= v < 2 ** 63
    except TypeError:
        return False


def _floats(values: list[Any]) -> np.ndarray:
    """Numbers as float64; an integer beyond float range becomes +-inf instead of raising."""
    try:
        return np.asarray(values, dtype=np.float64)
    except OverflowError:
        return np.asarray([_float_or_inf(v) for v in values], dtype=np.float64)


def _float_or_inf(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:
        return float("inf") if v > 0 else float("-inf")


def _is_number(v: Any) -> bool:
    return type(v) in (int, float, bool)


def read_wandb_file(path: str | Path, *, summary: bool = True) -> WandbRecords:
    """Read one ``run-<id>.wandb`` file.

    Parameters
    ----------
    path : str or Path
    summary : bool
        Apply the summary updates (a few hundred thousand small records in a long
        run; skip them when the final summary is not needed).

    Returns
    -------
    WandbRecords
        Histories as numpy columns, media references with their ``_step``, config,
        summary, artifacts. A truncated file gives what is whole, with
        ``dropped_bytes`` and a warning.

    Raises
    ------
    InputError
        Missing/unreadable file, not a ``.wandb`` file, unsupported format version.
    """
    path = Path(path)
    with open_regular(path) as fh:
        try:
            data = fh.read()
        except OSError as exc:
            raise InputError(f"cannot be read ({exc.strerror or exc})", path) from None
    out = WandbRecords(path=path)
    out.version = read_header(data, path)
    damage: list[tuple[int, str]] = []
    raw, dropped, problem = split_records(data, out.chunk_types, damage)
    del data
    out.dropped_bytes = dropped
    if dropped:
        out.warnings.append(
            f"{path.name}: {problem}; read {len(raw)} whole records and dropped the last {dropped} bytes "
            f"(a truncated or still-running run)")
    if damage:
        offset, what = damage[0]
        more = f" and {len(damage) - 1} more place{'s' if len(damage) > 2 else ''}" if len(damage) > 1 else ""
        out.errors.append(f"damaged at byte {offset} ({what}){more}; skipped the damaged records "
                          f"and read the other {len(raw)}")
    if not raw and not dropped and not damage:
        out.warnings.append(f"{path.name}: no records (only the file header): nothing was logged to this run")
    pb = _pb()
    out.n_records = len(raw)
    try:
        if not _read_batch(raw, out, pb, summary):
            _read_each(raw, out, pb, summary)
    finally:  # one line per file: the damage first, then what else was skipped
        if out.errors:
            out.errors = [str(InputError("; ".join(out.errors), path))]
    return out


def _read_each(raw: list[bytes], out: WandbRecords, pb: Any, summary: bool) -> None:
    """Route and decode the records one at a time (when a damaged record breaks the batch parse)."""
    path = out.path
    history_payloads: list[bytes] = []
    summary_payloads: list[bytes] = []
    Record = pb.Record
    config: dict[str, Any] = {}
    n_bad = 0
    for payload in raw:
        if not payload:
            continue
        tag = payload[0]
        if tag == _TAG_NUM:  # skip the record number (a varint) to reach the record's type
            i = 1
            while i < len(payload) and payload[i] & 0x80:
                i += 1
            tag = payload[i + 1] if i + 1 < len(payload) else 0
        if tag == _TAG_HISTORY:
            history_payloads.append(payload)
            continue
        if tag == _TAG_SUMMARY:
            if summary:
                summary_payloads.append(payload)
            continue
        if tag == _TAG_STATS or tag == _TAG_OUTPUT_RAW:
            continue
        rec = Record()
        try:
            rec.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - a damaged record is dropped, the rest is read
            n_bad += 1
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history_payloads.append(payload)
        elif kind == "summary":
            if summary:
                summary_payloads.append(payload)
        elif kind == "run":
            r = rec.run
            out.run = {
                "run_id": r.run_id, "entity": r.entity, "project": r.project, "group": r.run_group,
                "job_type": r.job_type, "display_name": r.display_name, "tags": list(r.tags),
                "notes": r.notes, "start_time": r.start_time.seconds if r.HasField("start_time") else None,
            }
            for item in r.config.update:
                _apply_config(config, item)
        elif kind == "config":
            for item in rec.config.update:
                _apply_config(config, item)
            for item in rec.config.remove:
                _remove_nested(config, _item_key(item))
        elif kind == "artifact":
            out.artifacts.append(_artifact_dict(rec.artifact))
        elif kind == "alert":
            a = rec.alert
            out.alerts.append({"title": a.title, "text": a.text, "level": a.level})
        elif kind == "exit":
            out.exit_code = int(rec.exit.exit_code)
    out.n_records = len(raw) - n_bad
    if n_bad:
        out.errors.append(_undecodable(n_bad, "record"))
    config.pop("_wandb", None)
    out.config = {k: (v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v)
                  for k, v in config.items()}
    _collect_history(history_payloads, out, pb)
    if summary:
        out.summary = _collect_summary(summary_payloads, pb)


def _read_batch(raw: list[bytes], out: WandbRecords, pb: Any, summary: bool) -> bool:
    """Route and decode every record with two protobuf parses of the whole file (the fast path).

    Returns False (and leaves ``out`` untouched) when a damaged record breaks the batch
    parse; the caller then reads record by record.
    """
    types = _raw_types()
    blob = b"".join(raw)
    allrec = types["AllRecords"]()
    flat = types["HistoryFlat"]()
    try:
        allrec.ParseFromString(blob)
        flat.ParseFromString(blob)
        runs = [pb.RunRecord.FromString(b) for b in allrec.run]
        configs = [pb.ConfigRecord.FromString(b) for b in allrec.config]
        artifacts = [pb.ArtifactRecord.FromString(b) for b in allrec.artifact]
        alerts = [pb.AlertRecord.FromString(b) for b in allrec.alert]
        exits = [pb.RunExitRecord.FromString(b) for b in allrec.exit]
    except Exception:  # noqa: BLE001
        return False
    del blob
    config: dict[str, Any] = {}
    for r in runs[:1]:
        out.run = {
            "run_id": r.run_id, "entity": r.entity, "project": r.project, "group": r.run_group,
            "job_type": r.job_type, "display_name": r.display_name, "tags": list(r.tags),
            "notes": r.notes, "start_time": r.start_time.seconds if r.HasField("start_time") else None,
        }
        for item in r.config.update:
            _apply_config(config, item)
    for c in configs:
        for item in c.update:
            _apply_config(config, item)
        for item in c.remove:
            _remove_nested(config, _item_key(item))
    out.artifacts = [_artifact_dict(a) for a in artifacts]
    out.alerts = [{"title": a.title, "text": a.text, "level": a.level} for a in alerts]
    if exits:
        out.exit_code = int(exits[-1].exit_code)
    _finish_config(out, config)
    _history_columns(allrec.history, list(flat.history.item), out, pb)
    if summary:
        out.summary = _summary_from(allrec.summary, pb)
    return True


def _finish_config(out: WandbRecords, config: dict[str, Any]) -> None:
    config.pop("_wandb", None)
    out.config = {k: (v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v)
                  for k, v in config.items()}


def _apply_config(config: dict[str, Any], item: Any) -> None:
    try:
        value = _loads(_item_json(item))
    except ValueError:
        value = item.value_json
    _nest(config, _item_key(item), value)


def _remove_nested(config: dict[str, Any], keys: tuple[str, ...]) -> None:
    d: Any = config
    for k in keys[:-1]:
        d = d.get(k) if isinstance(d, dict) else None
        if d is None:
            return
    if isinstance(d, dict):
        d.pop(keys[-1], None)


def _artifact_dict(a: Any) -> dict[str, Any]:
    files = []
    for c in a.manifest.contents:
        files.append({"path": c.path, "size": int(c.size), "digest": c.digest,
                      "local_path": c.local_path or None, "ref": c.ref or None})
    try:
        metadata = _loads(a.metadata) if a.metadata else {}
    except ValueError:
        metadata = {}
    return {"name": a.name, "type": a.type, "aliases": list(a.aliases), "digest": a.digest,
            "metadata": metadata, "files": files, "run_id": a.run_id, "project": a.project,
            "entity": a.entity}


_RAW_TYPES: dict[str, Any] = {}


def _raw_types() -> dict[str, Any]:
    """Message classes that view history/summary records with their items as raw bytes.

    They are wire-compatible with ``wandb_internal_pb2`` (same field numbers); reading
    items as ``bytes`` lets protobuf's C parser split a whole run in one call, and
    Python only groups byte strings.
    """
    if _RAW_TYPES:
        return _RAW_TYPES
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="diffdiag_wandb_raw.proto", package="diffdiag_wandb_raw",
                                             syntax="proto3")

    def msg(name: str, fields: list[tuple[str, int, int, int, str | None]]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, num, typ, label, tname in fields:
            f = m.field.add(name=fname, number=num, type=typ, label=label)
            if tname:
                f.type_name = f".diffdiag_wandb_raw.{tname}"

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("Step", [("num", 1, F.TYPE_INT64, opt, None)])
    # HistoryRecord: item = 1 (HistoryItem), step = 2 (HistoryStep)
    msg("RawHistory", [("item", 1, F.TYPE_BYTES, rep, None), ("step", 2, F.TYPE_MESSAGE, opt, "Step")])
    # Record.history = 2: repeated -> one element per record; optional -> all merged
    msg("HistoryRows", [("history", 2, F.TYPE_MESSAGE, rep, "RawHistory")])
    msg("HistoryFlat", [("history", 2, F.TYPE_MESSAGE, opt, "RawHistory")])
    # SummaryRecord: update = 1, remove = 2; Record.summary = 3
    msg("RawSummary", [("update", 1, F.TYPE_BYTES, rep, None), ("remove", 2, F.TYPE_BYTES, rep, None)])
    msg("SummaryFlat", [("summary", 3, F.TYPE_MESSAGE, opt, "RawSummary")])
    # every record of a file at once: history rows, merged summary, the other kinds as raw bytes
    msg("AllRecords", [("history", 2, F.TYPE_MESSAGE, rep, "RawHistory"),
                       ("summary", 3, F.TYPE_MESSAGE, opt, "RawSummary"),
                       ("config", 5, F.TYPE_BYTES, rep, None), ("artifact", 8, F.TYPE_BYTES, rep, None),
                       ("alert", 10, F.TYPE_BYTES, rep, None), ("run", 17, F.TYPE_BYTES, rep, None),
                       ("exit", 18, F.TYPE_BYTES, rep, None)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    for name in ("HistoryRows", "HistoryFlat", "SummaryFlat", "AllRecords"):
        _RAW_TYPES[name] = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"diffdiag_wandb_raw.{name}"))
    return _RAW_TYPES


_VALUE_TAG = b"\x82\x01"  # HistoryItem/SummaryItem.value_json = 16, wire type 2


def _simple_key(k: bytes) -> str | None:
    """The key of an item prefix ``<tag 1|2><len><key>`` (one key, no nesting), else None."""
    if len(k) >= 2 and (k[0] == 0x12 or k[0] == 0x0A) and k[1] < 0x80 and len(k) == 2 + k[1]:
        try:
            return k[2:].decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _strip_len(v: bytes) -> bytes:
    """Drop the varint length in front of a value_json payload."""
    i = 0
    while i < len(v) and v[i] & 0x80:
        i += 1
    return v[i + 1:]


_DROP_FIRST = itemgetter(slice(1, None))


def _json_texts(vals: list[bytes]) -> list[bytes]:
    """Strip the varint length in front of each value_json payload (one-byte lengths: vectorised)."""
    if not vals:
        return []
    lens = np.fromiter(map(len, vals), dtype=np.int64, count=len(vals))
    if lens.min() > 0:
        firsts = np.frombuffer(bytes(map(itemgetter(0), vals)), dtype=np.uint8)
        if np.array_equal(firsts, lens - 1):  # every length fits one varint byte
            return list(map(_DROP_FIRST, vals))
    return [_strip_len(v) if v else b"null" for v in vals]


def _decode_json_list(texts: list[bytes]) -> list[Any]:
    try:
        return _loads(b"[" + b",".join(texts) + b"]")
    except ValueError:
        out = []
        for t in texts:
            try:
                out.append(_loads(t))
            except ValueError:
                out.append(t.decode("utf-8", "replace"))
        return out


_NUMBER_TYPES = {int, float, bool}


def _collect_history(payloads: list[bytes], out: WandbRecords, pb: Any) -> None:
    """Turn history records into per-key numpy columns and media references.

    One protobuf parse splits every record into rows and one more gives every item's
    bytes in order; items are grouped by their key bytes with numpy and each key's
    JSON values are decoded with a single ``json.loads``.
    """
    if not payloads:
        return
    types = _raw_types()
    blob = b"".join(payloads)
    rows_msg = types["HistoryRows"]()
    flat_msg = types["HistoryFlat"]()
    try:
        rows_msg.ParseFromString(blob)
        flat_msg.ParseFromString(blob)
    except Exception:  # noqa: BLE001 - fall back to one record at a time
        _collect_history_slow(payloads, out, pb)
        return
    del blob
    _history_columns(rows_msg.history, list(flat_msg.history.item), out, pb)


def _history_columns(rows: Any, items: list[bytes], out: WandbRecords, pb: Any) -> None:
    """Columns from history rows (``RawHistory`` messages) and all their items' bytes in order."""
    counts = np.fromiter((len(r.item) for r in rows), dtype=np.int64, count=len(rows))
    n_rows = len(counts)
    if not items or n_rows == 0:
        return
    row_of = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
    groups: dict[tuple[str, ...], tuple[np.ndarray, list[Any]]] = {}
    fast_prefixes = _every_row_keys(items, n_rows, groups)
    if fast_prefixes:
        if len(fast_prefixes) * n_rows < len(items):  # other keys too: group those item by item
            starts = tuple(fast_prefixes)
            rest = np.fromiter((i for i, it in enumerate(items) if not it.startswith(starts)), dtype=np.int64)
            if len(rest):
                _group_items([items[i] for i in rest], row_of[rest], groups, out, pb)
    else:
        _group_items(items, row_of, groups, out, pb)
    step_key = ("_step",)
    srows, svals = groups.pop(step_key, (np.zeros(0, dtype=np.int64), []))
    if len(srows) == n_rows and set(map(type, svals)) <= {int} and _int64_ok(min(svals)) and _int64_ok(max(svals)):
        steps = np.empty(n_rows, dtype=np.int64)
        steps[srows] = svals
    else:  # some rows without a usable _step: W&B's own row counter
        steps = np.array([r.step.num for r in rows], dtype=np.int64)
        ok = np.array([type(v) in _NUMBER_TYPES and _int64_ok(v) for v in svals], dtype=bool)
        if ok.any():
            steps[srows[ok]] = np.asarray([v for v, o in zip(svals, ok) if o], dtype=np.float64).astype(np.int64)
        n_odd = sum(1 for v, o in zip(svals, ok) if not o and type(v) in _NUMBER_TYPES)
        if n_odd:
            first = next(v for v, o in zip(svals, ok) if not o and type(v) in _NUMBER_TYPES)
            out.errors.append(f"{n_odd} history rows have a _step that is not a finite int64 "
                              f"(first: {quote(first, 40)}); their row counter was used instead")
    _columns_from_groups(groups, steps, out)


_KEY_CENSUS = re.compile(rb"\n(\x12[\x01-\x7f][^\x00-\x1f\x82]*)\x82\x01")


def _every_row_keys(items: list[bytes], n_rows: int, groups: dict[tuple[str, ...], tuple[np.ndarray, list[Any]]]
                    ) -> list[bytes]:
    """Decode the keys logged in every row with one regex scan each (the common case: loss, lr, ...).

    Items are joined with newlines (compact JSON never holds a raw newline); for each
    simple key prefix ``<0x12><len><key>`` the values ``<len><json>`` are found with one
    ``re.findall``. A key qualifies when it occurs exactly ``n_rows`` times and every
    value's length byte matches; then its rows are ``0..n_rows-1`` in order. Returns the
    item prefixes handled (``<prefix>\x82\x01``).
    """
    joined = b"\n" + b"\n".join(items)
    handled: list[bytes] = []
    for k in set(_KEY_CENSUS.findall(joined)):
        name = _simple_key(k)
        if name is None:
            continue
        head = k + _VALUE_TAG
        vals = re.findall(re.escape(b"\n" + head) + rb"([\x01-\x7f][^\n]*)", joined)
        if len(vals) != n_rows:
            continue
        lens = np.fromiter(map(len, vals), dtype=np.int64, count=len(vals))
        firsts = np.frombuffer(bytes(map(itemgetter(0), vals)), dtype=np.uint8)
        if not np.array_equal(firsts, lens - 1):
            continue
        values = _decode_json_list(list(map(_DROP_FIRST, vals)))
        _add_group(groups, (name,), np.arange(n_rows, dtype=np.int64), values)
        handled.append(head)
    return handled


def _group_items(items: list[bytes], row_of: np.ndarray, groups: dict[tuple[str, ...], tuple[np.ndarray, list[Any]]],
                 out: WandbRecords, pb: Any) -> None:
    """Group items by their key bytes; simple keys decoded per key, the rest item by item."""
    parts = list(map(methodcaller("partition", _VALUE_TAG), items))
    keys = np.array(list(map(itemgetter(0), parts)), dtype=object)
    vals = list(map(itemgetter(2), parts))
    # group identical key prefixes (few distinct keys, many items)
    key_index: dict[bytes, int] = {}
    try:  # fixed-width bytes sort fast; keys with trailing NULs would not survive it
        karr = keys.astype(bytes)
        ok = bool(np.all(np.char.str_len(karr) == np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))))
    except (TypeError, ValueError):
        ok = False
    if ok:
        uniq, codes = np.unique(karr, return_inverse=True)
        codes = codes.astype(np.int64).ravel()
        key_index = {bytes(u): i for i, u in enumerate(uniq.tolist())}
    else:
        codes = np.fromiter((key_index.setdefault(k, len(key_index)) for k in keys), dtype=np.int64,
                            count=len(keys))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(key_index) + 1))
    for kbytes, g in key_index.items():
        idx = order[bounds[g]:bounds[g + 1]]
        name = _simple_key(kbytes)
        gvals = [vals[i] for i in idx] if len(idx) < 2 else list(itemgetter(*idx)(vals))
        if name is not None and all(parts[i][1] for i in idx):
            values = _decode_json_list(_json_texts(gvals))
            _add_group(groups, (name,), row_of[idx], values)
            continue
        # nested keys (media dicts), typed values, anything unusual: parse the items properly
        out.slow_items += len(idx)
        for i in idx:
            item = pb.HistoryItem()
            try:
                item.ParseFromString(items[i])
            except Exception:  # noqa: BLE001
                continue
            text = _item_json(item)
            try:
                value = _loads(text)
            except ValueError:
                value = text
            _add_group(groups, _item_key(item), row_of[[i]], [value])


def _add_group(groups: dict[tuple[str, ...], tuple[np.ndarray, list[Any]]], key: tuple[str, ...],
               rows: np.ndarray, values: list[Any]) -> None:
    old = groups.get(key)
    if old is None:
        groups[key] = (np.asarray(rows, dtype=np.int64), list(values))
    else:
        groups[key] = (np.concatenate([old[0], rows]), old[1] + list(values))


def _collect_history_slow(payloads: list[bytes], out: WandbRecords, pb: Any) -> None:
    """One record at a time (used only when a damaged record breaks the batch parse)."""
    groups: dict[tuple[str, ...], tuple[np.ndarray, list[Any]]] = {}
    steps: list[int] = []
    rec = pb.Record()
    n_bad = 0
    for payload in payloads:
        try:
            rec.ParseFromString(payload)
        except Exception:  # noqa: BLE001
            n_bad += 1
            continue
        r = len(steps)
        step = rec.history.step.num
        for item in rec.history.item:
            key = _item_key(item)
            text = _item_json(item)
            try:
                value = _loads(text)
            except ValueError:
                value = text
            if key == ("_step",) and type(value) in _NUMBER_TYPES:
                if _int64_ok(value):
                    step = int(value)
                continue
            _add_group(groups, key, np.array([r]), [value])
        steps.append(step)
    if n_bad:
        out.errors.append(_undecodable(n_bad, "history record"))
    _columns_from_groups(groups, np.asarray(steps, dtype=np.int64), out)


def _columns_from_groups(groups: dict[tuple[str, ...], tuple[np.ndarray, list[Any]]], steps: np.ndarray,
                         out: WandbRecords) -> None:
    nested: dict[str, dict[int, dict[str, Any]]] = {}
    for key, (rows, values) in groups.items():
        if len(key) > 1:
            per_row = nested.setdefault(key[0], {})
            for r, v in zip(rows.tolist(), values):
                _nest(per_row.setdefault(r, {}), key[1:], v)
            continue
        name = key[0]
        order = np.argsort(rows, kind="stable")
        if not (order == np.arange(len(order))).all():
            rows = rows[order]
            values = [values[i] for i in order]
        if set(map(type, values)) <= _NUMBER_TYPES:
            out.scalars[name] = (steps[rows], _floats(values))
            continue
        num_rows, num_vals, rest = [], [], []
        for r, v in zip(rows.tolist(), values):
            if type(v) in _NUMBER_TYPES:
                num_rows.append(r)
                num_vals.append(v)
            elif v is None:
                continue
            elif isinstance(v, dict) and "_type" in v:
                nested.setdefault(name, {})[r] = v
            elif isinstance(v, list) and v and all(isinstance(x, dict) and "_type" in x for x in v):
                nested.setdefault(name, {})[r] = {"_type": "list", "items": v}
            else:
                rest.append((int(steps[r]), v))
        if num_rows:
            out.scalars[name] = (steps[np.asarray(num_rows, dtype=np.int64)], _floats(num_vals))
        if rest:
            out.other[name] = rest
    media: list[tuple[int, MediaRef]] = []
    for name, per_row in nested.items():
        for r, value in per_row.items():
            step = int(steps[r])
            if value.get("_type") in ("images/separated", "list"):
                items = value.get("items") or _separated_images(value)
                for i, v in enumerate(items):
                    media.append((r, MediaRef(name, step, v, i)))
            elif "_type" in value:
                media.append((r, MediaRef(name, step, value)))
            else:
                out.other.setdefault(name, []).append((step, value))
    media.sort(key=lambda t: (t[0], t[1].key, t[1].index))
    out.media = [m for _, m in media]


def _separated_images(value: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand wandb's ``images/separated`` (a list of images logged under one key)."""
    names = value.get("filenames") or []
    captions = value.get("captions") or []
    boxes = value.get("all_boxes") or []
    masks = value.get("all_masks") or []
    out = []
    for i, p in enumerate(names):
        item = {"_type": "image-file", "path": p, "width": value.get("width"),
                "height": value.get("height"), "format": value.get("format"),
                "caption": captions[i] if i < len(captions) else None}
        if i < len(boxes) and boxes[i]:
            item["boxes"] = boxes[i]
        if i < len(masks) and masks[i]:
            item["masks"] = masks[i]
        out.append(item)
    return out


def _collect_summary(payloads: list[bytes], pb: Any) -> dict[str, Any]:
    """Apply summary updates in order; the last value of each key wins."""
    if not payloads:
        return {}
    flat = _raw_types()["SummaryFlat"]()
    try:
        # serialized Records concatenate into one whose summary holds every update in order
        flat.ParseFromString(b"".join(payloads))
    except Exception:  # noqa: BLE001
        return {}
    return _summary_from(flat.summary, pb)


def _summary_from(raw_summary: Any, pb: Any) -> dict[str, Any]:
    return _summary_general(list(raw_summary.update), raw_summary, pb)


def _summary_general(updates: list[bytes], raw_summary: Any, pb: Any) -> dict[str, Any]:
    parts = list(map(methodcaller("partition", _VALUE_TAG), updates))
    last_pos = dict(zip(map(itemgetter(0), parts), range(len(parts))))  # last occurrence wins
    removed: set[tuple[str, ...]] = set()
    for raw in raw_summary.remove:
        item = pb.SummaryItem()
        try:
            item.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError: a damaged removal is ignored
            continue
        removed.add(_item_key(item))
    result: dict[str, Any] = {}
    for kbytes, pos in sorted(last_pos.items(), key=itemgetter(1)):
        name = _simple_key(kbytes)
        if name is not None and parts[pos][1]:
            key: tuple[str, ...] = (name,)
            text = _json_texts([parts[pos][2]])[0]
        else:
            item = pb.SummaryItem()
            try:
                item.ParseFromString(updates[pos])
            except Exception:  # noqa: BLE001
                continue
            key = _item_key(item)
            text = _item_json(item).encode()
        if key in removed or key[0] == "_wandb":
            continue
        try:
            value = _loads(text)
        except ValueError:
            value = text.decode("utf-8", "replace")
        _nest(result, key, value)
    return result
