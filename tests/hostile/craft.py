"""Crafted hostile files for the hostile-input tests: each function writes one file and returns its path.

They are small on disk however large they claim to be (a PNG header of 144 MP, a zip member of
4 GiB, a safetensors header whose shape overflows int64): the point is what a reader does with the
claim, not with the bytes.

The inventory: every test declares the hostile inputs it crafts with :func:`crafts` — one entry per
crafted file, server or situation (a test with nine bad files declares nine), each with its source
kind (:data:`KINDS`) and the issue's class (:data:`CLASSES`). ``test_inventory.py`` checks the count
and the coverage and that ``docs/HOSTILE.md`` is the table of :data:`REGISTRY`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np


#: source kinds (the issue's "every source kind"; ``report`` is the output folder, ``samples`` the sample folders)
KINDS = {
    "tensorboard": "TensorBoard event files (`--logdir`)",
    "csv": "CSV logs (`--logdir`)",
    "jsonl": "JSONL logs (`--logdir`)",
    "wandb-file": "`.wandb` run files (`--wandb-run` folder or file)",
    "images": "`--images`",
    "latents": "`--latents`",
    "dataset": "`--dataset` images",
    "masks": "`--masks`",
    "checkpoints": "`--checkpoints` (safetensors, PEFT, `.pt`/`.ckpt`)",
    "samples": "sample folders beside `--checkpoints`",
    "tracker-media": "tracker media (W&B media and tables, MLflow images)",
    "wandb-offline": "offline W&B runs (records, artifact manifests, pushes)",
    "wandb-online": "online W&B runs (a fake W&B server on 127.0.0.1)",
    "mlflow": "MLflow runs, servers (real sockets on 127.0.0.1) and stores",
    "report": "the `--report` folder",
}
#: the issue's classes of hostile input
CLASSES = {
    "confinement": "confinement: paths that escape, writes outside diffdiag's outputs",
    "foreign-report": "foreign files and odd places in `--report`",
    "secrets": "canary secrets in environment variables and URLs",
    "kill": "SIGKILL during a push, then push again",
    "deadline": "deadlines: hanging/stalling servers, FIFOs, devices, sockets",
    "crash-memory": "crash/memory: deep JSON, huge/NUL files, long cells, claimed sizes",
    "integrity": "integrity: TensorBoard CRC, `.wandb` CRC, header-only and cut files",
    "bad-file": "one rule for bad files (unreadable, garbage, wrong content)",
    "warnings": "library warnings",
    "pixel-limit": "the 64 MP pixel limit (images and tracker media)",
    "absurd-steps": "absurd steps (non-finite, beyond int64, not numbers)",
}
#: the kinds and classes the issue's acceptance names: each must have crafted inputs
REQUIRED_KINDS = set(KINDS) - {"report", "samples"}
REQUIRED_CLASSES = set(CLASSES)


@dataclasses.dataclass(frozen=True)
class Crafted:
    """One crafted hostile input: a file, a server or a situation."""

    kind: str
    cls: str
    name: str
    test: str  # "module::function"


#: every crafted input the tests declare (filled when the test modules are imported)
REGISTRY: list[Crafted] = []

_F = TypeVar("_F", bound=Callable)


def crafts(kind: str, cls: str, *names: str) -> Callable[[_F], _F]:
    """Declare that the decorated test crafts ``names`` (one per hostile input) of ``kind`` and ``cls``.

    Stack it for inputs of several kinds or classes; a name is unique within its test.
    """
    if kind not in KINDS or cls not in CLASSES or not names:
        raise ValueError(f"unknown kind/class or no names: {kind!r} {cls!r} {names!r}")

    def deco(fn: _F) -> _F:
        test = f"{fn.__module__.rsplit('.', 1)[-1]}::{fn.__name__}"
        REGISTRY.extend(Crafted(kind, cls, n, test) for n in names)
        return fn

    return deco


def png_bytes(img: np.ndarray) -> bytes:
    """A real PNG of ``img`` (uint8, (H, W) or (H, W, 3)), encoded by PIL."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_bomb_bytes(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (grey, 8 bit) over a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _chunk(b"IEND", b"")


