"""Stream a training-set folder (``--dataset``, ``--masks``) into per-image statistics.

Images (PNG/JPEG/WebP, searched recursively) are decoded in worker processes
(default 2) and reduced *in the worker* to a few numbers — brightness,
contrast, tile periods, the mask verdict — so memory stays flat however large
the folder is: only those numbers (a few dozen bytes per image) come back, and
at most a small window of tasks is in flight. Masks are matched to images by
file stem. A rich progress bar is shown on stderr when it is a terminal.

Unreadable, truncated or decompression-bomb-sized images (and masks) are
skipped and listed (``DatasetScan.unreadable``; an unreadable mask is a
``dataset_invalid_mask`` with its path); :func:`diffdiag.sources.load_run`
turns each into one line of ``RunData.input_errors`` naming the file. The rest
of the set is still analysed.
"""

from __future__ import annotations

import os
import sys
from array import array
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import InputError
from ..model import DatasetScan

__all__ = ["DatasetScan", "ScanBuilder", "analyze_image", "decode_luminance", "index_masks", "iter_images",
           "load_dataset", "read_mask_array", "scan_dataset"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MASK_SUFFIXES = IMAGE_SUFFIXES + (".bmp", ".tif", ".tiff", ".gif")
#: below this many images the set is analysed in-process (starting workers costs more)
POOL_MIN_IMAGES = 48
#: images per task sent to a worker
CHUNK = 16
#: luminance statistics use at most about this many pixels (strided subsample)
STATS_PIXELS = 256 * 256


def iter_images(root: Path) -> Iterator[Path]:
    """Image files under ``root`` (recursive, sorted per folder, hidden entries skipped)."""
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                subdirs.append(Path(e.path))
            elif e.name.lower().endswith(IMAGE_SUFFIXES):
                yield Path(e.path)
        stack.extend(reversed(subdirs))


def index_masks(masks_dir: Path) -> dict[str, Path]:
    """Mask files under ``masks_dir`` by stem (recursive; the first found wins on duplicates)."""
    out: dict[str, Path] = {}
    for p in sorted(masks_dir.rglob("*")):
        if p.is_file() and p.suffix.lower() in MASK_SUFFIXES and not p.name.startswith("."):
            out.setdefault(p.stem, p)
    return out


class _Unreadable(Exception):
    pass


def decode_luminance(path: str | Path, need_color: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode an image (:func:`diffdiag.sources.decode.decode_image`) to luminance and, on request, colour.

    Returns
    -------
    lum : ndarray of float32, shape (H, W)
        Rec. 601 luma in [0, 1] (float images as stored).
    color : ndarray of float32, (H, W, 3) or (H, W), or None
        The pixels, alpha ignored (only when ``need_color``).

    Raises
    ------
    _Unreadable
        With a short reason (truncated, not an image, decompression bomb, ...).
    """
    from ..analyzers.dataset import luminance
    from .decode import decode_image

    try:
        a = decode_image(path, alpha="drop")  # the colour a trainer's convert("RGB") feeds the model
    except InputError as exc:
        raise _Unreadable(exc.message) from None
    return luminance(a), (a if need_color else None)


def read_mask_array(path: str | Path) -> np.ndarray:
    """Decode a mask keeping its raw levels (palette indices for 'P' images)."""
    from .decode import decode_image

    try:
        return decode_image(path, raw=True)
    except InputError as exc:
        raise _Unreadable(exc.message) from None


def analyze_image(path: str, mask_path: str | None, threshold: float | None) -> dict[str, Any]:
    """Decode one image (and its mask) and reduce it to the dataset features.

    Returns
    -------
    dict
        ``size`` [w, h], ``mean``, ``std``, ``p01``, ``p99`` (luminance, [0, 1]), ``clip_lo``,
        ``clip_hi`` (per channel value), ``corr`` (:func:`diffdiag.analyzers.dataset.garbage_stats`, full
        resolution), ``tiling``
        (see :func:`diffdiag.analyzers.dataset.tiling_features`),
        ``mask_problem`` / ``mask_evidence`` (when a mask was given), or
        ``error`` (a reason) when the image cannot be read.
    """
    from ..analyzers.dataset import garbage_stats, luminance_stats, tiling_features
    from ..analyzers.masks import check_mask

    try:
        lum, color = decode_luminance(path, need_color=True)  # the decoded pixels (clipping is per channel)
    except _Unreadable as exc:
        return {"error": str(exc)}
    h, w = lum.shape
    stride = max(1, int(np.sqrt(h * w / STATS_PIXELS)))
    rec: dict[str, Any] = {"size": [int(w), int(h)], **luminance_stats(lum[::stride, ::stride]),
                           **garbage_stats(lum, color), "tiling": tiling_features(lum, threshold=threshold)}
    if mask_path is not None:
        try:
            m = read_mask_array(mask_path)
        except _Unreadable as exc:
            rec["mask_problem"], rec["mask_evidence"] = "unreadable", {"reason": str(exc)}
        else:
            img = color if color is not None and color.ndim == 3 else lum
            problem, ev = check_mask(m, (h, w), img)
            rec["mask_problem"], rec["mask_evidence"] = problem, ev
    return rec


def _analyze_chunk(items: list[tuple[str, str | None]], threshold: float | None) -> list[dict[str, Any]]:
    return [analyze_image(p, m, threshold) for p, m in items]


def _progress_bar(total: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("diffdiag: dataset"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)


def _pool_context(mp):
    """A fork-server context with this module preloaded: workers start without re-importing
    numpy/scipy/PIL (cheap like fork) yet never inherit the caller's threads (safe unlike fork)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "diffdiag.analyzers.dataset", "diffdiag.analyzers.spectral",
                                "diffdiag.analyzers.masks", "PIL.Image", "scipy.fft", "scipy.ndimage"])
    return ctx


