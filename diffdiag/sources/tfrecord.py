"""TFRecord framing (TensorBoard event files), every record's two CRCs checked.

A TFRecord file is a sequence of records::

    uint64  length                      little-endian
    uint32  masked_crc32c(length)       the 8 length bytes
    byte    data[length]
    uint32  masked_crc32c(data)

``masked_crc32c(x) = ((c >> 15 | c << 17) + 0xa282ead8) mod 2**32`` with ``c`` the
CRC-32C (Castagnoli) of ``x``. :func:`scan_records` walks the frames of a whole file
(memory-mapped, so a large file costs no memory), checks the CRCs, skips a record whose
data CRC fails (its length is trusted: its own CRC held), and after a length whose CRC
fails searches forward for the next valid frame, so the records behind damage are read too.

CRC-32C comes from ``google-crc32c`` when it is installed (C, ~GB/s); otherwise a
table-driven numpy implementation checks many short records at once (scalar events:
~100 bytes each), and plain Python takes the rare long ones.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..safeio import open_regular


def _table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(0x82F63B78), t >> 1).astype(np.uint32)
    return t


_TABLE = _table()
_TABLE_LIST = _TABLE.tolist()
_MASK_DELTA = 0xA282EAD8
_LONG = 4096  # records longer than this are not batched in the numpy fallback
#: reading stops after this many damaged places (each one costs a search for the next frame)
MAX_DAMAGE = 1000

try:  # pragma: no cover - depends on the environment
    import google_crc32c as _g

    _crc_c = _g.value if getattr(_g, "implementation", "") == "c" else None
except ImportError:  # pragma: no cover
    _crc_c = None


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    if _crc_c is not None:
        return int(_crc_c(bytes(data)))
    return _crc32c_py(data)


def _crc32c_py(data: bytes | bytearray | memoryview) -> int:
    crc = 0xFFFFFFFF
    t = _TABLE_LIST
    for b in bytes(data):
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask(crc: int | np.ndarray) -> int | np.ndarray:
    """TFRecord's masking of a CRC (scalar or uint32 array)."""
    if isinstance(crc, np.ndarray):
        c = crc.astype(np.uint64)
        return ((((c >> np.uint64(15)) | (c << np.uint64(17))) + np.uint64(_MASK_DELTA))
                & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    return mask(crc32c(data))  # type: ignore[return-value]


def crc32c_many(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC-32C of many byte ranges ``buf[starts[i] : starts[i] + lengths[i]]``.

    Parameters
    ----------
    buf : ndarray of uint8, shape (n_bytes,)
    starts, lengths : ndarray of int64, shape (n,)

    Returns
    -------
    ndarray of uint32, shape (n,)
    """
    n = len(starts)
    out = np.empty(n, dtype=np.uint32)
    if n == 0:
        return out
    if _crc_c is not None:
        raw = memoryview(buf)
        for i, (a, ln) in enumerate(zip(starts.tolist(), lengths.tolist())):
            out[i] = _crc_c(bytes(raw[a:a + ln]))
        return out
    order = np.argsort(lengths, kind="stable")
    ls = lengths[order]
    i = 0
    while i < n:
        lo = int(ls[i])
        if lo > _LONG:
            raw = memoryview(buf)
            for k in order[i:].tolist():
                a = int(starts[k])
                out[k] = _crc32c_py(raw[a:a + int(lengths[k])])
            break
        j = int(np.searchsorted(ls, lo + max(16, lo >> 3), side="right"))
        idx = order[i:j]
        out[idx] = _crc_group(buf, starts[idx], lengths[idx])
        i = j
    return out


def _crc_group(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC-32C of byte ranges of similar length, one numpy step per byte position."""
    width = int(lengths.max())
    lo = int(lengths.min())
    last = len(buf) - 1
    crc = np.full(len(starts), 0xFFFFFFFF, dtype=np.uint32)
    table = _TABLE
    eight, low = np.uint32(8), np.uint32(0xFF)
    for k in range(width):
        at = starts + k
        byte = buf[at if k < lo else np.minimum(at, last)]
        nxt = table[(crc ^ byte) & low] ^ (crc >> eight)
        crc = nxt if k < lo else np.where(lengths > k, nxt, crc)
    return crc ^ np.uint32(0xFFFFFFFF)


@dataclass
class RecordScan:
    """The frames of one TFRecord file.

    Attributes
    ----------
    offsets, lengths : ndarray of int64, shape (n_good,)
        Byte offset of each good record's frame and its data length (data starts at
        ``offset + 12``).
    size : int
        File size in bytes.
    damage : list of (int, str)
        ``(byte offset, what is wrong)`` for each damaged spot, in file order.
    skipped_bytes : int
        Bytes not read as good records.
    """

    offsets: np.ndarray
    lengths: np.ndarray
    size: int
    damage: list[tuple[int, str]] = field(default_factory=list)
    skipped_bytes: int = 0


def _u32(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (buf[at].astype(np.uint32) | (buf[at + 1].astype(np.uint32) << np.uint32(8))
            | (buf[at + 2].astype(np.uint32) << np.uint32(16)) | (buf[at + 3].astype(np.uint32) << np.uint32(24)))


def _walk(buf: np.ndarray, mv: memoryview, pos: int, size: int) -> tuple[list[int], list[int], int]:
    """Follow the length fields from ``pos``; return offsets, lengths and where it stopped."""
    offs: list[int] = []
    lens: list[int] = []
    unpack = struct.Struct("<Q").unpack_from
    while pos + 16 <= size:
        (length,) = unpack(mv, pos)
        end = pos + 16 + length
        if end > size:
            break
        offs.append(pos)
        lens.append(length)
        pos = end
    return offs, lens, pos


def _header_ok(buf: np.ndarray, offs: np.ndarray) -> np.ndarray:
    heads = _crc_group(buf, offs, np.full(len(offs), 8, dtype=np.int64)) if len(offs) else np.zeros(0, np.uint32)
    return mask(heads) == _u32(buf, offs + 8)


def _data_ok(buf: np.ndarray, offs: np.ndarray, lens: np.ndarray) -> np.ndarray:
    got = mask(crc32c_many(buf, offs + 12, lens))
    return got == _u32(buf, offs + 12 + lens)


def _resync(buf: np.ndarray, start: int, size: int) -> int | None:
    """The first offset at or after ``start`` where a whole, valid frame begins (length CRC and
    data CRC both hold), searched 4 MiB at a time; None when there is none."""
    step = 4 << 10  # small first (the next frame is usually close), doubling up to 4 MiB
    a = start
    while a + 16 <= size:
        b = min(size - 16 + 1, a + step)
        step = min(step * 2, 4 << 20)
        cand = np.arange(a, b, dtype=np.int64)
        ok = np.flatnonzero(_header_ok(buf, cand))
        for k in ok.tolist():
            p = a + k
            length = int(buf[p:p + 8].view("<u8")[0])
            if p + 16 + length <= size and _data_ok(buf, np.array([p]), np.array([length], dtype=np.int64))[0]:
                return p
        a = b
    return None


class RecordFile:
    """A TFRecord file opened for reading: ``scan`` holds its checked frames; iterating gives
    ``(offset, data)`` for each good record. Use it as a context manager (the file is
    memory-mapped until the block ends).

    Raises
    ------
    InputError
        The file is not a regular file or cannot be opened.
    """

    def __init__(self, path: str | Path) -> None:
        self._mm: mmap.mmap | None = None
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        if self._mm is None:
            self.scan = RecordScan(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
            return
        buf = np.frombuffer(self._mm, dtype=np.uint8)
        mv = memoryview(self._mm)
        try:
            self.scan = _scan(buf, mv, size)
        finally:
            mv.release()
            del buf

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        mm = self._mm
        if mm is None:
            return
        for off, ln in zip(self.scan.offsets.tolist(), self.scan.lengths.tolist()):
            yield off, mm[off + 12:off + 12 + ln]

    def payload(self, offset: int, length: int) -> bytes:
        """The data of the good record whose frame starts at ``offset`` (an offset from ``scan``)."""
        if self._mm is None:
            raise ValueError("the file is closed or empty")
        return self._mm[offset + 12:offset + 12 + length]

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # pragma: no cover - a view still alive; the GC closes it
                pass
            self._mm = None

    def __enter__(self) -> "RecordFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scan_records(path: str | Path) -> RecordScan:
    """Find and check every record frame of a TFRecord file (see :class:`RecordFile`)."""
    with RecordFile(path) as rf:
        return rf.scan


def _scan(buf: np.ndarray, mv: memoryview, size: int) -> RecordScan:
    good_offs: list[np.ndarray] = []
    good_lens: list[np.ndarray] = []
    damage: list[tuple[int, str]] = []
    pos = 0
    while pos < size:
        offs_l, lens_l, stop = _walk(buf, mv, pos, size)
        offs = np.asarray(offs_l, dtype=np.int64)
        lens = np.asarray(lens_l, dtype=np.int64)
        head = _header_ok(buf, offs)
        bad_head = np.flatnonzero(~head)
        if len(bad_head):  # a length that fails its CRC: what follows it was found by a wrong length
            cut = int(bad_head[0])
            stop = int(offs[cut])
            offs, lens = offs[:cut], lens[:cut]
            problem = "a record's length fails its CRC check"
        elif stop < size:
            tail_ok = stop + 12 <= size and bool(_header_ok(buf, np.array([stop], dtype=np.int64))[0])
            problem = "the file ends inside a record (truncated)" if tail_ok or stop + 12 > size else \
                "a record's length fails its CRC check"
        else:
            problem = ""
        data = _data_ok(buf, offs, lens)
        for k in np.flatnonzero(~data).tolist():
            damage.append((int(offs[k]), "a record's data fails its CRC check"))
        good_offs.append(offs[data])
        good_lens.append(lens[data])
        if not problem:
            break
        damage.append((stop, problem))
        if problem.startswith("the file ends"):
            break
        if len(damage) >= MAX_DAMAGE:
            damage.append((stop, f"more than {MAX_DAMAGE} damaged places; stopped reading"))
            break
        nxt = _resync(buf, stop + 1, size)
        if nxt is None:
            break
        pos = nxt
    damage.sort()
    offs = np.concatenate(good_offs) if good_offs else np.zeros(0, np.int64)
    lens = np.concatenate(good_lens) if good_lens else np.zeros(0, np.int64)
    skipped = size - int((lens + 16).sum())
    return RecordScan(offs, lens, size, damage, skipped)
