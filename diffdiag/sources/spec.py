"""What to read: :class:`SourceSpec`, the typed form of ``diffdiag analyze``'s source flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Iterable, Union

PathLike = Union[str, "os.PathLike[str]"]


def _paths(value: PathLike | Iterable[PathLike] | None) -> tuple[PathLike, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, os.PathLike)):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class SourceSpec:
    """The inputs of one analysis (docs/CONTRACT.md §1: one field per source flag).

    Any combination, at least one. Paths may be ``str`` or :class:`~pathlib.Path`;
    ``~`` is expanded when they are read. Lists are stored as tuples, so a spec
    is hashable and can be reused.

    Attributes
    ----------
    logdir : path, optional
        A directory (searched recursively) or a file of training logs: TensorBoard,
        CSV, JSONL (``--logdir``).
    images : tuple of tuples of paths
        Each entry one image ``(path,)`` or a reference/output pair ``(ref, out)``
        (``--images``, repeatable). A bare path is taken as ``(path,)``.
    latents : path, optional
        A directory of saved latents (``--latents``).
    dataset, masks : path, optional
        Training images, and masks matched to them by file stem (``--dataset``,
        ``--masks``; masks need a dataset).
    checkpoints : tuple of paths
        LoRA/model checkpoints or directories of them (``--checkpoints``). Sample
        images in ``sample``/``samples`` folders beside them, or inside ``logdir``,
        are read too (:mod:`diffdiag.sources.samples`).
    wandb_run : str, optional
        ``entity/project/run_id``, a run URL, or a local W&B run directory (``--wandb-run``).
    mlflow_run : str, optional
        An MLflow run id (``--mlflow-run``).
    mlflow_tracking_uri : str, optional
        Where ``mlflow_run`` lives (else ``MLFLOW_TRACKING_URI``, else the embedded store).
    tracker_timeout : float, optional
        Seconds one tracker run read may take in all (``wandb_run`` online,
        ``mlflow_run`` on a server); else ``$DIFFDIAG_TRACKER_TIMEOUT``, else 60
        (:mod:`diffdiag.deadline`). When it passes: TrackerError, exit 3.

    The log keys (``loss_key``, ``ema_key``, ``lr_key``) and the limits
    (``max_images``) are analysis settings: :class:`~diffdiag.model.Settings`.
    """

    logdir: PathLike | None = None
    images: tuple[tuple[PathLike, ...], ...] = ()
    latents: PathLike | None = None
    dataset: PathLike | None = None
    masks: PathLike | None = None
    checkpoints: tuple[PathLike, ...] = ()
    wandb_run: str | None = None
    mlflow_run: str | None = None
    mlflow_tracking_uri: str | None = None
    tracker_timeout: float | None = None

    def __post_init__(self) -> None:
        groups = _paths(self.images)
        object.__setattr__(self, "images", tuple(_paths(g) for g in groups))
        object.__setattr__(self, "checkpoints", _paths(self.checkpoints))

    def is_empty(self) -> bool:
        """True when no source is named (``masks``, ``mlflow_tracking_uri``, ``tracker_timeout`` only qualify others)."""
        qualifiers = ("masks", "mlflow_tracking_uri", "tracker_timeout")
        return not any(getattr(self, f.name) for f in fields(self) if f.name not in qualifiers)
