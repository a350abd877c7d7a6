"""Read saved latents (docs/CONTRACT.md §2): ``*.npy``, ``*.npz``, ``*.pt``, ``*.safetensors``.

A file holds one array ``[B, C, H, W]`` (or ``[C, H, W]``) or the named arrays
``pre``/``post`` (aliases ``noisy_latents``/``model_pred`` and
``input``/``output``). The step is the last integer in the file name. A file
that cannot be used adds one line to ``run.input_errors`` naming it and the
problem; the others still load (the CLI exits 2 after the analysis). Non-finite values are data: they are kept
(and noted in ``run.warnings``) for the latent checks to report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..model import LatentFile, RunData

SUFFIXES = (".npy", ".npz", ".pt", ".safetensors")
#: the most an ``.npz`` file's arrays may take unpacked (a small file can claim terabytes)
MAX_NPZ_BYTES = 4 << 30
_ALIASES = {"pre": "pre", "noisy_latents": "pre", "input": "pre",
            "post": "post", "model_pred": "post", "output": "post"}


class _BadFile(Exception):
    """A latent file that cannot be used (the message says why)."""


def step_from_name(name: str) -> int | None:
    """The last integer in a file name's stem, or None (``"lat_step_00420.npy"`` -> 420)."""
    nums = re.findall(r"\d+", Path(name).stem)
    return int(nums[-1]) if nums else None


def _read_raw(path: Path) -> dict[str, Any]:
    """Arrays stored in one file, by name (``"latents"`` for an unnamed array)."""
    from ..safeio import require_regular_file

    require_regular_file(path)  # a FIFO or device is refused unopened
    suf = path.suffix.lower()
    if suf == ".npy":
        return {"latents": _read_npy(path)}
    if suf == ".npz":
        import zipfile

        with zipfile.ZipFile(path) as zf:
            claimed = sum(i.file_size for i in zf.infolist())
        if claimed > MAX_NPZ_BYTES:
            raise _BadFile(f"its arrays would take {claimed / 2**30:.1f} GiB unpacked (more than "
                           f"{MAX_NPZ_BYTES >> 30} GiB): refused without unpacking")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if suf == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if suf == ".pt":
        try:
            import torch
        except ModuleNotFoundError:
            raise _BadFile("reading .pt latents needs torch: pip install 'diffdiag[torch]' "
                           "(or save latents as .npy/.safetensors)") from None
        import pickle

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise _BadFile("refused: it holds Python objects that would run code when unpickled (latents are "
                           "loaded with weights_only=True)") from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as exc:
            raise _BadFile(f"not a readable torch file ({type(exc).__name__}: {str(exc).strip()[:120]})") from None
        return _from_torch(obj)
    raise _BadFile(f"unsupported latent file type {suf!r}")


def _read_npy(path: Path) -> np.ndarray:
    """An ``.npy`` array, memory-mapped after its header is checked against the file's size.

    Raises
    ------
    _BadFile
        The header is not an array header, claims Python objects (pickle), a negative
        shape, or more bytes than the file holds.
    """
    import math

    fmt = np.lib.format
    with open(path, "rb") as fh:
        try:
            version = fmt.read_magic(fh)
            shape, fortran, dtype = (fmt.read_array_header_1_0(fh) if version == (1, 0)
                                     else fmt.read_array_header_2_0(fh))
        except (ValueError, OSError, SyntaxError, TypeError) as exc:
            raise _BadFile(f"not a NumPy .npy file ({str(exc).strip()[:120]})") from None
        offset = fh.tell()
    if dtype.hasobject:
        raise _BadFile("holds Python objects (loading them would run pickle); refused")
    if any(int(d) < 0 for d in shape):
        raise _BadFile(f"its header claims a negative shape {list(shape)}")
    need = math.prod(int(d) for d in shape) * dtype.itemsize
    have = path.stat().st_size - offset
    if need > have:
        raise _BadFile(f"its header claims shape {list(shape)} {dtype} ({need} bytes) but the file holds "
                       f"{have}: truncated or not a latent file")
    if need == 0:
        return np.zeros(shape, dtype)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _from_torch(obj: Any) -> dict[str, Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return {"latents": obj.detach().float().numpy()}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                out[str(k)] = v.detach().float().numpy()
        if not out:
            raise _BadFile("the .pt file holds a dict without tensors")
        return out
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(v, torch.Tensor) for v in obj):
        return {"latents": torch.stack([v.detach().float() for v in obj]).numpy()}
    raise _BadFile(f"the .pt file holds a {type(obj).__name__}, not a tensor or a dict of tensors")