class ScanBuilder:
    """Fold per-image records of :func:`analyze_image` into a :class:`DatasetScan`, in scan order.

    The one place records become the scan, for every engine (this module's process pool,
    Ray Data in :mod:`diffdiag.triage.ray_dataset`): records folded in the same order give
    the same scan, bit for bit, however they were computed.

    Parameters
    ----------
    root : Path
        The dataset folder (or URI) the relative paths are under.
    masks_dir : Path, optional
        Where masks were matched.
    """

    def __init__(self, root: Path, masks_dir: Path | None = None) -> None:
        self.scan = DatasetScan(root, masks_dir=masks_dir)
        self._stats: dict[str, array] = {k: array("f") for k in ("mean", "std", "p01", "p99", "clip_lo",
                                                                   "clip_hi", "corr")}

    def pair_masks(self, paths: list[str], mask_index: dict[str, str] | None) -> list[str | None]:
        """The mask of each image (by file stem; None without one), counting matches and orphans."""
        if mask_index is None:
            return [None] * len(paths)
        scan, stems, out = self.scan, set(), []
        for p in paths:
            stem = Path(p).stem
            stems.add(stem)
            m = mask_index.get(stem)
            if m is None:
                scan.images_without_mask += 1
            else:
                scan.n_masks_matched += 1
            out.append(m)
        scan.orphan_masks = sum(1 for s in mask_index if s not in stems)
        return out

    def add(self, rel: str, rec: dict[str, Any], mask: str | None = None) -> None:
        """Fold one image's record (``rel``: its path relative to the root, POSIX separators)."""
        scan = self.scan
        if "error" in rec:
            scan.unreadable.append((rel, rec["error"]))
            return
        i = len(scan.files)
        scan.files.append(rel)
        scan.sizes.append(tuple(rec["size"]))
        for k, v in self._stats.items():
            v.append(rec[k])
        if any(v is not None for v in rec["tiling"]["period"]):
            scan.tiling[i] = rec["tiling"]
        if rec.get("mask_problem"):
            ev = dict(rec.get("mask_evidence", {}))
            if rec["mask_problem"] == "unreadable":
                ev["mask"] = mask  # the bad file itself (RunData.input_errors names it)
            scan.masks[i] = (rec["mask_problem"], ev)

    def count(self) -> int:
        """Records folded so far."""
        return len(self.scan.files) + len(self.scan.unreadable)

    def finish(self) -> DatasetScan:
        """The scan (its statistics as float32 arrays)."""
        for k, v in self._stats.items():
            setattr(self.scan, k, np.frombuffer(v, np.float32).copy())
        return self.scan


