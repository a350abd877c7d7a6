"""Read LoRA / model checkpoints (``--checkpoints``) one at a time.

Formats
-------
* ``.safetensors`` — read with :mod:`safetensors` (numpy framework, no torch);
  ``BF16`` tensors, which numpy cannot represent, are widened to float32 from
  the raw bytes. The header is validated first: a corrupt file raises
  :class:`~diffdiag.errors.InputError` (exit 2), never a crash.
* ``.pt`` / ``.ckpt`` — read with ``torch.load(weights_only=True)`` (torch is
  imported only then). A pickle that would run code (any global outside
  torch's allow-list) is refused with an :class:`InputError`; nothing in it runs.

LoRA naming schemes recognised (the module name is the key without its LoRA suffix)
-----------------------------------------------------------------------------------
* kohya sd-scripts: ``lora_unet_…`` / ``lora_te…`` with ``.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha`` (scale = alpha / rank; alpha 0 or absent
  means alpha = rank, as kohya's loader reads it); ``ss_*`` metadata.
* diffusers: ``….lora.down.weight`` / ``….lora.up.weight``,
  ``….lora_linear_layer.down.weight``, attention-processor keys
  ``….processor.to_q_lora.down.weight`` (optional ``.alpha`` keys).
* PEFT: ``….lora_A[.adapter].weight`` / ``….lora_B[.adapter].weight``. The
  scale ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA, per-module
  ``rank_pattern`` / ``alpha_pattern``) comes from an ``adapter_config.json``
  beside the file or from diffusers' ``lora_adapter_metadata`` safetensors
  metadata.

The *format* (:func:`lora_format`) decides what a missing alpha means:
diffusers' pipeline files (``pytorch_lora_weights.safetensors``, keys under
``unet.``/``text_encoder.``, PEFT-style or not — what ``save_lora_weights``
writes in ``checkpoint-N/`` folders and at the end of its training scripts)
are loaded by diffusers with alpha = rank, scale 1; a PEFT adapter without
its ``adapter_config.json`` has an unknown scale, taken as 1 with a note.
Notes name every checkpoint they apply to, one line per note.

A file without LoRA pairs is a full state dict: its 2-D+ floating tensors are
compared layer by layer.

Steps
-----
The step comes from the file name (kohya ``-step00001234``, ``step_1234``,
a ``checkpoint-1234`` folder or file name), else from metadata (kohya
``ss_steps``, ``step``, ``global_step``; Lightning's ``global_step`` in a
``.ckpt``), else from the trailing digits of the file stem (kohya's per-epoch
``name-000004`` counts epochs; the number still orders the files). Files with
no step sort last (a final ``name.safetensors`` is the last checkpoint).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import InputError
from ..model import CheckpointInfo, CheckpointScan
from ..safeio import quote

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".ckpt")
#: files in training-state folders that are not model weights
_SKIP_STEMS = re.compile(r"^(optimizer|scheduler|scaler|random_states|rng_state|training_args|"
                         r"training_state)", re.I)
_MAX_HEADER = 100 * 1024 * 1024

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "U16": np.uint16,
              "U32": np.uint32, "U64": np.uint64}

# ---------------------------------------------------------------- names

#: (regex on the full key, role) — role "down"/"up"/"alpha"; group 1 = module name
_LORA_PATTERNS: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"^(.*)\.lora_down\.weight$"), "down", "kohya"),
    (re.compile(r"^(.*)\.lora_up\.weight$"), "up", "kohya"),
    (re.compile(r"^(.*)\.lora_linear_layer\.down\.weight$"), "down", "diffusers"),
    (re.compile(r"^(.*)\.lora_linear_layer\.up\.weight$"), "up", "diffusers"),
    (re.compile(r"^(.*)\.processor\.(\w+?)_lora\.down\.weight$"), "down", "diffusers"),
    (re.compile(r"^(.*)\.processor\.(\w+?)_lora\.up\.weight$"), "up", "diffusers"),
    (re.compile(r"^(.*)\.lora\.down\.weight$"), "down", "diffusers"),
    (re.compile(r"^(.*)\.lora\.up\.weight$"), "up", "diffusers"),
    (re.compile(r"^(.*)\.lora_A(?:\.[^.]+)?\.weight$"), "down", "peft"),
    (re.compile(r"^(.*)\.lora_B(?:\.[^.]+)?\.weight$"), "up", "peft"),
    (re.compile(r"^(.*)\.alpha$"), "alpha", ""),
]


def parse_lora_key(key: str) -> tuple[str, str, str] | None:
    """Split a state-dict key into ``(module, role, scheme)``.

    Returns None when the key is not a LoRA factor or alpha. ``role`` is
    ``"down"`` (A, shape (r, in)), ``"up"`` (B, shape (out, r)) or ``"alpha"``;
    ``scheme`` is ``"kohya"``, ``"diffusers"``, ``"peft"`` (``""`` for alpha).
    """
    for pat, role, scheme in _LORA_PATTERNS:
        m = pat.match(key)
        if m:
            module = m.group(1) if m.lastindex == 1 else f"{m.group(1)}.{m.group(2)}"
            if scheme == "" and key.startswith(("lora_unet_", "lora_te")):
                scheme = "kohya"
            return module, role, scheme
    return None


# ---------------------------------------------------------------- steps

_STEP_PATTERNS = [
    re.compile(r"(?:^|[-_.])step[-_]?(\d+)", re.I),      # kohya -step00001234, step_1234
    re.compile(r"checkpoint[-_](\d+)", re.I),              # diffusers/accelerate checkpoint-1234
    re.compile(r"(?:^|[-_.])global[-_]?step[-_=]?(\d+)", re.I),
]


def step_from_name(path: str | Path) -> int | None:
    """The training step encoded in a checkpoint's file or folder name, else None.

    Tries the file stem (``-step00001234``, ``step_1234``, ``checkpoint-1234``),
    then the parent folder (``checkpoint-1234/pytorch_lora_weights.safetensors``),
    then the trailing digits of the stem (``name-000004``).
    """
    p = Path(path)
    names = [p.stem] + [q.name for q in list(p.parents)[:2]]
    for name in names:
        for pat in _STEP_PATTERNS:
            m = pat.search(name)
            if m:
                return int(m.group(1))
    m = re.search(r"(\d+)$", p.stem)
    if m:
        return int(m.group(1))
    return None


def _explicit_step_from_name(path: Path) -> int | None:
    names = [path.stem] + [q.name for q in list(path.parents)[:2]]
    for name in names:
        for pat in _STEP_PATTERNS:
            m = pat.search(name)
            if m:
                return int(m.group(1))
    return None


def step_from_metadata(meta: dict[str, Any] | None) -> int | None:
    """The step recorded in checkpoint metadata (kohya ``ss_steps``, ``step``, ``global_step``)."""
    if not meta:
        return None
    for key in ("ss_steps", "step", "global_step", "ss_global_step", "steps"):
        v = meta.get(key)
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f) and f >= 0:
            return int(f)
    return None


# ---------------------------------------------------------------- safetensors


_HEADER_CACHE: dict[tuple[str, int, int], tuple[dict[str, Any], dict[str, str], int]] = {}


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """Validated header, cached by (path, mtime, size) so listing and loading parse it once.

    See :func:`_read_safetensors_header`.
    """
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise InputError(f"cannot read checkpoint ({exc.strerror or exc})", path) from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    hit = _HEADER_CACHE.get(key)
    if hit is None:
        hit = _read_safetensors_header(Path(path))
        if len(_HEADER_CACHE) > 256:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[key] = hit
    return dict(hit[0]), dict(hit[1]), hit[2]


def _read_safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """Validate and parse a safetensors header without reading the tensors.

    Returns
    -------
    tensors : dict
        Name -> ``{"dtype", "shape", "data_offsets"}``.
    metadata : dict of str to str
        The ``__metadata__`` block (may be empty).
    data_start : int
        Byte offset of the data buffer in the file.

    Raises
    ------
    InputError
        When the header is truncated, not JSON, or points outside the file.
    """
    from ..safeio import open_regular

    try:
        size = path.stat().st_size
        with open_regular(path) as fh:  # a FIFO or device is refused unopened
            raw = fh.read(8)
            if len(raw) < 8:
                raise InputError("not a valid safetensors file: the file is shorter than its 8-byte header length",
                                 path)
            (n,) = struct.unpack("<Q", raw)
            if n == 0 or n > _MAX_HEADER or n > size - 8:
                raise InputError(f"not a valid safetensors file: corrupt header (declared header length {n} "
                                 f"bytes, file is {size} bytes)", path)
            blob = fh.read(n)
    except OSError as exc:
        raise InputError(f"cannot read checkpoint ({exc.strerror or exc})", path) from None
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"not a valid safetensors file: corrupt header ({type(exc).__name__}: {str(exc)[:120]})",
                         path) from None
    except RecursionError:
        raise InputError("not a valid safetensors file: corrupt header (JSON nested too deeply)", path) from None
    if not isinstance(header, dict):
        raise InputError("not a valid safetensors file: corrupt header (not a JSON object)", path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        meta = {}
    data_start = 8 + n
    data_len = size - data_start
    for name, info in header.items():
        try:
            lo, hi = (int(x) for x in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise InputError(f"not a valid safetensors file: corrupt header (bad entry for tensor {quote(name)})",
                             path) from None
        if any(d < 0 for d in shape):
            raise InputError(f"not a valid safetensors file: tensor {quote(name)} has a negative shape "
                             f"{quote(shape)}", path)
        if lo < 0 or hi < lo or hi > data_len:
            raise InputError(f"not a valid safetensors file: tensor {quote(name)} lies outside the file "
                             f"(truncated download?)", path)
        itemsize = 2 if dtype == "BF16" else np.dtype(_ST_DTYPES.get(dtype, np.uint8)).itemsize
        if dtype in _ST_DTYPES or dtype == "BF16":
            if math.prod(shape) * itemsize != hi - lo:  # exact: a shape that overflows int64 never matches
                raise InputError(f"not a valid safetensors file: tensor {quote(name)} has {hi - lo} bytes for "
                                 f"shape {quote(shape)} {dtype}", path)
    return header, {str(k): str(v) for k, v in meta.items()}, data_start


def _read_raw(path: Path, data_start: int, info: dict[str, Any]) -> np.ndarray:
    lo, hi = info["data_offsets"]
    with open(path, "rb") as fh:
        fh.seek(data_start + lo)
        buf = fh.read(hi - lo)
    dtype = info["dtype"]
    if dtype == "BF16":
        u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
        return u.view(np.float32).reshape(info["shape"])
    return np.frombuffer(buf, dtype=np.dtype(_ST_DTYPES[dtype]).newbyteorder("<")).reshape(info["shape"])


def _load_safetensors(path: Path, keys: Iterable[str] | None = None
                      ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    header, meta, data_start = read_safetensors_header(path)
    from safetensors import SafetensorError, safe_open

    wanted = list(header) if keys is None else [k for k in keys if k in header]
    out: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as fh:
            for k in wanted:
                dt = header[k]["dtype"]
                if dt == "BF16":
                    out[k] = _read_raw(path, data_start, header[k])
                elif dt in _ST_DTYPES:
                    out[k] = fh.get_tensor(k)
                # other dtypes (F8 variants, ...) are skipped: not comparable here
    except SafetensorError as exc:
        raise InputError(f"not a valid safetensors file ({exc})", path) from None
    return out, meta


# ---------------------------------------------------------------- torch pickles


def _torch_load(path: Path) -> Any:
    try:
        import torch
    except ModuleNotFoundError:
        raise InputError("reading .pt/.ckpt checkpoints needs torch: pip install 'diffdiag[torch]' "
                         "(or convert the file to .safetensors)", path) from None
    import pickle

    from ..safeio import require_regular_file

    require_regular_file(path)  # a FIFO or device is refused unopened
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc) and "zip" not in str(exc).lower():
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), "")
        if "GLOBAL" not in detail:  # not a pickle of objects at all: damaged or not a torch file
            raise InputError(f"not a readable torch checkpoint (its pickle does not parse: {quote(detail, 80)})",
                             path) from None
        m = re.search(r"GLOBAL ([\w.]+)", detail)
        what = f" ({m.group(1)[:60]})" if m else ""
        raise InputError(f"refused to load: it holds Python objects{what} that would run code when unpickled "
                         f"(loaded with weights_only=True); convert it to .safetensors if you trust it", path) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as exc:
        raise InputError(f"not a readable torch checkpoint ({type(exc).__name__}: "
                         f"{quote(str(exc).splitlines()[0], 160) if str(exc) else ''})", path) from None


def _flatten_torch(obj: Any, prefix: str = "", out: dict[str, Any] | None = None,
                   meta: dict[str, str] | None = None, depth: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
    import torch

    out = {} if out is None else out
    meta = {} if meta is None else meta
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
        return out, meta
    if isinstance(obj, dict) and depth < 4:
        # Lightning / trainer wrappers: prefer the weights
        for k in ("global_step", "step", "epoch"):
            v = obj.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                meta.setdefault(k, str(int(v)))
        if depth == 0:
            for k in ("state_dict", "model", "module", "params"):
                if isinstance(obj.get(k), dict):
                    return _flatten_torch(obj[k], "", out, meta, depth + 1)
        for k, v in obj.items():
            if k in ("optimizer_states", "optimizer", "lr_schedulers", "callbacks", "loops"):
                continue
            _flatten_torch(v, f"{prefix}{k}.", out, meta, depth + 1)
    return out, meta


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16,) or (t.is_floating_point() and t.dtype not in (torch.float16, torch.float32,
                                                                                      torch.float64)):
        t = t.float()
    return t.numpy()


# ---------------------------------------------------------------- public API


@dataclass
class CheckpointHeader:
    """What a checkpoint is, read without its tensors (safetensors) or memory-mapped (torch).

    Attributes
    ----------
    path : Path
    step : int or None
        Training step (see the module docstring for where it comes from).
    kind : {"lora", "full"}
    scheme : str
        ``"kohya"``, ``"diffusers"``, ``"peft"``, a ``+``-joined mix, or ``"full"``.
    metadata : dict of str to str
    """

    path: Path
    step: int | None
    kind: str
    scheme: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class LoraModule:
    """One LoRA module: ΔW = scale · up @ down.

    ``down`` has shape (r, in) and ``up`` (out, r) (conv kernels flattened to
    (r, in·kh·kw) and (out, r)); ``scale`` = alpha / r (or the PEFT rule).
    """

    down: np.ndarray
    up: np.ndarray
    scale: float
    alpha: float | None = None


@dataclass
class LoadedCheckpoint:
    """A checkpoint in memory: LoRA modules, or full tensors (``tensors``) for a full state dict.

    ``format`` is the LoRA file's format as its loader reads it (:func:`lora_format`);
    ``scale_source`` says where the modules' alpha/r came from; ``notes`` are
    plain sentences without the file name (:func:`load_checkpoints` names the files).
    """

    header: CheckpointHeader
    modules: dict[str, LoraModule] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    format: str = ""
    scale_source: str = ""

    @property
    def name(self) -> str:
        return display_name(self.header.path)


def display_name(path: Path) -> str:
    """A short name for a checkpoint: the file name, with the folder when the name is generic."""
    p = Path(path)
    if re.search(r"\d", p.stem) or p.parent.name in ("", "."):
        return p.name
    return f"{p.parent.name}/{p.name}"


def _keys_and_meta(path: Path) -> tuple[list[str], dict[str, str], Any]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        header, meta, _ = read_safetensors_header(path)
        return list(header), meta, None
    obj = _torch_load(path)
    tensors, meta = _flatten_torch(obj)
    return list(tensors), meta, tensors


def _scheme_of(keys: Iterable[str]) -> tuple[str, str]:
    schemes: set[str] = set()
    n_lora = 0
    for k in keys:
        parsed = parse_lora_key(k)
        if parsed and parsed[1] in ("down", "up"):
            n_lora += 1
            schemes.add(parsed[2])
    if n_lora == 0:
        return "full", "full"
    return "lora", "+".join(sorted(schemes))


def read_checkpoint_header(path: str | Path) -> CheckpointHeader:
    """Identify one checkpoint (naming scheme, step) and validate that it can be read.

    Raises
    ------
    InputError
        Unreadable file, corrupt safetensors header, or a pickle that would run code.
    """
    p = Path(path)
    keys, meta, _ = _keys_and_meta(p)
    kind, scheme = _scheme_of(keys)
    step = _explicit_step_from_name(p)
    if step is None:
        step = step_from_metadata(meta)
    if step is None:
        step = step_from_name(p)
    return CheckpointHeader(p, step, kind, scheme, meta)


def _candidate_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = []
    for f in sorted(path.rglob("*")):
        if not f.is_file() or f.suffix.lower() not in CHECKPOINT_SUFFIXES:
            continue
        rel = f.relative_to(path).parts
        if any(part.startswith(".") for part in rel):
            continue
        if _SKIP_STEMS.match(f.stem):
            continue
        files.append(f)
    return files


def sort_key(header: CheckpointHeader) -> tuple[int, int, str]:
    return (1 if header.step is None else 0, header.step or 0, str(header.path))


def list_checkpoints(paths: Iterable[str | Path], *, errors: list[str] | None = None) -> list[Path]:
    """Checkpoint files named on the command line, directories searched recursively, sorted by step.

    Every file is validated here (safetensors header parsed; ``.pt``/``.ckpt``
    unpickled with ``weights_only=True`` and memory-mapped) before anything runs.

    Parameters
    ----------
    paths : iterable of path
        Files (``.safetensors``, ``.pt``, ``.ckpt``) or directories of them.
    errors : list of str, optional
        When given, each bad path or file is one line appended here (naming it and the
        problem) and left out; the others are still listed. Without it the first one raises.

    Returns
    -------
    list of Path
        Ascending by step; files without a step last, by name.

    Raises
    ------
    InputError
        A path has no checkpoint, or a file cannot be read safely (only without ``errors``).
    """
    headers: list[CheckpointHeader] = []
    seen: set[Path] = set()

    def bad(exc: InputError) -> None:
        if errors is None:
            raise exc
        errors.append(str(exc))

    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            bad(InputError("checkpoint path does not exist", p))
            continue
        if not p.is_dir() and p.suffix.lower() not in CHECKPOINT_SUFFIXES:
            bad(InputError(f"not a checkpoint file (expected {', '.join(CHECKPOINT_SUFFIXES)})", p))
            continue
        files = _candidate_files(p) if p.is_dir() else [p]
        if not files:
            bad(InputError(f"no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}) found", p))
            continue
        for f in files:
            r = f.resolve()
            if r in seen:
                continue
            seen.add(r)
            try:
                headers.append(read_checkpoint_header(f))
            except InputError as exc:
                bad(exc)
    headers.sort(key=sort_key)
    return [h.path for h in headers]


def _split_components(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """diffusers pipelines store ``{"unet.r": 4, "text_encoder.r": 8, ...}``: split by component ("" = plain)."""
    if "r" in cfg:
        return {"": cfg}
    out: dict[str, dict[str, Any]] = {}
    for k, v in cfg.items():
        comp, _, field_name = k.rpartition(".")
        if comp:
            out.setdefault(comp, {})[field_name] = v
    return {c: d for c, d in out.items() if "r" in d}


def _peft_scales(path: Path, meta: dict[str, str]) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """The PEFT LoraConfig(s) that apply to ``path``: diffusers ``lora_adapter_metadata`` (per component,
    e.g. ``unet``/``text_encoder``), else ``adapter_config.json`` beside the file.

    Returns ``({component: config}, source)``; component ``""`` applies to every module.
    """
    for k, v in meta.items():
        if k.endswith("lora_adapter_metadata"):
            try:
                cfg = json.loads(v)
            except json.JSONDecodeError:
                continue
            if isinstance(cfg, dict):
                comps = _split_components(cfg)
                if comps:
                    prefix = k[: -len("lora_adapter_metadata")].rstrip("_")
                    if prefix and "" in comps:  # diffusers training_utils: "<module>_lora_adapter_metadata"
                        comps = {prefix: comps[""]}
                    return comps, f"metadata {k}"
    cfg_path = path.with_name("adapter_config.json")
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
            if isinstance(cfg, dict) and "r" in cfg:
                return {"": cfg}, str(cfg_path.name)
        except (OSError, json.JSONDecodeError):
            pass
    return None, ""


def _config_for(configs: dict[str, dict[str, Any]], module: str) -> tuple[dict[str, Any] | None, str]:
    """The config of the component ``module`` belongs to, and the module name inside that component."""
    for comp, cfg in sorted(configs.items(), key=lambda kv: -len(kv[0])):
        if comp and module.startswith(comp + "."):
            return cfg, module[len(comp) + 1:]
    if "" in configs:
        return configs[""], module
    return None, module


def _pattern_value(patterns: dict[str, Any] | None, module: str) -> Any:
    if not patterns:
        return None
    for pat, val in patterns.items():
        if module == pat or module.endswith("." + pat) or re.search(rf"(^|\.){re.escape(pat)}$", module):
            return val
    return None


def _as_matrix(a: np.ndarray, role: str) -> np.ndarray | None:
    """LoRA factor as a matrix: down (r, in[·kh·kw]), up (out, r); None when not a product of matrices."""
    a = np.asarray(a)
    if a.ndim == 2:
        return a
    if a.ndim > 2:  # conv LoRA (LoCon): down (r, in, kh, kw), up (out, r, 1, 1)
        if role == "down":
            return a.reshape(a.shape[0], -1)
        if int(np.prod(a.shape[2:])) == 1:
            return a.reshape(a.shape[0], a.shape[1])
        return None
    return None


#: component prefixes of diffusers' pipeline LoRA files (``StableDiffusionPipeline.save_lora_weights``)
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.", "text_encoder_3.", "transformer.", "prior.")
#: diffusers' LoRA file names (``LORA_WEIGHT_NAME_SAFE`` / ``LORA_WEIGHT_NAME``)
_DIFFUSERS_NAMES = re.compile(r"^pytorch_lora_weights", re.I)


def lora_format(path: Path, modules: Iterable[str], scheme: str) -> str:
    """The format a LoRA file is in, as the loader that reads it sees it: ``"kohya"``, ``"diffusers"`` or ``"PEFT"``.

    diffusers writes pipeline LoRA files (``pytorch_lora_weights.safetensors``,
    keys under ``unet.``/``text_encoder.``/``transformer.``) with PEFT-style
    ``lora_A``/``lora_B`` keys or its own ``lora.down``/``lora.up`` ones; it loads a
    file that stores no alpha with alpha = rank (scale 1). A PEFT adapter
    (``adapter_model.safetensors``, keys under ``base_model.model.``) takes its
    scale from ``adapter_config.json``.
    """
    if "kohya" in scheme:
        return "kohya"
    mods = list(modules)
    if _DIFFUSERS_NAMES.match(Path(path).name) or (mods and all(m.startswith(_DIFFUSERS_PREFIXES) for m in mods)):
        return "diffusers"
    if "peft" in scheme:
        return "PEFT"
    return "diffusers"


def load_checkpoint(path: str | Path, header: CheckpointHeader | None = None) -> LoadedCheckpoint:
    """Load one checkpoint's LoRA factors (or its full tensors) as numpy arrays.

    Parameters
    ----------
    path : path
    header : CheckpointHeader, optional
        From :func:`read_checkpoint_header` (read again when omitted).

    Returns
    -------
    LoadedCheckpoint
        ``modules`` for a LoRA file (factors as stored, float16/32/64), or
        ``tensors`` (floating tensors with ≥ 2 dimensions, and vectors) for a full state dict.
    """
    p = Path(path)
    header = header or read_checkpoint_header(p)
    notes: list[str] = []
    if p.suffix.lower() == ".safetensors":
        arrays, meta = _load_safetensors(p)
    else:
        obj = _torch_load(p)
        tensors, meta = _flatten_torch(obj)
        arrays = {}
        for k, t in tensors.items():
            try:
                if t.is_floating_point():
                    arrays[k] = _torch_to_numpy(t)
            except Exception:  # noqa: BLE001 - an odd tensor type is skipped, not fatal
                continue
    ck = LoadedCheckpoint(header, notes=notes)
    if header.kind == "full":
        ck.tensors = {k: v for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating) and v.size > 1}
        return ck
    parts: dict[str, dict[str, np.ndarray]] = {}
    ignored = 0
    for k, v in arrays.items():
        parsed = parse_lora_key(k)
        if parsed is None:
            ignored += 1
            continue
        module, role, _ = parsed
        parts.setdefault(module, {})[role] = v
    peft_cfg, cfg_src = (None, "")
    fmt = lora_format(p, parts, header.scheme)
    ck.format = fmt
    if "peft" in header.scheme or "diffusers" in header.scheme:
        peft_cfg, cfg_src = _peft_scales(p, meta)
    has_alpha = any("alpha" in d for d in parts.values())
    if peft_cfg is not None:
        ck.scale_source = cfg_src
    elif has_alpha:
        ck.scale_source = "alpha tensors"
    elif fmt == "diffusers":
        ck.scale_source = "diffusers convention (no alpha stored: alpha = rank)"
    elif fmt == "PEFT":
        ck.scale_source = "unknown (taken as 1)"
        notes.append("PEFT LoRA without adapter_config.json or lora_adapter_metadata: scale alpha/r unknown, "
                     "taken as 1")
    else:
        ck.scale_source = "alpha = rank (no alpha stored)"
    for module, d in sorted(parts.items()):
        if "down" not in d or "up" not in d:
            continue
        down = _as_matrix(d["down"], "down")
        up = _as_matrix(d["up"], "up")
        if down is None or up is None or up.shape[1] != down.shape[0]:
            notes.append(f"LoRA modules with mismatched factor shapes were skipped (e.g. {module}: "
                         f"{tuple(d['up'].shape)} / {tuple(d['down'].shape)})")
            continue
        r = down.shape[0]
        if r == 0 or down.size == 0 or up.size == 0:
            raise InputError(f"LoRA module {quote(module)} has empty (rank-0) factors {tuple(d['up'].shape)} / "
                             f"{tuple(d['down'].shape)}: not a usable LoRA", p)
        alpha: float | None = None
        stored = np.asarray(d.get("alpha", ()), dtype=np.float64).reshape(-1) if "alpha" in d else None
        if stored is not None and stored.size:
            alpha = float(stored[0])
            if not alpha or not math.isfinite(alpha):  # kohya and diffusers read alpha 0 (or none) as the rank
                alpha = float(r)
            scale = alpha / r
        elif peft_cfg is not None and _config_for(peft_cfg, module)[0] is not None:
            cfg, inner = _config_for(peft_cfg, module)
            where = cfg_src or "adapter config"
            rr = _config_number(_pattern_value(cfg.get("rank_pattern"), inner) or cfg.get("r", r), "r", where, p)
            alpha = _config_number(_pattern_value(cfg.get("alpha_pattern"), inner) or cfg.get("lora_alpha", rr),
                                   "lora_alpha", where, p)
            # PEFT: scaling = lora_alpha / r (rsLoRA: / sqrt(r)), r from rank_pattern or the config
            rr = float(rr) if rr else float(r)
            scale = alpha / math.sqrt(rr) if cfg.get("use_rslora") else alpha / rr
        else:
            scale = 1.0
        ck.modules[module] = LoraModule(down=down, up=up, scale=float(scale), alpha=alpha)
    if ignored:
        notes.append("tensors that are not LoRA factors were ignored")
    return ck


def _config_number(value: Any, key: str, where: str, path: Path) -> float:
    """A PEFT config's ``r``/``lora_alpha`` as a positive finite number.

    Raises
    ------
    InputError
        Naming the checkpoint and the config: the value is not a number, or not positive and finite.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")
    if not ok or not math.isfinite(v) or v <= 0:
        what = "is not a number" if not ok else "is not a positive finite number"
        raise InputError(f"its LoRA config ({where}): {key} {quote(value)} {what}", path)
    return v


