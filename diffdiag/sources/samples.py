"""Sample images logged during training: labels, step selection, TensorBoard images, sample folders.

Every logged sample becomes an :class:`~diffdiag.model.ImageInput` with its
``step``, ``source`` (``tensorboard``, ``wandb``, ``mlflow`` or ``folder``),
``key`` and ``index``, labelled uniquely by :func:`sample_label`
(``tensorboard:validation@500#1``: the second image of tag ``validation`` at
step 500; a folder's sample is labelled by its file path). Every source picks
the same way (:func:`pick_by_step`): per key at most :data:`MAX_SAMPLE_STEPS`
steps, evenly spread with the first and the last kept, and at most
:data:`PER_STEP` images of each of them.

TensorBoard image summaries (:func:`decode_logged_images`)
---------------------------------------------------------
:func:`diffdiag.sources.logs.load_logs` hands over the encoded images of the
event files (:class:`EncodedImage`): ``Summary.Value.image`` (what PyTorch's
``SummaryWriter.add_image(s)`` and TF1 write) and the ``images`` plugin's
string tensors (TF2 ``tf.summary.image``: ``[width, height, png, ...]``).
``add_images`` writes one grid of its N images (``make_grid``: up to 8 columns,
no padding, unused cells black); a grid of square tiles (width a whole
multiple of height, at most 8 of them, or 8 columns of square tiles in several
rows) is split back into its images (:func:`split_grid`), the black filler
cells of a last row dropped. A TF1 tag ``name/image/<i>`` is key ``name``,
index ``i``.

Sample folders (:func:`load_sample_folders`)
--------------------------------------------
Where diffdiag looks (no extra flag; tracker sources fill ``run.samples`` themselves):

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np

from ..model import ImageInput

T = TypeVar("T")
#: the sources of logged samples (``ImageInput.source``)
SAMPLE_SOURCES = ("tensorboard", "wandb", "mlflow", "folder")
#: per key (tag, history key, folder) at most this many steps are read, evenly spread (first and last kept) ...
MAX_SAMPLE_STEPS = 32
#: ... and at most this many images of each step (first by index)
PER_STEP = 4
#: a TensorBoard grid has at most this many columns (``make_grid``'s ``ncols``)
GRID_COLUMNS = 8

SAMPLE_DIR_NAMES = ("sample", "samples", "sample_images", "validation")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

_STEP_IN_NAME = re.compile(r"(?:^|[^a-z])step[-_]?(\d+)", re.I)
_KOHYA = re.compile(r"(?:^|_)(e?)(\d{6})_(\d{2})(?:_|$)")
_DIR_STEP = re.compile(r"^(?:step[-_]?|checkpoint[-_]|global_step[-_]?)?(\d+)$", re.I)


def sample_label(source: str, key: str, step: int | None, index: int = 0) -> str:
    """The unique label of a logged sample: ``<source>:<key>@<step>#<index>`` (``wandb:validation@500#1``)."""
    return f"{source}:{key}@{'?' if step is None else int(step)}#{int(index)}"


def spread(values: Sequence[T], limit: int) -> list[T]:
    """At most ``limit`` of ``values``, evenly spread over them, the first and the last kept (order kept)."""
    n = len(values)
    if n <= limit:
        return list(values)
    if limit <= 1:
        return [values[-1]] if limit == 1 else []
    idx = np.unique(np.linspace(0, n - 1, limit).round().astype(int))
    return [values[i] for i in idx]


def pick_by_step(items: Iterable[T], step_of: Callable[[T], int | None], *, max_steps: int = MAX_SAMPLE_STEPS,
                 per_step: int = PER_STEP) -> list[T]:
    """The items of one key to read: at most ``max_steps`` steps (:func:`spread`), ``per_step`` items of each.

    Parameters
    ----------
    items : iterable
        The key's items in their order within a step (index order).
    step_of : callable
        ``step_of(item) -> int | None``; items without a step come last, as one group.
    max_steps, per_step : int

    Returns
    -------
    list
        The picked items, by step, each step's in the given order.
    """
    by_step: dict[int | None, list[T]] = {}
    for it in items:
        by_step.setdefault(step_of(it), []).append(it)
    steps = sorted((s for s in by_step if s is not None))
    keep = spread(steps, max_steps) + ([None] if None in by_step else [])
    return [it for st in keep for it in by_step[st][:per_step]]


#: between two layouts, the finer one's own tile boundaries must be this many times sharper than the picture's
#: other neighbour steps (and than its steps on the 8-pixel grid of a VAE's latent cells)
SEAM_RATIO = 2.0
#: the smallest tile of a grid with several rows
MIN_TILE = 32