def png_header_bomb(path: Path, width: int, height: int) -> Path:
    """:func:`png_header_bomb_bytes` written to ``path``."""
    path.write_bytes(png_header_bomb_bytes(width, height))
    return path


def png_bad_crc(path: Path, img: np.ndarray) -> Path:
    """A real PNG with one flipped byte inside its image data (the chunk CRC no longer matches)."""
    data = bytearray(png_bytes(img))
    i = data.index(b"IDAT") + 8
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def truncated(path: Path, data: bytes, keep: float = 0.5) -> Path:
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def npy_claiming(path: Path, shape: tuple[int, ...], dtype: str = "<f4") -> Path:
    """An ``.npy`` whose header claims ``shape`` but holds 64 bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    pad = 64 - (10 + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(64))
    return path


def npy_object(path: Path) -> Path:
    """An ``.npy`` of Python objects (it needs pickle to load)."""
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return path


def npz_claiming(path: Path, gib: int = 8) -> Path:
    """An ``.npz`` whose members claim ``gib`` GiB unpacked (patched central directory; tiny on disk)."""
    a = np.zeros((2, 4, 8, 8), np.float32)
    np.savez(path, pre=a, post=a)
    data = bytearray(path.read_bytes())
    claim = min(0xFFFFFFF0, (gib << 30) // 2)
    pos = 0
    while True:  # central directory headers: PK\1\2, uncompressed size at offset 24
        pos = data.find(b"PK\x01\x02", pos)
        if pos < 0:
            break
        struct.pack_into("<I", data, pos + 24, claim)
        pos += 4
    path.write_bytes(bytes(data))
    return path


def safetensors_raw(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    """A ``.safetensors`` file with ``header`` (a JSON value, or raw bytes) and ``data``; ``length`` overrides
    the declared header length."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(blob) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + blob + data)
    return path


def lora_tensors(rng: np.random.Generator, scale: float = 1.0, rank: int = 4, dim: int = 32,
                 modules: int = 3, nan: bool = False, alpha: bool = True) -> dict[str, np.ndarray]:
    """kohya-named LoRA factors for ``modules`` modules."""
    out = {}
    for m in range(modules):
        name = f"lora_unet_down_blocks_{m}_attentions_0_proj_in"
        up = (rng.standard_normal((dim, rank)) * 0.02 * scale).astype(np.float32)
        if nan and m == 0:
            up[0, 0] = np.nan
        out[f"{name}.lora_down.weight"] = (rng.standard_normal((rank, dim)) * 0.1).astype(np.float32)
        out[f"{name}.lora_up.weight"] = up
        if alpha:
            out[f"{name}.alpha"] = np.array(float(rank), np.float32)
    return out


def peft_adapter(folder: Path, rng: np.random.Generator, config: dict) -> Path:
    """A PEFT adapter folder: ``adapter_model.safetensors`` (lora_A/lora_B keys) and ``adapter_config.json``."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    t = {}
    for m in range(2):
        base = f"base_model.model.down_blocks.{m}.attentions.0.proj_in"
        t[f"{base}.lora_A.weight"] = (rng.standard_normal((4, 32)) * 0.1).astype(np.float32)
        t[f"{base}.lora_B.weight"] = (rng.standard_normal((32, 4)) * 0.02).astype(np.float32)
    save_file(t, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder / "adapter_model.safetensors"


def evil_pickle(path: Path) -> Path:
    """A ``.pt``-named zip that torch would unpickle: its pickle calls ``os.system`` (never allowed to run)."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/diffdiag-hostile-pwned",))

    payload = pickle.dumps(Evil(), protocol=2)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    return path


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


__all__ = ["CLASSES", "Crafted", "KINDS", "REGISTRY", "crafts", "evil_pickle", "lora_tensors", "make_fifo",
           "npy_claiming", "npy_object", "npz_claiming", "peft_adapter", "png_bad_crc", "png_bytes", "png_header_bomb",
           "png_header_bomb_bytes", "safetensors_raw", "truncated"]
