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

from ..model import ImageInput

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


def find_sample_dirs(checkpoints: Iterable[str | Path] = (), logdir: str | Path | None = None) -> list[Path]:
    """Sample folders beside the ``--checkpoints`` paths or inside ``--logdir`` (see the module docstring).

    Parameters
    ----------
    checkpoints : iterable of path
        The checkpoint paths as given (files or folders).
    logdir : path, optional
        The log file or folder.
    """
    roots: list[Path] = []
    for raw in checkpoints:
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
    if logdir:
        base = Path(logdir)
        base = base if base.is_dir() else base.parent
        for d in _walk_dirs(base, 3):
            if d.name.lower() in SAMPLE_DIR_NAMES and d not in found:
                found.append(d)
    return found


def load_sample_folders(checkpoints: Iterable[str | Path] = (), logdir: str | Path | None = None, *,
                        per_step: int = 4, max_steps: int = 200) -> tuple[list[ImageInput], list[str]]:
    """Find the sample folders of a run (:func:`find_sample_dirs`) and read their images (:func:`load_step_samples`).

    The one entry point for ``RunData.samples`` from disk; callers add the
    result to ``run.samples`` (deduplicated by path) and the notes to ``run.warnings``.

    Returns
    -------
    samples : list of ImageInput
        ``step`` set, sorted by step then path (empty when no folder is found).
    notes : list of str
        Files that could not be read (at most 20 lines).
    """
    dirs = find_sample_dirs(checkpoints, logdir)
    if not dirs:
        return [], []
    samples, notes = load_step_samples(dirs, per_step=per_step, max_steps=max_steps)
    if len(notes) > 20:
        notes = notes[:20] + [f"{len(notes) - 20} more sample images could not be read"]
    return samples, notes


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


def _read_image(path: Path) -> np.ndarray | str:
    """The sample's pixels (see :func:`diffdiag.sources.decode.decode_image`), or why it cannot be read."""
    from ..errors import InputError
    from .decode import decode_image

    try:
        return decode_image(path)
    except InputError as exc:
        return exc.message


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
            if isinstance(a, str):
                notes.append(f"{f}: sample image could not be read ({a}); skipped")
                continue
            out.append(ImageInput(a, str(f), step=st))
    return out, notes
