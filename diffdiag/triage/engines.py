"""Engines: where the runs of a triage (and the images of a dataset scan) are analysed.

One interface, two engines; the analysis code (:func:`diffdiag.triage.worker.analyse_run`,
:func:`diffdiag.sources.dataset.analyze_image`) does not know which one runs it:

* :class:`LocalEngine` (``--engine local``, the default) — a pool of worker processes on
  this machine. At most ``2 × workers`` runs are in flight, results stream back as they
  complete, and each worker is replaced after :data:`TASKS_PER_CHILD` runs, so memory stays
  bounded however many runs there are. Datasets: the process pool of
  :func:`diffdiag.sources.dataset.load_dataset`.
* :class:`RayEngine` (``--engine ray``, the ``diffdiag[ray]`` extra) — a Ray task per run,
  Ray Data ``map_batches`` over a dataset's images (:mod:`.ray_dataset`). With
  ``--ray-address`` it joins an existing cluster (reports then travel back to the driver
  as bytes); without it Ray starts on this machine with ``workers`` CPUs.

Faults: a worker that dies (killed, out of memory) loses no run. The local engine starts
a new pool and runs the runs that were in flight again, one at a time, so the run that
killed its worker is found; Ray re-executes the task itself (:data:`MAX_RETRIES`). A run
that kills its worker every time comes back as :class:`WorkerLost` — its row's error.
No result is yielded twice.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from ..errors import InputError, NotAvailableError
from ..model import DatasetScan

T = TypeVar("T")

#: a local worker process is replaced after this many runs (bounds memory a long triage could grow)
TASKS_PER_CHILD = 8
#: times a run is tried alone after its worker died before it is given up (its row says so)
MAX_SOLO_FAILURES = 2
#: Ray re-executes a task whose worker died this many times
MAX_RETRIES = 3
ENGINES = ("local", "ray")


class WorkerLost(Exception):
    """The result of a task whose worker died on every try (or that could not be run at all)."""


class Engine:
    """What an engine offers: :meth:`map` over tasks, :meth:`scan_dataset`; a context manager.

    Attributes
    ----------
    name : {"local", "ray"}
    workers : int
        Runs analysed at once.
    ship_reports : bool
        Workers may not share the driver's disk: they return the report files as bytes.
    """

    name = "engine"
    workers = 1
    ship_reports = False

    def map(self, fn: Callable[[T], Any], tasks: Iterable[T]) -> Iterator[tuple[T, Any]]:
        """``(task, fn(task))`` as each completes (any order); ``(task, WorkerLost)`` when its worker died."""
        raise NotImplementedError

    def scan_dataset(self, dataset: str, masks: str | None = None, *, fft_threshold: float | None = None,
                     progress: bool = False) -> DatasetScan:
        """The :class:`DatasetScan` of a training set (identical whichever engine and however many workers)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _context(mp):
    """A fork-server context with the analysis preloaded: workers start cheaply, never inherit the
    caller's threads, and never re-run the caller's ``__main__`` (a script without a main guard works).
    The tracker environment reaches them with each task (:attr:`diffdiag.triage.worker.Task.env`)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["diffdiag.triage.worker", "diffdiag.api", "diffdiag.pipeline", "numpy", "scipy.fft",
                                "PIL.Image", "matplotlib.pyplot"])
    return ctx


class LocalEngine(Engine):
    """A process pool on this machine."""

    name = "local"

    def __init__(self, workers: int = 2, *, tasks_per_child: int = TASKS_PER_CHILD) -> None:
        self.workers = max(1, int(workers))
        self.tasks_per_child = tasks_per_child

    def _pool(self):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self.workers, mp_context=_context(mp),
                                   max_tasks_per_child=self.tasks_per_child)

    def map(self, fn: Callable[[T], Any], tasks: Iterable[T]) -> Iterator[tuple[T, Any]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        source = iter(tasks)
        suspects: deque[tuple[T, int]] = deque()  # in flight when a worker died: re-run one at a time
        pending: dict[Any, tuple[T, int, bool]] = {}
        limit = 2 * self.workers
        pool = self._pool()
        exhausted = False
        try:
            while True:
                while suspects and not pending:
                    task, fails = suspects.popleft()
                    pending[pool.submit(fn, task)] = (task, fails, True)
                while not suspects and not exhausted and len(pending) < limit:
                    try:
                        task = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[pool.submit(fn, task)] = (task, 0, False)
                if not pending:
                    return
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    task, fails, solo = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        fails += 1 if solo else 0
                        if fails >= MAX_SOLO_FAILURES:
                            yield task, WorkerLost(f"its worker process died {fails} times while analysing it "
                                                   f"(killed, or out of memory)")
                        else:
                            suspects.append((task, fails))
                        continue
                    except Exception as exc:  # noqa: BLE001 - the task could not be sent or returned
                        yield task, WorkerLost(f"could not be run in a worker: {type(exc).__name__}: {exc}")
                        continue
                    yield task, result
                if broken:  # every other run in flight failed with the pool: run them again, alone
                    for fut, (task, fails, _solo) in list(pending.items()):
                        suspects.append((task, fails))
                    pending.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def scan_dataset(self, dataset: str, masks: str | None = None, *, fft_threshold: float | None = None,
                     progress: bool = False) -> DatasetScan:
        from ..sources.dataset import load_dataset

        if "://" in str(dataset):
            raise InputError("is a URI: the local engine reads dataset folders; use --engine ray for "
                             "object storage (s3://, gs://, ...)", dataset)
        return load_dataset(Path(dataset).expanduser(), Path(masks).expanduser() if masks else None,
                            fft_threshold=fft_threshold, progress=progress, workers=self.workers)


def _import_ray():
    try:
        import ray
    except ModuleNotFoundError:
        raise NotAvailableError("--engine ray needs the optional package 'ray': pip install 'diffdiag[ray]'") from None
    return ray


def _quiet_ray_logs() -> None:
    for name in ("ray", "ray.data", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)


class RayEngine(Engine):
    """Ray tasks for runs, Ray Data for datasets.

    Parameters
    ----------
    workers : int, optional
        CPUs of the local Ray started here (default 2); on a cluster, at most this many
        runs at once (default: the cluster's CPUs).
    address : str, optional
        Join this cluster (``ray://host:10001``, ``host:6379`` or ``auto``); else start Ray here.
        An already initialised Ray (a notebook, the tests) is used as it is.
    """

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        ray = _import_ray()
        _quiet_ray_logs()
        self._owned = False
        if not ray.is_initialized():
            kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            try:
                if address:
                    ray.init(address=address, **kw)
                else:
                    ray.init(num_cpus=workers or 2, **kw)
            except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
                from ..errors import TrackerError

                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise TrackerError(f"could not start or join {where}: {str(exc).splitlines()[0][:200]}") from None
            self._owned = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, min(int(workers), cpus) if workers else cpus)
        self.ship_reports = bool(address) or len([n for n in ray.nodes() if n.get("Alive")]) > 1

    def map(self, fn: Callable[[T], Any], tasks: Iterable[T]) -> Iterator[tuple[T, Any]]:
        import ray

        remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(fn)
        source = iter(tasks)
        pending: dict[Any, T] = {}
        limit = 2 * self.workers
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    try:
                        task = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[remote.remote(task)] = task
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.OutOfMemoryError) as exc:
                        result = WorkerLost(f"its Ray worker died {MAX_RETRIES + 1} times while analysing it "
                                            f"({type(exc).__name__})")
                    except ray.exceptions.RayError as exc:
                        line = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ""
                        result = WorkerLost(f"its Ray task failed: {type(exc).__name__}: {line}")
                    yield task, result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def scan_dataset(self, dataset: str, masks: str | None = None, *, fft_threshold: float | None = None,
                     progress: bool = False) -> DatasetScan:
        from .ray_dataset import scan_dataset_ray

        return scan_dataset_ray(dataset, masks, fft_threshold=fft_threshold, workers=self.workers,
                                progress=progress)

    def close(self) -> None:
        if self._owned:
            import ray

            ray.shutdown()
            self._owned = False


def make_engine(name: str = "local", *, workers: int | None = None, address: str | None = None) -> Engine:
    """The engine ``--engine``/``--workers``/``--ray-address`` name."""
    if name == "local":
        if address:
            raise InputError("--ray-address needs --engine ray")
        return LocalEngine(workers or 2)
    if name == "ray":
        return RayEngine(workers, address)
    raise InputError(f"unknown engine {name!r} (expected one of {', '.join(ENGINES)})")


def load_with_engine(spec: Any, settings: Any, engine: Engine, *, progress: Callable[[str], None] | None = None):
    """:func:`diffdiag.load`, with the dataset (a folder or a URI) scanned by ``engine``.

    The other sources are read as ``load`` reads them; the dataset's :class:`DatasetScan`
    is the engine's (identical to the local scan for the same images).
    """
    from ..sources import load_run

    if spec.is_empty():
        raise InputError("no source given")
    return load_run(spec, settings, progress, scan_dataset=engine.scan_dataset)


__all__ = ["Engine", "LocalEngine", "RayEngine", "WorkerLost", "make_engine", "load_with_engine", "ENGINES"]