def scan_dataset(root: str | Path, masks_dir: str | Path | None = None, threshold: float | None = None,
                 workers: int = 2, progress: bool = True, max_in_flight: int | None = None,
                 on_chunk: Callable[[int], None] | None = None) -> DatasetScan:
    """Stream every image under ``root`` through :func:`analyze_image`.

    Parameters
    ----------
    root : str or Path
        Dataset folder (searched recursively for PNG/JPEG/WebP).
    masks_dir : str or Path, optional
        Masks, matched to images by file stem.
    threshold : float, optional
        ``--fft-threshold`` for tile-period significance.
    workers : int
        Decoder processes (0 or 1: in this process). Small sets (fewer than
        :data:`POOL_MIN_IMAGES`) are always analysed in-process.
    progress : bool
        Show a progress bar on stderr (only when it is a terminal).
    max_in_flight : int, optional
        Chunks queued at once (default ``4 * workers``): bounds memory.

    Returns
    -------
    DatasetScan

    Raises
    ------
    InputError
        When the folder holds no image files.
    """
    root = Path(root)
    paths = [str(p) for p in iter_images(root)]  # strings: a Path object per image would weigh ~5x more
    if not paths:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found", root)
    mask_index = index_masks(Path(masks_dir)) if masks_dir is not None else None
    builder = ScanBuilder(root, Path(masks_dir) if masks_dir is not None else None)
    masks = builder.pair_masks(paths,
                               None if mask_index is None else {k: str(v) for k, v in mask_index.items()})
    items: list[tuple[str, str | None]] = list(zip(paths, masks))
    bar = _progress_bar(len(items), progress)
    task = bar.add_task("scan", total=len(items)) if bar else None

    def consume(batch: list[tuple[str, str | None]], recs: list[dict[str, Any]]) -> None:
        for (p, mask), rec in zip(batch, recs):
            builder.add(Path(p).relative_to(root).as_posix(), rec, mask)
        if bar is not None:
            bar.advance(task, len(batch))
        if on_chunk is not None:
            on_chunk(len(batch))

    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    if bar is not None:
        bar.start()
    try:
        if workers <= 1 or len(items) < POOL_MIN_IMAGES:
            for batch in chunks:
                consume(batch, _analyze_chunk(batch, threshold))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            limit = max_in_flight or 4 * workers
            with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(mp)) as ex:
                pending: deque = deque()
                it = iter(chunks)
                for batch in it:
                    pending.append((batch, ex.submit(_analyze_chunk, batch, threshold)))
                    if len(pending) >= limit:
                        b, fut = pending.popleft()
                        consume(b, fut.result())
                while pending:
                    b, fut = pending.popleft()
                    consume(b, fut.result())
    finally:
        if bar is not None:
            bar.stop()
    return builder.finish()


def load_dataset(dataset_dir: str | Path, masks_dir: str | Path | None = None, *,
                 fft_threshold: float | None = None, progress: bool = True, workers: int = 2) -> DatasetScan:
    """Read a training-set folder (and its masks) into the :class:`DatasetScan` that ``RunData.dataset`` holds.

    The one entry point for every caller (``diffdiag.load``, the CLI, the
    training hook): :func:`scan_dataset` with the analysis settings.

    Parameters
    ----------
    dataset_dir : str or Path
        Training images (searched recursively).
    masks_dir : str or Path, optional
        Masks, matched to the images by file stem.
    fft_threshold : float, optional
        ``Settings.fft_threshold`` (tile-period significance).
    progress : bool
        Show a progress bar on stderr (only when it is a terminal).
    workers : int
        Decoder processes (memory stays flat: only per-image numbers come back).

    Raises
    ------
    InputError
        When the folder holds no image files.
    """
    return scan_dataset(dataset_dir, masks_dir, fft_threshold, workers=workers, progress=progress)
