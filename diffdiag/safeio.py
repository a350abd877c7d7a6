"""Reading files other programs wrote, safely (docs/CONTRACT.md §1, hostile input).

Small helpers every reader uses:

* :func:`quote` — the offending value in an error message, at most ~200 characters;
* :func:`require_regular_file` / :func:`open_regular` — FIFOs, devices, sockets and
  directories are refused from ``os.stat`` alone, before anything opens them for reading;
* :func:`scan_text_file` — a streaming pass over a text log that rejects NUL bytes,
  bytes that are not UTF-8 and over-long lines, and finds lines that may nest deeply,
  in bounded memory;
* :func:`quiet` — library warnings (numpy overflow, pandas dtype guesses) stay off stderr.
"""

from __future__ import annotations

import codecs
import os
import reprlib
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from .errors import InputError

#: the longest line a text log (CSV, JSONL) may have, in bytes
MAX_LINE_BYTES = 4 << 20
#: the deepest bracket nesting a JSON line may have
MAX_JSON_DEPTH = 64
_CHUNK = 8 << 20

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 12
_REPR.maxlevel = 4


def quote(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to about ``limit`` characters, on one line.

    Strings and bytes are cut before ``repr`` (a 60 MB cell costs nothing) and say how long
    they were; control characters come out escaped, so the result never breaks a line.

    Parameters
    ----------
    value : object
        What a file held (a cell, a key, a JSON value, ...).
    limit : int
        Characters of the value to show.

    Returns
    -------
    str
        E.g. ``'abc'`` or ``'aaaa…' (67108864 characters)``.
    """
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value[:limit])
        if len(text) > limit + 3:  # escapes made it longer
            text = text[:limit] + "…"
        if len(value) <= limit and not text.endswith("…"):
            return text
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{text}{'' if text.endswith('…') else '…'} ({len(value)} {unit})"
    text = _REPR.repr(value)
    return text if len(text) <= limit + 20 else text[:limit] + "…"


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def require_regular_file(path: str | os.PathLike[str]) -> Path:
    """Return ``Path(path)`` when it is a regular file (symlinks followed), else raise.

    Only ``os.stat`` looks at it: a FIFO, device or socket is never opened, so it can
    neither block nor be consumed.

    Raises
    ------
    InputError
        Naming the path: it does not exist, cannot be examined, or is a directory, a named
        pipe, a device or a socket.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError("does not exist", p) from None
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or type(exc).__name__})", p) from None
    kind = _not_regular(st.st_mode)
    if kind is not None:
        raise InputError(f"is {kind}, not a regular file; refused without reading it", p)
    return p


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for binary reading, refusing anything else.

    :func:`require_regular_file` first, then the file is opened non-blocking and checked
    again with ``fstat`` (the path may have been swapped for a FIFO in between).

    Raises
    ------
    InputError
        As :func:`require_regular_file`, or the file cannot be opened.
    """
    p = require_regular_file(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise InputError(f"cannot be opened ({exc.strerror or type(exc).__name__})", p) from None
    try:
        kind = _not_regular(os.fstat(fd).st_mode)
        if kind is not None:
            raise InputError(f"is {kind}, not a regular file; refused without reading it", p)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def quiet() -> Iterator[None]:
    """Silence library warnings (``warnings`` and numpy floating-point errors) inside the block."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def scan_text_file(path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES,
                   max_openers: int | None = None, utf8: bool = True) -> list[int]:
    """Check a text log in one streaming pass (8 MiB at a time, bounded memory).

    Parameters
    ----------
    path : str or PathLike
    max_line_bytes : int
        A longer line is an error.
    max_openers : int, optional
        Report the lines holding more than this many ``[``/``{`` (only those can nest
        deeper than ``max_openers``; the caller checks them exactly).
    utf8 : bool
        Refuse bytes that are not UTF-8 (False: the caller decodes line by line itself).

    Returns
    -------
    list of int
        1-based numbers of the lines with more than ``max_openers`` openers (empty when
        ``max_openers`` is None).

    Raises
    ------
    InputError
        Naming the file, the line and the byte offset: a NUL byte, bytes that are not UTF-8,
        or a line longer than ``max_line_bytes``; not a regular file.
    """
    p = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    many: list[int] = []
    pos = 0           # file offset of the chunk
    line_no = 1       # number of the line the chunk starts in
    line_len = 0      # bytes of that line before the chunk
    openers = 0       # its openers before the chunk
    with open_regular(p) as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            nul = chunk.find(b"\0")
            if nul >= 0:
                line = line_no + chunk.count(b"\n", 0, nul)
                raise InputError(f"holds a NUL byte at byte {pos + nul} (line {line}): not a text log", p)
            pending = len(decoder.getstate()[0])
            try:
                if utf8:
                    decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                at = max(0, exc.start - pending)
                line = line_no + chunk.count(b"\n", 0, at)
                raise InputError(f"line {line} is not UTF-8 text (byte {chunk[at]:#04x} at byte {pos + at})",
                                 p) from None
            arr = np.frombuffer(chunk, dtype=np.uint8)
            nl = np.flatnonzero(arr == 10)
            ends = np.append(nl, len(chunk))  # each line's end in the chunk (the last one still open)
            starts = np.concatenate(([0], nl + 1))
            lens = ends - starts
            lens[0] += line_len
            if lens.max() > max_line_bytes:
                i = int(np.argmax(lens > max_line_bytes))
                start = pos + int(starts[i]) - (line_len if i == 0 else 0)
                cap = f"{max_line_bytes >> 20} MiB" if max_line_bytes >= 1 << 20 else f"{max_line_bytes} bytes"
                raise InputError(f"line {line_no + i} (from byte {start}) is longer than {cap}: not a training log", p)
            if max_openers is not None:
                at = np.flatnonzero((arr == 0x5B) | (arr == 0x7B))
                counts = np.bincount(np.searchsorted(nl, at), minlength=len(ends))
                counts[0] += openers
                many.extend((line_no + np.flatnonzero(counts > max_openers)[:1000]).tolist())
                openers = int(counts[-1])
            line_len = int(lens[-1])
            if len(nl):
                line_no += len(nl)
            pos += len(chunk)
        try:
            if utf8:
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InputError(f"line {line_no} is not UTF-8 text (the file ends inside a character)", p) from None
    # a line that spans chunks was counted once per chunk: keep each number once, in order
    return list(dict.fromkeys(many))