def _as_bchw(arr: Any, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind not in "fiub":
        raise _BadFile(f"{what} has dtype {a.dtype}, expected numbers")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise _BadFile(f"{what} has shape {list(a.shape)}: expected [B, C, H, W] or [C, H, W]")
    if min(a.shape) == 0:
        raise _BadFile(f"{what} is empty (shape {list(a.shape)})")
    return a.astype(np.float32, copy=False)


def normalize_arrays(raw: dict[str, Any]) -> dict[str, np.ndarray]:
    """Map a file's raw arrays to ``{"latents": ...}`` or ``{"pre": ..., "post": ...}`` of shape (B, C, H, W).

    Raises
    ------
    _BadFile
        When no usable array is present or shapes are wrong.
    """
    named = {_ALIASES[k.lower()]: v for k, v in raw.items() if k.lower() in _ALIASES}
    if named:
        out = {k: _as_bchw(v, f"array '{k}'") for k, v in named.items()}
        if "pre" in out and "post" in out and out["pre"].shape != out["post"].shape:
            raise _BadFile(f"'pre' {list(out['pre'].shape)} and 'post' {list(out['post'].shape)} differ in shape")
        return out
    if len(raw) == 1:
        (v,) = raw.values()
        return {"latents": _as_bchw(v, "the array")}
    if "latents" in raw:
        return {"latents": _as_bchw(raw["latents"], "array 'latents'")}
    raise _BadFile(f"holds arrays {sorted(raw)}; expected one array or 'pre'/'post' "
                   "(aliases noisy_latents/model_pred, input/output)")


def load_latent_file(path: Path) -> LatentFile:
    """Load one latent file.

    Raises
    ------
    _BadFile
        With a message saying what is wrong.
    """
    try:
        raw = _read_raw(path)
    except _BadFile:
        raise
    except InputError as exc:
        raise _BadFile(exc.message) from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unreadable
        raise _BadFile(f"unreadable ({type(exc).__name__}: {str(exc).strip()[:160]})") from None
    return LatentFile(str(path), step_from_name(path.name), normalize_arrays(raw))


def find_latent_files(path: Path) -> list[Path]:
    """Latent files under ``path`` (recursive) or ``[path]``, ordered by step then name.

    Raises
    ------
    InputError
        ``path`` is neither a folder nor a regular file (a FIFO, a device, a socket).
    """
    if not path.is_dir():
        from ..safeio import require_regular_file

        return [require_regular_file(path)]
    # not only regular files: a FIFO or a link to nowhere named like a latent file is reported, never opened
    files = [p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and not p.is_dir()]
    return sorted(files, key=lambda p: (step_from_name(p.name) is None, step_from_name(p.name) or 0, str(p)))


def load_latents(path: str | Path, run: RunData) -> list[LatentFile]:
    """Load every latent file under ``path``.

    Parameters
    ----------
    path : str or Path
        A directory (searched recursively) or one file.
    run : RunData
        Each file that cannot be used is one line in ``run.input_errors`` (naming it and
        the problem); notes (non-finite values) go to ``run.warnings``.

    Returns
    -------
    list of LatentFile
        Ordered by step; arrays float32 of shape (B, C, H, W); empty when no file could be read.

    Raises
    ------
    InputError
        When no latent file is there at all.
    """
    path = Path(path)
    files = find_latent_files(path)
    if not files:
        raise InputError(f"no latent files ({', '.join(SUFFIXES)}) found", path)
    out: list[LatentFile] = []
    problems: list[str] = []
    for p in files:
        try:
            lf = load_latent_file(p)
        except _BadFile as exc:
            problems.append(f"{p}: {exc}")
            run.input_errors.append(f"{p}: {exc}; skipped")
            continue
        for key, arr in lf.arrays.items():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if bad:
                run.warnings.append(f"latents: {p}: array '{key}' holds {bad} non-finite values "
                                    f"({100.0 * bad / arr.size:.2g}%); statistics use the finite ones")
        out.append(lf)
    if not out:
        return out  # every file is named in run.input_errors
    if len({lf.arrays[_main_key(lf)].shape[1] for lf in out}) > 1:
        run.warnings.append("latents: files differ in channel count; batch comparisons use files with the "
                            "most common channel count")
    return out


def _main_key(lf: LatentFile) -> str:
    return "latents" if "latents" in lf.arrays else ("pre" if "pre" in lf.arrays else "post")
