"""Scan a training set with Ray Data: ``diffdiag analyze --dataset URI --engine ray``.

The same per-image function as the local scan (:func:`diffdiag.sources.dataset.analyze_image`)
runs inside Ray Data ``map_batches`` tasks; only its few numbers per image come back
(brightness/contrast statistics, tile periods, the mask verdict — a few dozen bytes), never
pixels. The driver lists the images in the local scan's order, and Ray Data is asked to
keep that order (``preserve_order``), so the per-image records are folded by the one
:class:`~diffdiag.sources.dataset.ScanBuilder` in the same order as the local engine
folds them: the :class:`~diffdiag.model.DatasetScan` — and so every dataset finding — is
identical whichever engine, however many workers and however the images are split
into blocks.

Where the images are
--------------------
* a local folder: listed with :func:`~diffdiag.sources.dataset.iter_images` (as the local
  scan), each worker decodes the file by its path;
* a URI that pyarrow opens (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``, ``file://``),
  or any other fsspec protocol (through ``pyarrow.fs.FSSpecHandler``): listed on the
  driver with the same rules (recursive, hidden entries skipped, PNG/JPEG/WebP), the
  bytes read in the workers.

Driver memory is the scan itself (the numbers per image the dataset check reads: about
100–200 bytes per image with its path) plus one block of the listing in flight per
worker: images never reach the driver.
"""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputError
from ..model import DatasetScan
from ..sources.dataset import CHUNK, IMAGE_SUFFIXES, MASK_SUFFIXES

#: images per Ray Data block: about four blocks per worker, within these bounds
MIN_BLOCK, MAX_BLOCK = 16, 1024


def filesystem_of(uri: str) -> tuple[Any, str, bool]:
    """``(pyarrow filesystem, path inside it, is_local)`` for a folder path or a URI."""
    import pyarrow.fs as pafs

    text = str(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).expanduser()), True
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception:  # noqa: BLE001 - pyarrow does not know the scheme: try fsspec
        try:
            import fsspec
        except ModuleNotFoundError:
            raise InputError("cannot be opened: pyarrow does not know its scheme and fsspec is not installed",
                             text) from None
        try:
            ffs, path = fsspec.core.url_to_fs(text)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot be opened: {str(exc).splitlines()[0][:200]}", text) from None
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(ffs))
    return fs, path.rstrip("/"), False  # a URI (file:// too) is read through its filesystem, as s3:// is


def scan_order(rel: str) -> tuple[tuple[int, str], ...]:
    """Sort key of a relative path in the local scan's order: per folder its files by name, then its
    sub-folders by name (:func:`diffdiag.sources.dataset.iter_images`)."""
    parts = rel.split("/")
    return tuple((1, p) for p in parts[:-1]) + ((0, parts[-1]),)


def _list_remote(fs: Any, root: str, suffixes: tuple[str, ...]) -> list[str]:
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, FileNotFoundError) as exc:
        raise InputError(f"cannot be listed: {str(exc).splitlines()[0][:200]}", root) from None
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root):].lstrip("/")
        if any(p.startswith(".") for p in rel.split("/")) or not rel.lower().endswith(suffixes):
            continue
        out.append(rel)
    return sorted(out, key=scan_order)


def list_images(fs: Any, root: str, local: bool) -> list[str]:
    """Relative paths (POSIX) of the images under ``root``, in the local scan's order."""
    from ..sources.dataset import iter_images

    if local:
        base = Path(root)
        return [p.relative_to(base).as_posix() for p in iter_images(base)]
    return _list_remote(fs, root, IMAGE_SUFFIXES)


def mask_index(fs: Any, root: str, local: bool) -> dict[str, str]:
    """Mask path by file stem (the first in sorted order wins), as :func:`~diffdiag.sources.dataset.index_masks`."""
    from ..sources.dataset import index_masks

    if local:
        return {stem: str(p) for stem, p in index_masks(Path(root)).items()}
    out: dict[str, str] = {}
    for rel in sorted(_list_remote(fs, root, MASK_SUFFIXES)):
        out.setdefault(PurePosixPath(rel).stem, f"{root}/{rel}")
    return out


