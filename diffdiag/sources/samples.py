"""Sample images written during training, found beside the checkpoints or in the log directory.

Where diffdiag looks (no extra flag; tracker sources fill ``run.samples`` themselves)
----------------------------------------------------------------------------------
* for every ``--checkpoints`` path: a folder named ``sample``, ``samples``,
  ``sample_images`` or ``validation`` inside it (a directory) or beside it
  (a file's folder, and that folder's parent) — kohya sd-scripts writes
  ``<output_dir>/sample/``;
* inside ``--logdir`` (searched to a depth of 3) — folders with the same names.

The step of an image comes from (first match):

1. ``step`` in the file name: ``step_1200.png``, ``sample-step001200-0.png``;
2. kohya's name ``<name>_<step:06d>_<prompt:02d>_<timestamp>.png`` (``e<epoch>`` counts epochs);
3. its folder: ``1200/``, ``step_1200/``, ``checkpoint-1200/``;
4. the only number in the file name.

Images with no step are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np

from ..model import ImageInput, RunData

SAMPLE_DIR_NAMES = ("sample", "samples", "sample_images", "validation")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

_STEP_IN_NAME = re.compile(r"(?:^|[^a-z])step[-_]?(\d+)", re.I)
_KOHYA = re.compile(r"(?:^|_)(e?)(\d{6})_(\d{2})(?:_|$)")
_DIR_STEP = re.compile(r"^(?:step[-_]?|checkpoint[-_]|global_step[-_]?)?(\d+)$", re.I)


def sample_step(path: str | Path) -> int | None:
    """The training step of a sample image from its file or folder name (rules in the module docstring)."""
    p = Path(path)
    m = _STEP_IN_NAME.search(p.stem)
    if m:
        return int(m.group(1))
    m = _KOHYA.search(p.stem)
    if m:
        return int(m.group(2))
    m = _DIR_STEP.match(p.parent.name)
    if m:
        return int(m.group(1))
    nums = re.findall(r"\d+", p.stem)
    if len(nums) == 1:
        return int(nums[0])
    return None


def find_sample_dirs(run: RunData) -> list[Path]:
    """Sample folders beside ``--checkpoints`` paths or inside ``--logdir`` (see the module docstring)."""
    roots: list[Path] = []
    for raw in run.inputs.get("checkpoints") or []:
        p = Path(raw)
        if p.is_dir():
            roots += [p, p.parent]
        else:
            roots += [p.parent, p.parent.parent]
    found: list[Path] = []
    for r in roots:
        for name in SAMPLE_DIR_NAMES:
            d = r / name
            if d.is_dir() and d not in found:
                found.append(d)
    logdir = run.inputs.get("logdir")
    if logdir:
        base = Path(logdir)
        base = base if base.is_dir() else base.parent
        for d in _walk_dirs(base, 3):
            if d.name.lower() in SAMPLE_DIR_NAMES and d not in found:
                found.append(d)
    return found


def _walk_dirs(base: Path, depth: int) -> Iterable[Path]:
    if depth < 0 or not base.is_dir():
        return
    try:
        children = sorted(c for c in base.iterdir() if c.is_dir() and not c.name.startswith("."))
    except OSError:
        return
    for c in children:
        yield c
        yield from _walk_dirs(c, depth - 1)


def _read_image(path: Path) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float32) / 65535.0
            else:
                im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
                a = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return np.clip(a, 0.0, 1.0)


def load_step_samples(dirs: Iterable[Path], per_step: int = 4, max_steps: int = 200) -> tuple[list[ImageInput],
                                                                                              list[str]]:
    """Read the sample images under ``dirs`` (recursively) that carry a step.

    Parameters
    ----------
    dirs : iterable of Path
    per_step : int
        At most this many images per step (first by name).
    max_steps : int
        At most this many steps, evenly spread over the run when there are more.

    Returns
    -------
    samples : list of ImageInput
        ``step`` set, sorted by step then path.
    notes : list of str
        Files that could not be read.
    """
    by_step: dict[int, list[Path]] = {}
    for d in dirs:
        for f in sorted(Path(d).rglob("*")):
            if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
                continue
            st = sample_step(f)
            if st is None:
                continue
            lst = by_step.setdefault(st, [])
            if f not in lst:
                lst.append(f)
    steps = sorted(by_step)
    if len(steps) > max_steps:
        idx = np.unique(np.linspace(0, len(steps) - 1, max_steps).round().astype(int))
        steps = [steps[i] for i in idx]
    out: list[ImageInput] = []
    notes: list[str] = []
    for st in steps:
        for f in sorted(by_step[st])[:per_step]:
            a = _read_image(f)
            if a is None:
                notes.append(f"{f}: sample image could not be read; skipped")
                continue
            out.append(ImageInput(a, str(f), step=st))
    return out, notes
