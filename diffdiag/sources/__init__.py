"""Sources: read inputs (files, trackers) into one :class:`~diffdiag.model.RunData`.

Each input kind has a loader module; tracker sources live in
:mod:`diffdiag.integrations` and are imported only when their flag is used.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError, NotAvailableError
from ..model import RunData, Settings
from .spec import SourceSpec


def _loader(module: str, func: str, what: str) -> Callable[..., Any]:
    try:
        mod = import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("diffdiag"):
            raise NotAvailableError(f"{what} is not available yet in this version of diffdiag") from None
        raise NotAvailableError(
            f"{what} needs the optional package '{exc.name}': pip install 'diffdiag[all]'") from None
    fn = getattr(mod, func, None)
    if fn is None:
        raise NotAvailableError(f"{what} is not available yet in this version of diffdiag")
    return fn


def require_path(path: str | Path, kind: str = "path") -> Path:
    """Return ``Path(path)`` or raise a clear :class:`InputError` when it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{kind} does not exist", p)
    return p


def load_run(spec: SourceSpec, settings: Settings | None = None, progress: Callable[[str], None] | None = None,
             *, into: RunData | None = None, scan_dataset: Callable[..., Any] | None = None) -> RunData:
    """Read every source ``spec`` names into one RunData (the loader behind :func:`diffdiag.load`).

    Parameters
    ----------
    spec : SourceSpec
        What to read.
    settings : Settings, optional
        The log keys (``loss_key``, ``ema_key``, ``lr_key``) and limits (``max_images``).
    progress : callable, optional
        Called with a short label before each source is read.
    into : RunData, optional
        Read into this RunData (e.g. the training hook's ``run_data()``) instead of a new one.
    scan_dataset : callable, optional
        Scans ``spec.dataset`` instead of :func:`diffdiag.sources.dataset.load_dataset`, with its
        arguments (an engine's scan, :mod:`diffdiag.triage.engines`); it may also read URIs
        (``s3://...``), which are then passed on as they are.

    Raises
    ------
    InputError
        A path that does not exist, or nothing analysable at all (exit 2). An unreadable
        image only adds a line to ``run.input_errors``; the rest is still read.
    TrackerError
        A tracker could not be reached or refused (exit 3).
    """
    settings = settings or Settings()
    run = into if into is not None else RunData()
    say = progress or (lambda label: None)
    if spec.wandb_run:
        say("reading W&B run")
        _loader("diffdiag.integrations.wandb_source", "read_wandb_run", "--wandb-run")(
            spec.wandb_run, run, settings, timeout=spec.tracker_timeout)
    if spec.mlflow_run:
        say("reading MLflow run")
        _loader("diffdiag.integrations.mlflow_source", "read_mlflow_run", "--mlflow-run")(
            spec.mlflow_run, run, settings, tracking_uri=spec.mlflow_tracking_uri, timeout=spec.tracker_timeout)
    if spec.logdir:
        say("reading logs")
        path = require_path(spec.logdir, "log path")
        logged_images: list[Any] = []  # TensorBoard image summaries, encoded
        try:  # a bad log file is one line in input_errors; the other files and inputs are still read
            log = _loader("diffdiag.sources.logs", "load_logs", "--logdir")(
                path, loss_key=settings.loss_key, ema_key=settings.ema_key, lr_key=settings.lr_key,
                errors=run.input_errors, images=logged_images)
        except InputError as exc:
            if str(exc) not in run.input_errors:
                run.input_errors.append(str(exc))
        else:
            run.log = log
            run.config = {**getattr(log, "config", {}), **run.config}
            run.name = path.stem if path.is_file() else path.name
        run.inputs["logdir"] = str(path)
        if logged_images:
            found, bad = _loader("diffdiag.sources.samples", "decode_logged_images", "samples")(logged_images)
            run.samples.extend(found)
            run.input_errors.extend(bad)
    if spec.images:
        say("reading images")
        load = _loader("diffdiag.sources.images", "load_image_input", "--images")
        for group in spec.images:
            if len(group) not in (1, 2):
                raise InputError(f"--images takes one image or an IN OUT pair, got {len(group)} paths")
            try:
                paths = [require_path(p, "image") for p in group]
                run.images.append(load(*paths))
            except InputError as exc:  # the other inputs are still analysed; the CLI exits 2 after
                run.input_errors.append(str(exc))
        run.inputs["images"] = [[str(p) for p in g] for g in spec.images]
    if spec.latents:
        say("reading latents")
        try:  # each bad latent file is one line in input_errors; the others and the other inputs are read
            path = require_path(spec.latents, "latents path")
            run.latents.extend(_loader("diffdiag.sources.latents", "load_latents", "--latents")(path, run))
        except NotAvailableError:
            raise
        except InputError as exc:
            run.input_errors.append(str(exc))
        run.inputs["latents"] = str(Path(spec.latents).expanduser())
    uri = scan_dataset is not None and "://" in str(spec.dataset or "")  # object storage: the scanner reads it
    if spec.dataset:
        run.dataset_dir = Path(str(spec.dataset)) if uri else require_path(spec.dataset, "dataset directory")
        run.inputs["dataset"] = str(spec.dataset) if uri else str(run.dataset_dir)
    if spec.masks:
        if not spec.dataset:
            raise InputError("--masks needs --dataset (masks are matched to dataset images by file stem)")
        run.masks_dir = Path(str(spec.masks)) if uri else require_path(spec.masks, "masks directory")
        run.inputs["masks"] = str(spec.masks) if uri else str(run.masks_dir)
    if spec.dataset:
        say("reading dataset")
        try:
            scan = scan_dataset or _loader("diffdiag.sources.dataset", "load_dataset", "--dataset")
            run.dataset = scan(str(spec.dataset) if uri else run.dataset_dir,
                               (str(spec.masks) if uri else run.masks_dir) if spec.masks else None,
                               fft_threshold=settings.fft_threshold, progress=progress is not None)
        except NotAvailableError:
            raise
        except InputError as exc:  # e.g. no images in it: one line, the rest is still analysed
            run.input_errors.append(str(exc))
        else:
            run.input_errors.extend(dataset_errors(run.dataset))
    if spec.checkpoints:
        say("listing checkpoints")
        lister = _loader("diffdiag.sources.checkpoints", "list_checkpoints", "--checkpoints")
        # a bad path or file is one line in input_errors; the other checkpoints are still read
        listed = lister([Path(p).expanduser() for p in spec.checkpoints], errors=run.input_errors)
        run.checkpoints.extend(listed)
        run.inputs["checkpoints"] = [str(p) for p in spec.checkpoints]
    if run.checkpoints:  # named here or downloaded by a tracker source
        say("reading checkpoints")
        run.checkpoint_scan, errors = _loader("diffdiag.sources.checkpoints", "load_checkpoints", "--checkpoints")(
            run.checkpoints)
        run.input_errors.extend(errors)
    if spec.checkpoints or spec.logdir:  # sample folders beside the checkpoints or inside the log directory
        found, notes = _loader("diffdiag.sources.samples", "load_sample_folders", "samples")(
            [Path(p).expanduser() for p in spec.checkpoints], spec.logdir and Path(spec.logdir).expanduser())
        seen = {s.path for s in run.samples}
        run.samples.extend(s for s in found if s.path not in seen)
        run.input_errors.extend(notes)  # sample images that could not be read: one line each, exit 2
    errors = run.input_errors
    if errors and not has_data(run):
        raise InputError("\n".join(errors))  # nothing analysable: every line is reported
    return run


def dataset_errors(scan: Any) -> list[str]:
    """One line per dataset image or mask that could not be read (the rest of the set was analysed)."""
    if scan is None:
        return []
    out = [f"{Path(scan.root) / rel}: {reason}; skipped" for rel, reason in scan.unreadable]
    for problem, ev in getattr(scan, "masks", {}).values():
        if problem == "unreadable" and ev.get("mask"):
            out.append(f"{ev['mask']}: mask skipped: {ev.get('reason', 'cannot be read')}")
    return out


def has_data(run: RunData) -> bool:
    """True when a source put anything analysable into ``run``."""
    return bool(run.log is not None or run.images or run.samples or run.latents or run.dataset_dir
                or run.checkpoints or run.tracker)