def iter_checkpoints(paths: Iterable[str | Path]) -> Iterator[LoadedCheckpoint]:
    """Yield checkpoints one at a time, in the order given (use :func:`list_checkpoints` to sort).

    Only one checkpoint is held by this generator at a time; a consumer that
    compares consecutive checkpoints keeps at most two.
    """
    for p in paths:
        yield load_checkpoint(p)


def display_names(paths: Iterable[str | Path]) -> list[str]:
    """:func:`display_name` of each path; the full path where two paths share a display name."""
    paths = [Path(p) for p in paths]
    shown = [display_name(p) for p in paths]
    return [str(p) if shown.count(n) > 1 else n for p, n in zip(paths, shown)]


#: component prefixes stripped before LoRA module names and base weight names are matched
_COMPONENT_PREFIXES = ("base_model.model.", "unet.", "transformer.", "text_encoder_2.", "text_encoder.",
                       "model.diffusion_model.", "lora_unet_", "lora_te1_", "lora_te2_", "lora_te_",
                       "lora_transformer_")


def module_key(name: str) -> str:
    """A LoRA module's or a base layer's name reduced to what both naming schemes share.

    Component prefixes (``unet.``, ``base_model.model.``, kohya's ``lora_unet_`` /
    ``lora_te_``, ...) are removed and dots become underscores, so that
    ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``,
    ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`` and the
    base weight ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight``
    (``.weight`` stripped by the caller) give the same key.
    """
    n = name
    stripped = True
    while stripped:
        stripped = False
        for pre in _COMPONENT_PREFIXES:
            if n.startswith(pre):
                n, stripped = n[len(pre):], True
    return n.replace(".", "_").lower()


