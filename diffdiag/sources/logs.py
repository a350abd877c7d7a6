"""Training-log source: TensorBoard event files, CSV and JSONL (docs/CONTRACT.md §2).

:func:`load_logs` reads one file or a directory (searched recursively, files
merged); :func:`detect_keys` and :func:`build_runlog` hold the key
auto-detection that the tracker sources (W&B, MLflow) share.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import InputError
from ..model import RunLog, Series
from ..safeio import MAX_JSON_DEPTH, MAX_LINE_BYTES, open_regular, quiet, quote, require_regular_file, scan_text_file

#: role -> names the common trainers write, in priority order (docs/CONTRACT.md §2)
KEY_NAMES: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "train_loss", "step_loss", "loss/current", "loss/train_step", "train/loss",
             "train/loss_step", "train_loss_step", "loss_step", "training/loss"),
    "ema": ("ema_loss", "loss_ema", "smooth_loss/train_step", "loss/average", "avr_loss", "loss/avg",
            "train/loss_ema", "train/ema_loss", "smoothed_loss", "loss/smooth"),
    "lr": ("lr", "learning_rate", "lr/unet", "train/lr", "train/learning_rate"),
    "grad_norm": ("grad_norm", "norm/avg_grad_norm", "train/grad_norm", "gradient_norm", "grad_norm/total",
                  "train/gradient_norm"),
}
LIST_FIELDS = ("sample_ids", "timesteps")
STEP_NAMES = ("step", "global_step", "_step", "Step", "iteration", "iter")
_SMOOTH = re.compile(r"(ema|smooth|avg|average|avr|mean|running)", re.I)
_NOT_TRAIN = re.compile(r"(val|valid|eval|test)", re.I)


# --------------------------------------------------------------------------- key detection

def detect_keys(keys: Iterable[str], loss_key: str | None = None, ema_key: str | None = None,
                lr_key: str | None = None, grad_norm_key: str | None = None) -> dict[str, str | None]:
    """Pick the loss, smoothed/EMA loss, learning-rate and gradient-norm keys.

    Named keys (the ``--*-key`` flags) win and must exist; otherwise the names of
    :data:`KEY_NAMES` are tried in order, then patterns: ``lr/*`` or ``lr-*`` for the LR,
    a training (not validation) key containing ``loss`` for the loss, and one that also
    says ema/smooth/avg for the EMA.

    Returns
    -------
    dict
        ``{"loss": key|None, "ema": ..., "lr": ..., "grad_norm": ...}``.

    Raises
    ------
    InputError
        A named key is not among ``keys``.
    """
    ks = list(dict.fromkeys(keys))
    present = set(ks)
    out: dict[str, str | None] = {}
    for role, given in (("loss", loss_key), ("ema", ema_key), ("lr", lr_key), ("grad_norm", grad_norm_key)):
        if given:
            if given not in present:
                flag = "--grad-norm-key" if role == "grad_norm" else f"--{role}-key"
                raise InputError(f"{flag} {given!r} is not among the logged keys: {_key_list(ks)}")
            out[role] = given
        else:
            out[role] = next((n for n in KEY_NAMES[role] if n in present), None)
    if out["loss"] is None:
        cands = [k for k in ks if "loss" in k.lower() and not _NOT_TRAIN.search(k) and not _SMOOTH.search(k)
                 and k != out["ema"]]
        out["loss"] = min(cands, key=len) if cands else None
    if out["ema"] is None:
        cands = [k for k in ks if "loss" in k.lower() and _SMOOTH.search(k) and not _NOT_TRAIN.search(k)
                 and k != out["loss"]]
        out["ema"] = min(cands, key=len) if cands else None
    if out["lr"] is None:
        cands = sorted(k for k in ks if k.startswith("lr/") or k.startswith("lr-") or k.startswith("lr_"))
        cands.sort(key=lambda k: (0 if "unet" in k or "transformer" in k else 1, k))
        out["lr"] = cands[0] if cands else None
    if out["grad_norm"] is None:
        cands = [k for k in ks if re.search(r"grad.*norm|norm.*grad", k, re.I)]
        out["grad_norm"] = min(cands, key=len) if cands else None
    if out["ema"] == out["loss"]:
        out["ema"] = None
    return out


def _key_list(keys: list[str], limit: int = 25) -> str:
    """Keys for a message: quoted, at most ``limit`` of them and about 150 characters."""
    if not keys:
        return "(none)"
    shown: list[str] = []
    width = 0
    for k in sorted(keys)[:limit]:
        q = quote(k, 40)
        if shown and width + len(q) > 150:
            break
        shown.append(q)
        width += len(q) + 2
    rest = len(keys) - len(shown)
    return ", ".join(shown) + (f" and {rest} more" if rest else "")


def build_runlog(scalars: dict[str, Series], sample_ids: dict[int, list[str]] | None = None,
                 timesteps: dict[int, np.ndarray] | None = None, *, loss_key: str | None = None,
                 ema_key: str | None = None, lr_key: str | None = None, grad_norm_key: str | None = None,
                 sources: list[str] | None = None, source: str | None = None) -> RunLog:
    """Assemble a :class:`RunLog` and detect the role keys.

    Parameters
    ----------
    scalars : dict of str to Series
    sample_ids, timesteps : dict of step to list / ndarray, optional
    loss_key, ema_key, lr_key, grad_norm_key : str, optional
        Overrides (the ``--*-key`` flags).
    sources : list of str, optional
        Files read (for messages and ``RunLog.sources``).
    source : str, optional
        What to name in an error (a file or run).

    Raises
    ------
    InputError
        No loss key was found (the message lists the keys that exist and suggests ``--loss-key``),
        or a named key does not exist.
    """
    where = source or (sources[0] if sources and len(sources) == 1 else None)
    try:
        roles = detect_keys(scalars.keys(), loss_key, ema_key, lr_key, grad_norm_key)
    except InputError as exc:
        raise InputError(exc.message, where) from None
    if roles["loss"] is None:
        raise InputError(f"no loss key found; the logged keys are {_key_list(list(scalars))} "
                         f"- name the loss with --loss-key", where)
    return RunLog(scalars=dict(scalars), sample_ids=dict(sample_ids or {}), timesteps=dict(timesteps or {}),
                  loss_key=roles["loss"], ema_key=roles["ema"], lr_key=roles["lr"],
                  grad_norm_key=roles["grad_norm"], sources=list(sources or ([source] if source else [])))


# --------------------------------------------------------------------------- readers

#: most columns a CSV log may have
MAX_COLUMNS = 10_000
#: a JSONL file up to this size is parsed whole (column-wise fast paths); larger ones line by line
FAST_JSONL_BYTES = 256 << 20
_INT64_LIMIT = 2.0 ** 63


class _Table:
    """Columns read from one file: step -> values per key, plus list fields.

    ``problem`` is set when part of the file could not be read (the rest is here): one
    sentence for the caller to report, naming the byte offset or line.
    """

    def __init__(self) -> None:
        self.scalars: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.sample_ids: dict[int, list[str]] = {}
        self.timesteps: dict[int, np.ndarray] = {}
        self.text_columns: list[str] = []
        self.hparams: dict[str, Any] = {}
        self.images: list[Any] = []  # EncodedImage (diffdiag.sources.samples) from TensorBoard image summaries
        self.problem: str | None = None


def _split_list(cell: Any) -> list[str]:
    if cell is None:
        return []
    if isinstance(cell, (list, tuple)):
        return [str(c) for c in cell]
    if isinstance(cell, float) and cell != cell:
        return []
    text = str(cell).strip().strip("[]")
    return [t.strip().strip("'\"") for t in re.split(r"[;\s,]+", text) if t.strip().strip("'\"")]


def _timesteps_array(items: list[Any]) -> np.ndarray:
    try:
        return np.asarray([float(t) for t in items], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return np.empty(0)


def _step_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a step (None when it can): not a number, not finite, beyond int64."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"is not a number ({quote(value, 80)})"
    if isinstance(value, int):
        return None if -(2 ** 63) <= value < 2 ** 63 else f"{quote(value, 40)} is beyond the int64 range"
    if value != value or value in (float("inf"), float("-inf")):
        return f"is not finite ({value})"
    return None if -_INT64_LIMIT <= value < _INT64_LIMIT else f"{value:g} is beyond the int64 range"


def _steps_in_range(st: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(st)) and np.all(np.abs(st) < _INT64_LIMIT))


def read_csv(path: Path) -> _Table:
    """Read a CSV log with a header (C parser; a 1M-row file takes about a second).

    The file is first streamed once (:func:`diffdiag.safeio.scan_text_file`): NUL bytes,
    bytes that are not UTF-8, lines over 4 MiB and more than :data:`MAX_COLUMNS` columns
    are refused before pandas sees it, so a hostile file cannot exhaust memory.
    """
    import pandas as pd

    scan_text_file(path)
    with open_regular(path) as fh:
        header = fh.readline(MAX_LINE_BYTES + 1)
    n_cols = header.count(b",") + 1
    if n_cols > MAX_COLUMNS:
        raise InputError(f"the CSV header has {n_cols} columns; at most {MAX_COLUMNS} are read", path)
    try:
        with open_regular(path) as fh, quiet():
            df = pd.read_csv(fh, low_memory=False, skipinitialspace=True, keep_default_na=False, na_values=[""],
                             encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise InputError("the CSV file is empty (expected a header and one row per step)", path) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OverflowError) as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"not a readable CSV file ({msg[:200]})", path) from None
    if df.shape[0] == 0:
        raise InputError("the CSV file has a header but no rows", path)
    with quiet():
        return _csv_table(df, path)


def _csv_table(df: Any, path: Path) -> _Table:
    import pandas as pd

    df.columns = [str(c).strip() for c in df.columns]
    tab = _Table()
    step_col = next((c for c in STEP_NAMES if c in df.columns), None)
    if step_col is not None:
        steps_f = pd.to_numeric(df[step_col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(steps_f) | (np.abs(steps_f) >= _INT64_LIMIT)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            cell = df[step_col].iloc[row]
            shown = repr(float(cell)) if isinstance(cell, (float, np.floating)) else quote(cell, 80)
            why = "is beyond the int64 range" if np.isfinite(steps_f[row]) else "is not a finite whole number"
            raise InputError(f"column {quote(step_col, 60)} {why} in data row {row + 1} ({shown})", path)
        steps = steps_f.astype(np.int64)
    else:
        steps = np.arange(df.shape[0], dtype=np.int64)
    text_cols = []
    for col in df.columns:
        if col == step_col or col.startswith("Unnamed: "):
            continue
        if col in LIST_FIELDS:
            continue
        s = df[col]
        if s.dtype.kind in "fiub":  # empty cells (a key not logged at that step) are absent
            vals = s.to_numpy(dtype=np.float64)
            present = ~np.isnan(vals)
            if present.any():
                tab.scalars[col] = (steps[present], vals[present])
            continue
        else:
            vals = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
            raw_missing = s.isna().to_numpy()
            bad = np.isnan(vals) & ~raw_missing
            if bad.any():  # 'nan', 'NaN', 'null' ... are non-finite data, not garbage
                tok = s[bad].astype(str).str.strip().str.lower().str.lstrip("+-")
                bad[bad] = ~tok.isin(("nan", "null", "none", "na", "n/a")).to_numpy()
            if bad.any():
                if bad.sum() == (~raw_missing).sum():  # a text column (e.g. a tag): not a scalar
                    text_cols.append(col)
                    continue
                row = int(np.flatnonzero(bad)[0])
                raise InputError(f"column {quote(col, 60)} has a non-numeric value {quote(s.iloc[row], 80)} "
                                 f"in data row {row + 1}", path)
            if raw_missing.all():
                continue
        present = ~raw_missing  # 'nan'/'inf' written as text are data
        tab.scalars[col] = (steps[present], vals[present])
    if not tab.scalars and text_cols:
        raise InputError(f"no numeric columns (non-numeric: {_key_list(text_cols, 10)})", path)
    tab.text_columns = text_cols
    if "sample_ids" in df.columns:
        for st, cell in zip(steps.tolist(), df["sample_ids"].tolist()):
            ids = _split_list(cell)
            if ids:
                tab.sample_ids[int(st)] = ids
    if "timesteps" in df.columns:
        for st, cell in zip(steps.tolist(), df["timesteps"].tolist()):
            ts = _timesteps_array(_split_list(cell))
            if ts.size:
                tab.timesteps[int(st)] = ts
    return tab


def _flatten(obj: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, key + "/")
        else:
            yield key, v


def read_jsonl(path: Path) -> _Table:
    """Read a JSONL log: one JSON object per line with ``step`` (NaN/Infinity allowed).

    The file is streamed once first (:func:`diffdiag.safeio.scan_text_file`): NUL bytes and
    lines over 4 MiB are refused, and lines holding more than
    :data:`~diffdiag.safeio.MAX_JSON_DEPTH` brackets are noted — only those can nest deeper,
    and only files without them reach the fast parsers (pyarrow's reader crashes the process
    on deep nesting). Fast paths then: pyarrow's JSON reader (if installed; files without
    NaN/Infinity literals), else the whole file parsed in one ``json.loads`` call (its lines
    joined into a JSON array) with columns gathered per key. A file that fails there (a bad
    line, bytes that are not UTF-8, nested objects, a step that is not a finite int64) is read
    line by line, which skips and names the offending lines.
    """
    deep = scan_text_file(path, max_openers=MAX_JSON_DEPTH, utf8=False)
    if not deep and path.stat().st_size <= FAST_JSONL_BYTES:
        with open_regular(path) as fh:
            try:
                text = fh.read().decode("utf-8")
            except UnicodeDecodeError:  # the line reader names the line and reads the others
                return _read_jsonl_lines(path)
        with quiet():
            tab = _read_jsonl_arrow(path) if "NaN" not in text and "Infinity" not in text else None
            if tab is None:
                tab = _read_jsonl_fast(text)
        if tab is not None:
            return tab
    return _read_jsonl_lines(path, deep=frozenset(deep))


_NUMERIC = {int, float, type(None)}


def _read_jsonl_arrow(path: Path) -> _Table | None:
    """Column-wise read with pyarrow's C++ JSON reader (when pyarrow is installed), for flat records
    without NaN/Infinity literals; None to fall back to the pure-Python readers."""
    try:
        import pyarrow as pa
        from pyarrow import json as pj
    except ImportError:
        return None
    try:
        t = pj.read_json(str(path), read_options=pj.ReadOptions(block_size=1 << 24))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError):
        return None
    n = t.num_rows
    if n == 0:
        return None
    names = t.column_names
    step_key = next((k for k in STEP_NAMES if k in names), None)
    if step_key is not None:
        col = t.column(step_key)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) or col.null_count:
            return None
        stf = col.to_numpy().astype(np.float64)
        if not _steps_in_range(stf):
            return None  # the line reader names the line
        steps = stf.astype(np.int64)
    else:
        steps = np.arange(n, dtype=np.int64)
    tab = _Table()
    for key in names:
        if key in STEP_NAMES:
            continue
        col = t.column(key)
        typ = col.type
        if pa.types.is_struct(typ):
            return None  # nested objects: the line reader flattens them
        if key in LIST_FIELDS:
            items = col.to_pylist()
            for st_, v in zip(steps.tolist(), items):
                if key == "sample_ids":
                    ids = _split_list(v)
                    if ids:
                        tab.sample_ids[st_] = ids
                else:
                    ts = _timesteps_array(_split_list(v))
                    if ts.size:
                        tab.timesteps[st_] = ts
            continue
        if pa.types.is_integer(typ) or pa.types.is_floating(typ):
            present = ~col.is_null().to_numpy(zero_copy_only=False)
            if present.any():
                vals = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
                tab.scalars[key] = (steps[present], np.asarray(vals, np.float64)[present])
            continue
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            ks, vs = [], []
            for st_, v in zip(steps.tolist(), col.to_pylist()):
                if v is None:
                    continue
                try:
                    vs.append(float(v))
                    ks.append(st_)
                except ValueError:
                    continue
            if ks:
                tab.scalars[key] = (np.asarray(ks, np.int64), np.asarray(vs, np.float64))
        # booleans, lists and nulls only: not scalars
    return tab


def _read_jsonl_fast(text: str) -> _Table | None:
    """Column-wise read of flat JSONL records; None when the slow, line-by-line path must decide."""
    try:
        return _read_jsonl_columns(text)
    except (OverflowError, ValueError, TypeError):  # an integer beyond float range, ...
        return None


def _read_jsonl_columns(text: str) -> _Table | None:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        objs = json.loads("[" + ",".join(lines) + "]")
    except (json.JSONDecodeError, RecursionError):
        return None
    if not all(type(o) is dict for o in objs):
        return None
    n = len(objs)
    keys = list(dict.fromkeys(k for o in objs[:: max(1, n // 1000)] for k in o))
    keys_all = set().union(*(o.keys() for o in objs)) if n <= 1000 else None
    if keys_all is None:
        keys_all = set()
        for o in objs:
            keys_all.update(o)
    keys += [k for k in keys_all if k not in keys]
    step_key = next((k for k in STEP_NAMES if k in keys_all), None)
    if step_key is not None:
        raw = [o.get(step_key) for o in objs]
        if not set(map(type, raw)) <= {int, float}:
            return None  # missing or non-numeric steps: the line reader reports them
        st = np.asarray(raw, dtype=np.float64)
        if not _steps_in_range(st):
            return None
        steps = st.astype(np.int64)
    else:
        steps = np.arange(n, dtype=np.int64)
    tab = _Table()
    for key in keys:
        if key in STEP_NAMES:
            continue
        col = [o.get(key) for o in objs]
        types = set(map(type, col))
        if dict in types:
            return None
        if key == "sample_ids":
            for st_, v in zip(steps.tolist(), col):
                ids = _split_list(v)
                if ids:
                    tab.sample_ids[st_] = ids
            continue
        if key == "timesteps":
            for st_, v in zip(steps.tolist(), col):
                ts = _timesteps_array(_split_list(v))
                if ts.size:
                    tab.timesteps[st_] = ts
            continue
        if types <= _NUMERIC:
            present = np.fromiter((v is not None for v in col), dtype=bool, count=n)
            if not present.any():
                continue
            vals = np.asarray(col, dtype=np.float64) if present.all() else \
                np.asarray([v for v in col if v is not None], dtype=np.float64)
            tab.scalars[key] = (steps[present], vals)
            continue
        ks, vs = [], []  # mixed types: numbers and numeric strings count, the rest is skipped
        for st_, v in zip(steps.tolist(), col):
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    continue
            if isinstance(v, (int, float)):
                ks.append(st_)
                vs.append(float(v))
        if ks:
            tab.scalars[key] = (np.asarray(ks, np.int64), np.asarray(vs, np.float64))
    return tab


def _json_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text, brackets inside strings excluded.

    Vectorised, no recursion and no parsing: a quote preceded by an odd run of backslashes
    is escaped; brackets between unescaped quotes do not count.
    """
    arr = np.frombuffer(text.encode("utf-8", "replace"), dtype=np.uint8)
    if arr.size == 0:
        return 0
    idx = np.arange(arr.size, dtype=np.int32)
    last_plain = np.maximum.accumulate(np.where(arr == 0x5C, np.int32(-1), idx))
    run = np.zeros(arr.size, dtype=np.int32)  # backslashes right before each byte
    run[1:] = idx[:-1] - last_plain[:-1]
    quotes = (arr == 0x22) & ((run & 1) == 0)
    outside = (np.cumsum(quotes, dtype=np.int32) & 1) == 0
    step = (((arr == 0x5B) | (arr == 0x7B)).astype(np.int32) - ((arr == 0x5D) | (arr == 0x7D))) * outside
    return int(np.cumsum(step, dtype=np.int32).max(initial=0))


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond float range
        return float("inf") if v > 0 else float("-inf")


def _read_jsonl_lines(path: Path, *, deep: frozenset[int] = frozenset()) -> _Table:
    """Line-by-line JSONL reader (nested objects flattened to ``a/b`` keys; exact line numbers in errors).

    A line that is not UTF-8, not valid JSON, nests deeper than
    :data:`~diffdiag.safeio.MAX_JSON_DEPTH`, is not an object or has a step that is not a
    finite int64 is skipped; the first one is named in ``_Table.problem``.

    Parameters
    ----------
    deep : frozenset of int
        Lines (1-based) whose nesting must be measured before they are parsed.

    Raises
    ------
    InputError
        No line could be read (naming the first bad line) or the file holds no records.
    """
    from array import array

    tab = _Table()
    cols: dict[str, tuple[array, array]] = {}
    n = 0
    first_bad: str | None = None
    n_bad = 0
    with open_regular(path) as fh, quiet():
        lineno = 0
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise InputError(f"line {lineno} is longer than {MAX_LINE_BYTES >> 20} MiB: not a training log", path)
            problem = None
            obj: Any = None
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                text = None
                problem = f"line {lineno} is not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
            if text == "":
                continue
            if problem is None and lineno in deep and _json_depth(text) > MAX_JSON_DEPTH:
                problem = f"line {lineno} nests brackets deeper than {MAX_JSON_DEPTH} levels"
            if problem is None:
                try:
                    obj = json.loads(text)
                except ValueError as exc:
                    why = getattr(exc, "msg", None) or quote(str(exc), 80)
                    problem = f"line {lineno} is not valid JSON ({why})"
                except RecursionError:
                    problem = f"line {lineno} nests brackets too deeply"
            if problem is None and not isinstance(obj, dict):
                problem = f"line {lineno} is not a JSON object"
            if problem is None:
                step_key = next((k for k in STEP_NAMES if k in obj), None)
                step = obj[step_key] if step_key else n
                why = _step_problem(step)
                if why is not None:
                    problem = f"line {lineno}: {quote(step_key, 40)} {why}"
            if problem is not None:
                n_bad += 1
                first_bad = first_bad or problem
                continue
            step = int(step)
            n += 1
            for key, v in _flatten(obj):
                if key in STEP_NAMES:
                    continue
                if key == "sample_ids":
                    ids = _split_list(v)
                    if ids:
                        tab.sample_ids[step] = ids
                    continue
                if key == "timesteps":
                    ts = _timesteps_array(_split_list(v))
                    if ts.size:
                        tab.timesteps[step] = ts
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    if v is None:  # null: not logged at this step
                        continue
                    if isinstance(v, str):
                        try:
                            v = float(v)
                        except ValueError:
                            continue
                    else:
                        continue
                c = cols.get(key)
                if c is None:
                    c = cols[key] = (array("q"), array("d"))
                c[0].append(step)
                c[1].append(_as_float(v))
    if n == 0:
        raise InputError(first_bad or "the JSONL file has no records", path)
    if first_bad:
        others = f" and {n_bad - 1} other bad line{'s' if n_bad > 2 else ''}" if n_bad > 1 else ""
        tab.problem = f"{first_bad}; skipped it{others} and read the other {n} records"
    for k, (st, vals) in cols.items():
        tab.scalars[k] = (np.frombuffer(st, dtype=np.int64).copy(), np.frombuffer(vals, dtype=np.float64).copy())
    return tab


#: TensorFlow DataType -> (TensorProto field for one value, numpy dtype of ``tensor_content``)
_TF_DTYPES: dict[int, tuple[str, str]] = {
    1: ("float_val", "<f4"), 2: ("double_val", "<f8"), 3: ("int_val", "<i4"), 4: ("int_val", "u1"),
    5: ("int_val", "<i2"), 6: ("int_val", "i1"), 9: ("int64_val", "<i8"), 17: ("int_val", "<u2"),
    19: ("half_val", "<f2"), 22: ("uint32_val", "<u4"), 23: ("uint64_val", "<u8"),
}


def _tensor_scalar(t: Any) -> float | None:
    """The value of a one-element numeric ``TensorProto``, else None.

    The shape is checked before anything is allocated (a crafted shape of 2**40 elements
    costs nothing); text, image and other tensors give None.
    """
    dims = t.tensor_shape.dim
    if len(dims) > 8 or any(d.size != 1 for d in dims):
        return None
    spec = _TF_DTYPES.get(int(t.dtype))
    if spec is None:
        return None
    name, dtype = spec
    content = t.tensor_content
    if content:
        if len(content) != np.dtype(dtype).itemsize:
            return None
        return float(np.frombuffer(content, dtype=dtype)[0])
    vals = getattr(t, name)
    if len(vals) != 1:
        return None
    if name == "half_val":  # float16 bits in an int field
        return float(np.array(vals[0] & 0xFFFF, dtype=np.uint16).view(np.float16))
    return float(vals[0])


def _hparams_of(v: Any, plugin_data: Any) -> dict[str, Any]:
    """The hyper-parameters of a TensorBoard HParams ``session_start_info`` summary value."""
    try:
        data = plugin_data.HParamsPluginData.FromString(v.metadata.plugin_data.content)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError; hparams are optional
        return {}
    if data.WhichOneof("data") != "session_start_info":
        return {}
    out: dict[str, Any] = {}
    for k, val in data.session_start_info.hparams.items():
        kind = val.WhichOneof("kind")
        if kind is not None:
            out[k] = getattr(val, kind)
    return out


#: a TF1 image tag ``name/image/<i>`` (one value per image of a batch)
_TF1_IMAGE_TAG = re.compile(r"^(.*)/image/(\d+)$")


def _image_ref(tag: str, index: int) -> tuple[str, int]:
    m = _TF1_IMAGE_TAG.match(tag)
    return (m.group(1), int(m.group(2))) if m else (tag, index)


def _tensorboard_images(rf: Any, refs: dict[str, list[tuple[int, int, int, int, int]]], event_cls: Any,
                        path: Path) -> list[Any]:
    """The encoded images of the picked image summaries (:func:`~diffdiag.sources.samples.pick_by_step` per key).

    ``refs`` maps a key to ``(step, index, record offset, record length, value position)``; only the picked
    records are parsed again, so an event file full of images costs no memory beyond what is kept.
    """
    from .samples import EncodedImage, pick_by_step

    out: list[Any] = []
    for key, items in refs.items():
        items.sort(key=lambda r: (r[0], r[1]))
        for step, index, off, ln, pos in pick_by_step(items, lambda r: r[0]):
            v = event_cls.FromString(rf.payload(off, ln)).summary.value[pos]
            if v.WhichOneof("value") == "image":
                out.append(EncodedImage(key, step, index, bytes(v.image.encoded_image_string), str(path)))
            else:  # the images plugin's string tensor: [width, height, image, image, ...]
                for k, data in enumerate(v.tensor.string_val[2:]):
                    out.append(EncodedImage(key, step, index + k, bytes(data), str(path)))
    return out


def read_tensorboard(path: Path) -> _Table:
    """Read the scalar summaries (tag = key), image summaries and HParams of one TensorBoard event file.

    Image summaries (``Summary.Value.image``, and the ``images`` plugin's string tensors) go to
    ``_Table.images`` as encoded images, at most
    :data:`~diffdiag.sources.samples.MAX_SAMPLE_STEPS` steps per tag (decoded by
    :func:`diffdiag.sources.samples.decode_logged_images`).

    Every record's length and data CRCs are checked (:mod:`diffdiag.sources.tfrecord`). A
    damaged record is skipped and the rest of the file read; a record whose CRCs hold but
    that does not parse as an ``Event`` is skipped too. ``_Table.problem`` then names the
    first damaged byte offset.

    Raises
    ------
    InputError
        Empty file, not a regular file, or nothing readable in it.
    """
    try:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.hparams import plugin_data_pb2
    except ImportError:
        raise InputError("reading TensorBoard event files needs the optional package 'tensorboard': "
                         "pip install 'diffdiag[tensorboard]'", path) from None
    from google.protobuf.message import DecodeError

    from .tfrecord import RecordFile

    tab = _Table()
    cols: dict[str, tuple[list[int], list[float]]] = {}
    image_refs: dict[str, list[tuple[int, int, int, int, int]]] = {}
    n_events = 0
    with RecordFile(path) as rf:
        scan = rf.scan
        if scan.size == 0:
            raise InputError("the TensorBoard event file is empty", path)
        damage = list(scan.damage)
        Event = event_pb2.Event
        for offset, payload in rf:
            try:
                event = Event.FromString(payload)
            except (DecodeError, RuntimeWarning, ValueError):
                damage.append((offset, "a record does not parse as a TensorBoard event"))
                continue
            n_events += 1
            values = event.summary.value
            if not values:
                continue
            step = event.step
            for pos, v in enumerate(values):
                kind = v.WhichOneof("value")
                if kind == "simple_value":  # the common case first: as few attribute reads as possible
                    val = v.simple_value
                elif v.metadata.plugin_data.plugin_name == "hparams":
                    tab.hparams.update(_hparams_of(v, plugin_data_pb2))
                    continue
                elif kind == "image" or (kind == "tensor" and v.metadata.plugin_data.plugin_name == "images"):
                    key, index = _image_ref(v.tag, 0)
                    image_refs.setdefault(key, []).append((step, index, offset, len(payload), pos))
                    continue
                elif kind == "tensor":
                    val = _tensor_scalar(v.tensor)
                    if val is None:
                        continue
                else:
                    continue
                tag = v.tag
                c = cols.get(tag)
                if c is None:
                    c = cols[tag] = ([], [])
                c[0].append(step)
                c[1].append(val)
        if image_refs:
            tab.images = _tensorboard_images(rf, image_refs, Event, path)
    damage.sort()
    if n_events == 0:
        where = f" (damaged at byte {damage[0][0]}: {damage[0][1]})" if damage else ""
        raise InputError(f"not a readable TensorBoard event file: no events{where}", path)
    if damage:
        tab.problem = _damage_text(damage, n_events, scan.size)
    for k, (st, vals) in cols.items():
        tab.scalars[k] = (np.asarray(st, np.int64), np.asarray(vals, np.float64))
    return tab


def _damage_text(damage: list[tuple[int, str]], n_events: int, size: int) -> str:
    """One sentence about the damaged spots of an event file (first offset named)."""
    offset, what = damage[0]
    if len(damage) == 1 and what.startswith("the file ends"):
        return (f"the TensorBoard event file is truncated: the last record (from byte {offset} of {size}) is cut off; "
                f"read the {n_events} events before it")
    more = f" and {len(damage) - 1} more place{'s' if len(damage) > 2 else ''}" if len(damage) > 1 else ""
    return (f"the TensorBoard event file is damaged at byte {offset} ({what}){more}; "
            f"skipped the damage and read the {n_events} intact events")


def _kind(p: Path) -> str | None:
    name = p.name.lower()
    if "tfevents" in name:
        return "tensorboard"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return None


def find_log_files(path: Path) -> list[Path]:
    """Log files under ``path`` (recursively), or ``[path]`` for a file.

    Entries with a log file's name that are not regular files (a FIFO, a socket, a broken
    link) are listed too, so that the reader refuses them with a message.
    """
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if _kind(p) is not None and not p.is_dir()
                  and not any(part.startswith(".") for part in p.relative_to(path).parts[:-1]))


# --------------------------------------------------------------------------- trainer configuration

#: file names of trainer configurations/arguments read into ``RunLog.config`` (beside or under the logs)
CONFIG_NAMES = ("config.json", "args.json", "training_args.json", "train_args.json", "hparams.yaml", "hparams.yml",
                "config.yaml", "config.yml", "args.yaml", "args.yml", "config.toml", "train_config.toml",
                "training_config.toml", "dataset_config.toml")
#: canonical hyper-parameter -> names trainers use (kohya, diffusers/SimpleTuner args, ai-toolkit, OneTrainer)
CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("learning_rate", "lr", "unet_lr", "base_learning_rate", "learning_rate_unet"),
    "weight_decay": ("weight_decay", "adam_weight_decay", "wd"),
    "dropout": ("dropout", "lora_dropout", "network_dropout", "module_dropout", "rank_dropout"),
    "lora_dropout": ("lora_dropout", "network_dropout"),
    "network_dropout": ("network_dropout",),
    "max_grad_norm": ("max_grad_norm", "clip_grad_norm", "max_norm"),
    "train_batch_size": ("train_batch_size", "batch_size", "per_device_train_batch_size"),
    "lr_scheduler": ("lr_scheduler", "scheduler"),
    "optimizer": ("optimizer_type", "optimizer", "optim"),
    "ema_decay": ("ema_decay", "loss_ema_decay"),
}


def _coerce(v: Any) -> Any:
    if isinstance(v, str):
        t = v.strip()
        try:
            return int(t) if re.fullmatch(r"[+-]?\d+", t) else float(t) if re.fullmatch(
                r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", t) else v
        except ValueError:
            return v
    return v


def _flat_config(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat_config(v, f"{prefix}{k}/")
    elif prefix:
        yield prefix[:-1], obj


def normalize_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Flatten a trainer configuration and add canonical names.

    Nested keys become ``a/b`` and, when unambiguous, also their leaf name; ``key=value`` strings
    in lists such as kohya's ``optimizer_args = ["weight_decay=0.01"]`` become keys; numeric
    strings become numbers; the names of :data:`CONFIG_ALIASES` are added (``weight_decay``,
    ``dropout``, ``learning_rate``, ...) from the first alias present.
    """
    out: dict[str, Any] = {}
    leaves: dict[str, list[Any]] = {}
    for key, v in _flat_config(raw):
        out[key] = _coerce(v)
        leaves.setdefault(key.rsplit("/", 1)[-1], []).append(out[key])
        if isinstance(v, (list, tuple)):
            for item in v:
                if isinstance(item, str) and "=" in item:
                    a, b = item.split("=", 1)
                    leaves.setdefault(a.strip(), []).append(_coerce(b.strip()))
    for leaf, vals in leaves.items():
        if leaf not in out and len({repr(x) for x in vals}) == 1:
            out[leaf] = vals[0]
    for canon, names in CONFIG_ALIASES.items():
        if canon in out and not isinstance(out[canon], (dict, list)):
            continue
        for n in names:
            v = out.get(n)
            if v is not None and not isinstance(v, (dict, list)):
                out[canon] = v
                break
    return out


def _read_config_file(p: Path) -> dict[str, Any]:
    try:
        if p.stat().st_size > MAX_LINE_BYTES:
            return {}
        with open_regular(p) as fh:
            text = fh.read().decode("utf-8")
        name = p.name.lower()
        if name.endswith(".json"):
            obj = json.loads(text)
        elif name.endswith((".yaml", ".yml")):
            import yaml

            obj = yaml.safe_load(text)
        else:
            import tomllib

            obj = tomllib.loads(text)
    except Exception:  # noqa: BLE001 - a config we cannot parse is skipped, never fatal
        return {}
    return obj if isinstance(obj, dict) else {}


def find_config(path: Path, files: list[Path], *, hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trainer hyper-parameters beside the logs: :data:`CONFIG_NAMES` files in the log directory (or the
    log file's directory) and in the log files' directories, plus the TensorBoard HParams read with the
    event files (``hparams``); normalised by :func:`normalize_config`. Later, more specific files win;
    nothing found gives ``{}``."""
    root = path if path.is_dir() else path.parent
    dirs = list(dict.fromkeys([root] + [f.parent for f in files]))
    raw: dict[str, Any] = {}
    for d in dirs:
        for name in CONFIG_NAMES:
            p = d / name
            if p.is_file():
                raw.update(_read_config_file(p))
    raw.update(hparams or {})
    return normalize_config(raw) if raw else {}


def load_logs(path: str | Path, loss_key: str | None = None, ema_key: str | None = None,
              lr_key: str | None = None, *, errors: list[str] | None = None,
              images: list[Any] | None = None) -> RunLog:
    """Read training logs (docs/CONTRACT.md §2) into a :class:`RunLog`.

    Parameters
    ----------
    path : str or Path
        A TensorBoard event file, CSV or JSONL file, or a directory searched recursively
        (all log files found are merged; for a step logged twice the later file wins).
    loss_key, ema_key, lr_key : str, optional
        Override key auto-detection.
    errors : list of str, optional
        When given, a file that cannot be read (or only in part) adds one line here — naming
        the file and the byte offset or line — and the other files are still read. Without
        it the first such problem raises.
    images : list, optional
        When given, the image summaries of the TensorBoard event files are appended here, encoded
        (:class:`~diffdiag.sources.samples.EncodedImage`; decode them with
        :func:`~diffdiag.sources.samples.decode_logged_images`) — also when the logs then turn out
        to hold no loss key.

    Raises
    ------
    InputError
        Missing path, not a regular file, no log files, no readable log file (with ``errors``:
        every file's line is in ``errors`` and the error repeats the first), an unreadable,
        empty, truncated or damaged file (without ``errors``), or no loss key (the message
        lists the keys that exist).

    Notes
    -----
    Trainer hyper-parameters found beside the logs go into ``RunLog.config`` (:func:`find_config`).
    """
    p = Path(path).expanduser()
    if not p.exists() and not p.is_symlink():
        raise InputError("log path does not exist", p)
    if not p.is_dir():
        require_regular_file(p)
    files = find_log_files(p)
    if not files:
        raise InputError("no training logs found (TensorBoard event files, *.csv or *.jsonl)", p)
    tables: list[_Table] = []
    read: list[Path] = []
    bad: list[str] = []
    for f in files:
        try:
            tab = _read_log_file(f)
        except InputError as exc:
            if errors is None:
                raise
            bad.append(str(exc))
            continue
        if tab.problem:
            if errors is None:
                raise InputError(tab.problem, f)
            bad.append(str(InputError(tab.problem, f)))
        tables.append(tab)
        read.append(f)
    if errors is not None:
        errors.extend(bad)
    if images is not None:
        images.extend(im for t in tables for im in t.images)
    if not tables:
        raise InputError(bad[0])
    with quiet():
        scalars, sample_ids, timesteps = _merge(tables)
    log = build_runlog(scalars, sample_ids, timesteps, loss_key=loss_key, ema_key=ema_key, lr_key=lr_key,
                       sources=[str(f) for f in read], source=str(p))
    hparams: dict[str, Any] = {}
    for t in tables:
        hparams.update(t.hparams)
    log.config = find_config(p, read, hparams=hparams)
    return log


def _read_log_file(f: Path) -> _Table:
    kind = _kind(f)
    if kind is None:  # a single file with an unknown suffix: sniff
        with open_regular(f) as fh:
            head = fh.read(1)
        kind = "jsonl" if head == b"{" else "csv"
    reader = {"csv": read_csv, "jsonl": read_jsonl, "tensorboard": read_tensorboard}[kind]
    return reader(f)


def _merge(tables: list[_Table]) -> tuple[dict[str, Series], dict[int, list[str]], dict[int, np.ndarray]]:
    """One series per key over all files (a step logged twice: the file read last wins)."""
    scalars: dict[str, Series] = {}
    keys = list(dict.fromkeys(k for t in tables for k in t.scalars))
    for k in keys:
        parts = [t.scalars[k] for t in tables if k in t.scalars]
        if len(parts) == 1:
            st, vals = parts[0]
        else:
            st = np.concatenate([a for a, _ in parts])
            vals = np.concatenate([b for _, b in parts])
        order = np.argsort(st, kind="stable")
        st, vals = st[order], vals[order]
        if st.size > 1 and np.any(st[1:] == st[:-1]):
            last = np.concatenate([st[1:] != st[:-1], [True]])
            st, vals = st[last], vals[last]
        scalars[k] = Series(k, st, vals)
    sample_ids: dict[int, list[str]] = {}
    timesteps: dict[int, np.ndarray] = {}
    for t in tables:
        sample_ids.update(t.sample_ids)
        timesteps.update(t.timesteps)
    return scalars, sample_ids, timesteps