class ImageStats:
    """The ``map_batches`` function: rows ``rel``, ``mask`` -> the same plus ``rec`` (the pickled record)."""

    def __init__(self, fs: Any, root: str, local: bool, threshold: float | None) -> None:
        import os

        self.fs, self.root, self.local, self.threshold = fs, root, local, threshold
        self.cwd = os.getcwd()  # the driver's: relative local paths mean the same in every worker

    def _source(self, path: str) -> Any:
        import os

        if self.local:
            return os.path.join(self.cwd, path)  # decoded by path, as the local scan does
        with self.fs.open_input_file(path) as fh:
            return fh.read()

    def one(self, rel: str, mask: str | None) -> dict[str, Any]:
        from ..sources.dataset import analyze_image

        try:
            image = self._source(f"{self.root}/{rel}")
        except OSError as exc:
            return {"error": f"cannot be read: {str(exc).splitlines()[0][:200]}"}
        m = None
        if mask is not None:
            try:
                m = self._source(mask)
            except OSError:
                m = b""  # decoded as unreadable: the mask's row says so
        return analyze_image(image, m, self.threshold)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        rels = batch.column("rel").to_pylist()
        masks = batch.column("mask").to_pylist()
        recs = [pickle.dumps(self.one(r, m), protocol=pickle.HIGHEST_PROTOCOL) for r, m in zip(rels, masks)]
        return pa.table({"rel": rels, "mask": pa.array(masks, pa.string()), "rec": pa.array(recs, pa.binary())})


def _progress(total: int, enabled: bool):
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("diffdiag: dataset (ray)"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)


def scan_dataset_ray(dataset: str, masks: str | None = None, *, fft_threshold: float | None = None,
                     workers: int = 2, block_images: int | None = None, progress: bool = False) -> DatasetScan:
    """Scan ``dataset`` (a folder or a URI) with Ray Data into a :class:`DatasetScan`.

    Parameters
    ----------
    dataset, masks : str
        Folders or URIs (``s3://bucket/train``); masks are matched to images by file stem.
    fft_threshold : float, optional
        ``Settings.fft_threshold`` (tile-period significance).
    workers : int
        Images decoded at once (Ray tasks; the blocks are sized for about four per worker).
    block_images : int, optional
        Images per Ray Data block (default: about four blocks per worker, 16 to 1024).
    progress : bool
        A progress bar on stderr (when it is a terminal).

    Raises
    ------
    InputError
        No images there, or the location cannot be listed.
    """
    import pyarrow as pa
    import ray
    import ray.data

    from ..sources.dataset import ScanBuilder

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    fs, root, local = filesystem_of(dataset)
    rels = list_images(fs, root, local)
    if not rels:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found", dataset)
    index = None
    if masks is not None:
        mfs, mroot, mlocal = filesystem_of(masks)
        if mlocal != local or (not local and type(mfs) is not type(fs)):
            raise InputError("masks must be on the same kind of storage as the dataset", masks)
        index = mask_index(mfs, mroot, mlocal)
    builder = ScanBuilder(Path(root) if local else Path(str(dataset)),
                          None if masks is None else Path(mroot) if local else Path(str(masks)))
    mask_paths = builder.pair_masks(rels, index)
    n = len(rels)
    per_block = block_images or max(MIN_BLOCK, min(MAX_BLOCK, math.ceil(n / (4 * max(1, workers)))))
    refs = [ray.put(pa.table({"rel": rels[i:i + per_block], "mask": pa.array(mask_paths[i:i + per_block], pa.string())}))
            for i in range(0, n, per_block)]
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.execution_options.preserve_order = True  # the local scan's order: the same DatasetScan
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    bar = _progress(n, progress)
    task = bar.add_task("scan", total=n) if bar else None
    if bar is not None:
        bar.start()
    try:
        ds = ray.data.from_arrow_refs(refs).map_batches(
            ImageStats(fs, root, local, fft_threshold), batch_size=CHUNK, batch_format="pyarrow",
            concurrency=max(1, workers), num_cpus=1)
        expected = iter(rels)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            got = batch.column("rel").to_pylist()
            for rel, mask, blob in zip(got, batch.column("mask").to_pylist(), batch.column("rec").to_pylist()):
                if rel != next(expected):  # preserve_order is Ray Data's promise; a broken one must not go unseen
                    raise RuntimeError(f"Ray Data returned the images out of order at {rel}")
                builder.add(rel, pickle.loads(blob), mask)
            if bar is not None:
                bar.advance(task, len(got))
    finally:
        if bar is not None:
            bar.stop()
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = saved
    if builder.count() != n:
        raise RuntimeError(f"Ray Data returned {builder.count()} of {n} images")
    return builder.finish()


__all__ = ["scan_dataset_ray", "filesystem_of", "list_images", "mask_index", "scan_order", "ImageStats"]