def base_weights(path: Path) -> dict[str, tuple[float, tuple[int, ...]]]:
    """``{module_key: (‖W‖_F, shape)}`` of a full state dict's ``*.weight`` tensors of ≥ 2 dimensions.

    Safetensors files are read one tensor at a time (a multi-GB base never sits in memory whole).
    """
    out: dict[str, tuple[float, tuple[int, ...]]] = {}
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        header, _, _ = read_safetensors_header(p)
        keys = [k for k, info in header.items() if k.endswith(".weight") and len(info["shape"]) >= 2]
        for k in keys:
            arrays, _ = _load_safetensors(p, [k])
            if k in arrays:
                a = arrays.pop(k)
                out[module_key(k[: -len(".weight")])] = (float(np.linalg.norm(a.astype(np.float64).ravel())),
                                                         tuple(a.shape))
        return out
    ck = load_checkpoint(p)
    for k, a in ck.tensors.items():
        if k.endswith(".weight") and a.ndim >= 2:
            out[module_key(k[: -len(".weight")])] = (float(np.linalg.norm(a.astype(np.float64).ravel())),
                                                     tuple(a.shape))
    return out


def load_checkpoints(paths: Iterable[str | Path]) -> tuple[CheckpointScan, list[str]]:
    """Stream checkpoint files into the :class:`~diffdiag.model.CheckpointScan` that ``RunData.checkpoint_scan`` holds.

    Each file's header is parsed and its tensors are fed to
    :class:`~diffdiag.analyzers.checkpoints.CheckpointComparer`, one file at a
    time (the comparer keeps only the previous checkpoint's factors), so at
    most two checkpoints are in memory at once; the tensors are then dropped.

    A full (non-LoRA) state dict given together with LoRA files is their
    **base model**: it is not compared, and each LoRA module whose layer it
    holds (matched by :func:`module_key`, same shape) has its ΔW measured
    against that layer's ``‖W₀‖_F`` (``Comparison.base_norms``); a note says
    how many modules it covers.

    Parameters
    ----------
    paths : iterable of path
        Checkpoint files in comparison order (:func:`list_checkpoints` sorts
        them by step).

    Returns
    -------
    scan : CheckpointScan
        Headers and the comparison of the files that could be read.
    errors : list of str
        One line per file that could not be read (it is left out; the rest is compared).
    """
    from ..analyzers.checkpoints import CheckpointComparer

    paths = [Path(p) for p in paths]
    cmp = CheckpointComparer()
    infos: list[CheckpointInfo] = []
    by_note: dict[str, list[str]] = {}
    errors: list[str] = []
    headers: dict[Path, CheckpointHeader] = {}
    for p in paths:
        try:
            headers[p] = read_checkpoint_header(p)
        except InputError as exc:
            errors.append(str(exc))
    kinds = {h.kind for h in headers.values()}
    base: dict[str, tuple[float, tuple[int, ...]]] = {}
    base_names: list[str] = []
    if {"lora", "full"} <= kinds:
        for p, name in zip(paths, display_names(paths)):
            if p in headers and headers[p].kind == "full":
                try:
                    base.update(base_weights(p))
                    base_names.append(name)
                except InputError as exc:
                    errors.append(str(exc))
    matched: set[str] = set()
    lora_modules: set[str] = set()
    for p, name in zip(paths, display_names(paths)):
        header = headers.get(p)
        if header is None or name in base_names:
            continue
        try:
            ck = load_checkpoint(p, header)
        except InputError as exc:
            errors.append(str(exc))
            continue
        if header.kind == "lora":
            for m, v in ck.modules.items():
                lora_modules.add(m)
                b = base.get(module_key(m))
                if b is not None and b[1][0] == v.up.shape[0] and int(np.prod(b[1][1:])) == v.down.shape[1]:
                    cmp.base_norms[m] = b[0]
                    matched.add(m)
            cmp.add_lora(name, header.step, {m: (v.up, v.down, v.scale) for m, v in ck.modules.items()})
        else:
            cmp.add_full(name, header.step, ck.tensors)
        infos.append(CheckpointInfo(p, name, header.step, header.kind, header.scheme, dict(header.metadata)))
        for n in ck.notes:
            by_note.setdefault(n, []).append(name)
        del ck
    notes = [_note_line(n, names) for n, names in by_note.items()]
    if base_names:
        notes.append(f"{', '.join(base_names)}: a full state dict given with LoRA checkpoints, taken as their base "
                     f"model: {len(matched)} of {len(lora_modules)} LoRA modules are measured against its layers"
                     + ("" if len(matched) == len(lora_modules) else
                        " (the others against a layer of their width)") + ".")
    return CheckpointScan(infos, cmp.result(), notes), errors


def _note_line(note: str, names: list[str], shown: int = 3) -> str:
    """One line per note: the sentence and the checkpoints it applies to."""
    if len(names) == 1:
        return f"{names[0]}: {note}."
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{note} ({len(names)} checkpoints: {', '.join(names[:shown])}{more})."
