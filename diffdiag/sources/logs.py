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
    if not keys:
        return "(none)"
    shown = ", ".join(repr(k) for k in sorted(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


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

class _Table:
    """Columns read from one file: step -> values per key, plus list fields."""

    def __init__(self) -> None:
        self.scalars: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.sample_ids: dict[int, list[str]] = {}
        self.timesteps: dict[int, np.ndarray] = {}


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
    except (TypeError, ValueError):
        return np.empty(0)


def read_csv(path: Path) -> _Table:
    """Read a CSV log with a header (C parser; a 1M-row file takes about a second)."""
    import pandas as pd

    try:
        df = pd.read_csv(path, low_memory=False, skipinitialspace=True, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise InputError("the CSV file is empty (expected a header and one row per step)", path) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"not a readable CSV file ({msg})", path) from None
    if df.shape[0] == 0:
        raise InputError("the CSV file has a header but no rows", path)
    df.columns = [str(c).strip() for c in df.columns]
    tab = _Table()
    step_col = next((c for c in STEP_NAMES if c in df.columns), None)
    if step_col is not None:
        steps_f = pd.to_numeric(df[step_col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(steps_f)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"column {step_col!r} is not a whole number in data row {row + 1} "
                             f"({df[step_col].iloc[row]!r})", path)
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
                raise InputError(f"column {col!r} has a non-numeric value {s.iloc[row]!r} in data row {row + 1}",
                                 path)
            if raw_missing.all():
                continue
        present = ~raw_missing  # 'nan'/'inf' written as text are data
        tab.scalars[col] = (steps[present], vals[present])
    if not tab.scalars and text_cols:
        raise InputError(f"no numeric columns (non-numeric: {', '.join(map(repr, text_cols[:10]))})", path)
    tab.text_columns = text_cols  # type: ignore[attr-defined]
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

    Fast paths first: pyarrow's JSON reader (if installed; files without NaN/Infinity
    literals), else the whole file parsed in one ``json.loads`` call (its lines joined
    into a JSON array) with columns gathered per key. A file that fails there (a bad line,
    nested objects, a non-numeric step) is read line by line, which names the offending line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot open ({exc.strerror})", path) from None
    except UnicodeDecodeError:
        text = None
    if text is not None:
        tab = _read_jsonl_arrow(path) if "NaN" not in text and "Infinity" not in text else None
        if tab is None:
            tab = _read_jsonl_fast(text)
        if tab is not None:
            return tab
    return _read_jsonl_lines(path)


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
        if not np.all(np.isfinite(stf)):
            return None
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
        if not np.all(np.isfinite(st)):
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


def _read_jsonl_lines(path: Path) -> _Table:
    """Line-by-line JSONL reader (nested objects flattened to ``a/b`` keys; exact line numbers in errors)."""
    tab = _Table()
    cols: dict[str, tuple[list[int], list[float]]] = {}
    n = 0
    try:
        fh = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot open ({exc.strerror})", path) from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"line {lineno} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})",
                                 path) from None
            if not isinstance(obj, dict):
                raise InputError(f"line {lineno} is not a JSON object", path)
            step = next((obj[k] for k in STEP_NAMES if k in obj), n)
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step != step:
                raise InputError(f"line {lineno}: 'step' is not a number ({step!r})", path)
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
                c = cols.setdefault(key, ([], []))
                c[0].append(step)
                c[1].append(float(v))
    if n == 0:
        raise InputError("the JSONL file has no records", path)
    for k, (st, vals) in cols.items():
        tab.scalars[k] = (np.asarray(st, np.int64), np.asarray(vals, np.float64))
    return tab


def read_tensorboard(path: Path) -> _Table:
    """Read the scalar summaries of one TensorBoard event file (tag = key)."""
    try:
        from tensorboard.backend.event_processing import event_file_loader
        from tensorboard.util import tensor_util
    except ImportError:
        raise InputError("reading TensorBoard event files needs the optional package 'tensorboard': "
                         "pip install 'diffdiag[tensorboard]'", path) from None
    tab = _Table()
    cols: dict[str, tuple[list[int], list[float]]] = {}
    size = path.stat().st_size
    if size == 0:
        raise InputError("the TensorBoard event file is empty", path)
    loader = event_file_loader.LegacyEventFileLoader(str(path))
    n_events = 0
    try:
        for event in loader.Load():
            n_events += 1
            if not event.HasField("summary"):
                continue
            for v in event.summary.value:
                kind = v.WhichOneof("value")
                if kind == "simple_value":
                    val = float(v.simple_value)
                elif kind == "tensor":
                    try:
                        arr = tensor_util.make_ndarray(v.tensor)
                    except Exception:  # noqa: BLE001 - not a numeric tensor (text, image)
                        continue
                    if arr.size != 1 or arr.dtype.kind not in "fiu":
                        continue
                    val = float(arr.reshape(-1)[0])
                else:
                    continue
                c = cols.setdefault(v.tag, ([], []))
                c[0].append(int(event.step))
                c[1].append(val)
    except Exception as exc:  # noqa: BLE001 - the reader raises DataLossError etc. on corrupt files
        raise InputError(f"the TensorBoard event file is corrupt or truncated ({type(exc).__name__})", path) from None
    # the reader stops quietly at a truncated record: check that it consumed the whole file
    consumed = _tfrecord_length(path, size)
    if consumed != size:
        raise InputError(f"the TensorBoard event file is truncated or corrupt after byte {consumed} of {size}", path)
    if n_events == 0:
        raise InputError("not a TensorBoard event file (no events)", path)
    for k, (st, vals) in cols.items():
        tab.scalars[k] = (np.asarray(st, np.int64), np.asarray(vals, np.float64))
    return tab