def _grid_layouts(h: int, w: int, max_columns: int) -> list[tuple[int, int, int]]:
    """``(tile, rows, cols)`` of the square-tile grids ``make_grid`` can draw at this size, coarsest first."""
    out = []
    if w > h and w % h == 0 and w // h <= max_columns:
        out.append((h, 1, w // h))
    t = w // max_columns
    if w % max_columns == 0 and t >= MIN_TILE and h % t == 0 and h // t >= 2:
        out.append((t, h // t, max_columns))
    return out


def _seam_ratio(gray: np.ndarray, tile: int, rows: int, cols: int, coarse: int) -> float:
    """How much sharper the boundaries of ``tile``-sized cells that are not on the ``coarse`` grid are than the
    picture's other neighbour steps (the median, and the median of those on its 8-pixel grid)."""
    cd = np.abs(np.diff(gray, axis=1)).mean(axis=0)   # cd[j]: the step between columns j and j + 1
    rd = np.abs(np.diff(gray, axis=0)).mean(axis=1)
    bc = [k * tile - 1 for k in range(1, cols) if (k * tile) % coarse]
    br = [k * tile - 1 for k in range(1, rows) if (k * tile) % coarse]
    all_c = [k * tile - 1 for k in range(1, cols)]
    all_r = [k * tile - 1 for k in range(1, rows)]
    if not bc and not br:
        return 0.0
    seams = np.concatenate([cd[bc], rd[br]])
    ic, ir = np.delete(np.arange(cd.size), all_c), np.delete(np.arange(rd.size), all_r)
    inner = np.concatenate([cd[ic], rd[ir]])
    on8 = np.concatenate([cd[ic[(ic + 1) % 8 == 0]], rd[ir[(ir + 1) % 8 == 0]]])
    base = max(float(np.median(inner)), float(np.median(on8)) if on8.size else 0.0)
    return float(seams.mean() / (base + 1e-4))


def split_grid(image: np.ndarray, *, max_columns: int = GRID_COLUMNS, seam_ratio: float = SEAM_RATIO
               ) -> list[np.ndarray]:
    """The images of a TensorBoard ``add_images`` grid of square tiles (see the module docstring).

    ``make_grid`` draws N images in ``min(N, 8)`` columns and as many rows as needed, without
    padding, unused cells black. A picture ``k`` times as wide as high (k ≤ 8) is one row of k
    images; eight columns of square tiles of at least :data:`MIN_TILE` pixels in several rows are
    a grid of more than eight. When both fit (2, 4 or 8 rows), the rows win when the last row
    ends in black filler cells or the small tiles' own boundaries are seams (their steps
    ``seam_ratio`` times the picture's other neighbour steps).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Float in [0, 1].
    max_columns : int
        ``make_grid``'s column count (8 in PyTorch and tensorboardX).
    seam_ratio : float
        How much sharper (mean absolute luminance step) the boundaries must be.

    Returns
    -------
    list of ndarray
        The tiles, row by row, each (t, t[, C]); ``[image]`` when it is no such grid. The black
        filler cells of a last row are dropped.
    """
    h, w = image.shape[:2]
    layouts = _grid_layouts(h, w, max_columns)
    if not layouts:
        return [image]
    tile, rows, cols = layouts[-1]
    if len(layouts) == 2:
        from ..analyzers.spectral import to_gray

        gray = to_gray(np.where(np.isfinite(image), image, 0).astype(np.float32)).astype(np.float32)
        last = [bool(np.any(image[(rows - 1) * tile:, c * tile:(c + 1) * tile])) for c in range(cols)]
        filler = not all(last) and any(last) and last == sorted(last, reverse=True)
        if not filler and _seam_ratio(gray, tile, rows, cols, layouts[0][0]) < seam_ratio:
            tile, rows, cols = layouts[0]
    tiles = [image[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] for r in range(rows) for c in range(cols)]
    if rows > 1:
        used = [bool(np.any(t)) for t in tiles[-cols:]]
        n_used = max((i + 1 for i, u in enumerate(used) if u), default=0)
        if 0 < n_used < cols:
            tiles = tiles[:len(tiles) - cols + n_used]
    return tiles


@dataclass
class EncodedImage:
    """One encoded image a log file holds (read by :mod:`diffdiag.sources.logs`, decoded here).

    Attributes
    ----------
    key : str
        The tag it was logged under.
    step : int
    index : int
        Its position among the images of that tag and step (before a grid is split).
    data : bytes
        The encoded image (PNG, JPEG, ...).
    file : str
        The log file it came from (for messages).
    source : str
        ``"tensorboard"``.
    """

    key: str
    step: int
    index: int
    data: bytes
    file: str
    source: str = "tensorboard"


def decode_logged_images(encoded: Iterable[EncodedImage], *, max_steps: int = MAX_SAMPLE_STEPS,
                         per_step: int = PER_STEP) -> tuple[list[ImageInput], list[str]]:
    """Decode the encoded images of the logs into samples (grids split; :func:`pick_by_step` per key).

    Returns
    -------
    samples : list of ImageInput
        ``source``, ``key``, ``step``, ``index`` set; labelled by :func:`sample_label`.
    errors : list of str
        One line per image that does not decode, naming the file, tag and step (the rest is read).
    """
    from ..errors import InputError
    from .decode import decode_image

    by_key: dict[tuple[str, str], list[EncodedImage]] = {}
    for e in encoded:
        by_key.setdefault((e.source, e.key), []).append(e)
    out: list[ImageInput] = []
    errors: list[str] = []
    for (source, key), items in by_key.items():
        items.sort(key=lambda e: (e.step, e.index))
        tiles: list[tuple[int, np.ndarray, EncodedImage]] = []
        for e in pick_by_step(items, lambda e: e.step, max_steps=max_steps, per_step=per_step):
            try:
                arr = decode_image(e.data, name=f"{e.file} ({source} image {key!r} at step {e.step})")
            except InputError as exc:
                errors.append(f"{exc}; skipped")
                continue
            tiles.extend((e.step, t, e) for t in split_grid(arr))
        index: dict[int, int] = {}
        for step, t, e in tiles:
            i = index.get(step, 0)
            index[step] = i + 1
            if i >= per_step:
                continue
            item = ImageInput(np.ascontiguousarray(t), sample_label(source, key, step, i), step=step,
                              source=source, key=key, index=i)
            item.notes.append(f"{source} image {key!r} in {e.file}")
            out.append(item)
    out.sort(key=lambda s: (s.step, s.key or "", s.index))
    return out, errors


def samples_summary(samples: Iterable[ImageInput]) -> dict[str, Any]:
    """What ``diagnosis.json["inputs"]["samples"]`` says: the count, and per source and key its images and steps.

    Returns
    -------
    dict
        ``{"count": n, "series": [{"source", "key", "images", "steps": [int, ...]}, ...]}`` (series sorted by
        source, then key).
    """
    series: dict[tuple[str, str], dict[str, Any]] = {}
    n = 0
    for s in samples:
        n += 1
        src, key = s.source or "other", s.key or ""
        d = series.setdefault((src, key), {"source": src, "key": key, "images": 0, "steps": set()})
        d["images"] += 1
        if s.step is not None:
            d["steps"].add(int(s.step))
    rows = [{**d, "steps": sorted(d["steps"])} for _, d in sorted(series.items())]
    return {"count": n, "series": rows}


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
                        per_step: int = PER_STEP, max_steps: int = MAX_SAMPLE_STEPS
                        ) -> tuple[list[ImageInput], list[str]]:
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


def load_step_samples(dirs: Iterable[Path], per_step: int = PER_STEP, max_steps: int = MAX_SAMPLE_STEPS
                      ) -> tuple[list[ImageInput], list[str]]:
    """Read the sample images under ``dirs`` (recursively) that carry a step.

    Parameters
    ----------
    dirs : iterable of Path
        Sample folders; each is one key (``ImageInput.key``: the folder's path).
    per_step : int
        At most this many images per step and folder (first by name).
    max_steps : int
        At most this many steps per folder, evenly spread over the run (first and last kept).

    Returns
    -------
    samples : list of ImageInput
        ``step``, ``source="folder"``, ``key``, ``index`` set; labelled by the file path; sorted by step then path.
    notes : list of str
        Files that could not be read.
    """
    out: list[ImageInput] = []
    notes: list[str] = []
    seen: set[Path] = set()
    for d in dirs:
        files: list[tuple[int, Path]] = []
        for f in sorted(Path(d).rglob("*")):
            if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file() or f in seen:
                continue
            st = sample_step(f)
            if st is None:
                continue
            seen.add(f)
            files.append((st, f))
        index: dict[int, int] = {}
        for st, f in pick_by_step(files, lambda t: t[0], max_steps=max_steps, per_step=per_step):
            a = _read_image(f)
            if isinstance(a, str):
                notes.append(f"{f}: sample image could not be read ({a}); skipped")
                continue
            i = index.get(st, 0)
            index[st] = i + 1
            out.append(ImageInput(a, str(f), step=st, source="folder", key=str(d), index=i))
    out.sort(key=lambda s: (s.step, s.path))
    return out, notes