def _tfrecord_length(path: Path, size: int) -> int:
    """Bytes covered by complete TFRecord frames (length, crc, data, crc) from the file's start."""
    import struct

    pos = 0
    with path.open("rb") as fh:
        while pos + 12 <= size:
            fh.seek(pos)
            head = fh.read(8)
            if len(head) < 8:
                break
            (length,) = struct.unpack("<Q", head)
            end = pos + 12 + length + 4
            if end > size:
                break
            pos = end
    return pos


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
    """Log files under ``path`` (recursively), or ``[path]`` for a file."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None
                   and not any(part.startswith(".") for part in p.relative_to(path).parts[:-1]))
    return files


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
        text = p.read_text(encoding="utf-8")
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


def _tensorboard_hparams(files: list[Path]) -> dict[str, Any]:
    """Hyper-parameters of the TensorBoard HParams plugin (``session_start_info``), if any."""
    out: dict[str, Any] = {}
    try:
        from tensorboard.backend.event_processing import event_file_loader
        from tensorboard.plugins.hparams import plugin_data_pb2
    except ImportError:
        return out
    for f in files:
        try:
            for event in event_file_loader.LegacyEventFileLoader(str(f)).Load():
                if not event.HasField("summary"):
                    continue
                for v in event.summary.value:
                    if v.metadata.plugin_data.plugin_name != "hparams":
                        continue
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    if data.WhichOneof("data") != "session_start_info":
                        continue
                    for k, val in data.session_start_info.hparams.items():
                        kind = val.WhichOneof("kind")
                        if kind is not None:
                            out[k] = getattr(val, kind)
        except Exception:  # noqa: BLE001 - hparams are optional
            continue
    return out


def find_config(path: Path, files: list[Path]) -> dict[str, Any]:
    """Trainer hyper-parameters beside the logs: :data:`CONFIG_NAMES` files in the log directory (or the
    log file's directory) and in the log files' directories, plus TensorBoard HParams; normalised by
    :func:`normalize_config`. Later, more specific files win; nothing found gives ``{}``."""
    root = path if path.is_dir() else path.parent
    dirs = list(dict.fromkeys([root] + [f.parent for f in files]))
    raw: dict[str, Any] = {}
    for d in dirs:
        for name in CONFIG_NAMES:
            p = d / name
            if p.is_file():
                raw.update(_read_config_file(p))
    tb = [f for f in files if _kind(f) == "tensorboard"]
    if tb:
        raw.update(_tensorboard_hparams(tb))
    return normalize_config(raw) if raw else {}


def load_logs(path: str | Path, loss_key: str | None = None, ema_key: str | None = None,
              lr_key: str | None = None) -> RunLog:
    """Read training logs (docs/CONTRACT.md §2) into a :class:`RunLog`.

    Parameters
    ----------
    path : str or Path
        A TensorBoard event file, CSV or JSONL file, or a directory searched recursively
        (all log files found are merged; for a step logged twice the later file wins).
    loss_key, ema_key, lr_key : str, optional
        Override key auto-detection.

    Raises
    ------
    InputError
        Missing path, no log files, an unreadable/empty/truncated file, non-numeric values,
        or no loss key (the message lists the keys that exist).

    Notes
    -----
    Trainer hyper-parameters found beside the logs go into ``RunLog.config`` (:func:`find_config`).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("log path does not exist", p)
    files = find_log_files(p)
    if not files:
        raise InputError("no training logs found (TensorBoard event files, *.csv or *.jsonl)", p)
    tables = []
    for f in files:
        kind = _kind(f)
        if kind is None:  # a single file with an unknown suffix: sniff
            with f.open("rb") as fh:
                head = fh.read(1)
            kind = "jsonl" if head == b"{" else "csv"
        reader = {"csv": read_csv, "jsonl": read_jsonl, "tensorboard": read_tensorboard}[kind]
        tables.append(reader(f))
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
        # a step logged twice (resumed run, several files): the last one read wins
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
    src = [str(f) for f in files]
    log = build_runlog(scalars, sample_ids, timesteps, loss_key=loss_key, ema_key=ema_key, lr_key=lr_key,
                       sources=src, source=str(p))
    log.config = find_config(p, files)
    return log
