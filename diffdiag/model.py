"""The data model: a run's inputs (``RunData``) and the diagnosis (findings, causes).

Everything an analysis reads is gathered into one :class:`RunData` by the
sources; checks turn it into :class:`Finding` objects; the cause model turns
findings into ranked :class:`Cause` objects; sinks and reports write the
:class:`Diagnosis`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .analyzers.checkpoints import Comparison

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Verdict:
    """The one-line answer of an analysis, in the one vocabulary every output uses.

    The CLI summary, the HTML/PDF report, the W&B summary keys and Report and the
    MLflow tag and note all say the verdict with these ids and words.

    Attributes
    ----------
    id : {"ok", "info", "warning", "critical", "cannot_judge"}
        Machine id (the MLflow tag ``diffdiag.verdict``): ``ok`` when nothing was
        found, else the worst severity; ``cannot_judge`` when no finding reaches
        ``warning`` and a check noted that its input is too short to judge (a note
        holding :data:`CANNOT_JUDGE_NOTE`).
    words : str
        What a person reads, lower case ("no problems found", ...).
    """

    id: str
    words: str

    @property
    def title(self) -> str:
        """``words`` with a capital first letter (headings)."""
        return self.words[:1].upper() + self.words[1:]

    @staticmethod
    def of(worst: str | None) -> "Verdict":
        """The verdict for a worst severity (None: nothing was found)."""
        return VERDICTS["ok" if worst is None else worst]


#: a check's note holding these words says its input could not be judged (the verdict is then
#: ``cannot_judge`` unless a finding reaches ``warning``): e.g. "loss: 12 logged steps are too short to judge"
CANNOT_JUDGE_NOTE = "too short to judge"

VERDICTS: dict[str, Verdict] = {v.id: v for v in (
    Verdict("ok", "no problems found"),
    Verdict("info", "healthy (notes only)"),
    Verdict("warning", "problems found"),
    Verdict("critical", "critical problems found"),
    Verdict("cannot_judge", "cannot judge (inputs too short)"),
)}


@dataclass
class Series:
    """One scalar history.

    Attributes
    ----------
    key : str
        The name the trainer logged it under (e.g. ``"train/loss"``).
    steps : ndarray of int64, shape (n,)
        Training steps, ascending.
    values : ndarray of float64, shape (n,)
        Values; non-finite values are kept (they are data).
    """

    key: str
    steps: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        self.steps = np.asarray(self.steps, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.steps.shape != self.values.shape:
            raise ValueError(f"series {self.key!r}: steps and values differ in length")

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass
class RunLog:
    """Scalar histories and per-step lists of one training run.

    Attributes
    ----------
    scalars : dict of str to Series
        Every numeric key that was logged.
    sample_ids : dict of int to list of str
        Step -> the sample ids in that step's batch (when logged).
    timesteps : dict of int to ndarray
        Step -> the diffusion timesteps of that step's batch (when logged).
    loss_key, ema_key, lr_key, grad_norm_key : str or None
        The keys detected (or named with ``--*-key``) for each role.
    sources : list of str
        Files the log was read from.
    config : dict
        Hyper-parameters found beside the logs (trainer config/args files, TensorBoard hparams).
    """

    scalars: dict[str, Series] = field(default_factory=dict)
    sample_ids: dict[int, list[str]] = field(default_factory=dict)
    timesteps: dict[int, np.ndarray] = field(default_factory=dict)
    loss_key: str | None = None
    ema_key: str | None = None
    lr_key: str | None = None
    grad_norm_key: str | None = None
    sources: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str | None) -> Series | None:
        """Return the series named ``key``, or None."""
        return None if key is None else self.scalars.get(key)

    @property
    def loss(self) -> Series | None:
        return self.get(self.loss_key)

    @property
    def ema(self) -> Series | None:
        return self.get(self.ema_key)

    @property
    def lr(self) -> Series | None:
        return self.get(self.lr_key)

    @property
    def grad_norm(self) -> Series | None:
        return self.get(self.grad_norm_key)


@dataclass
class ImageInput:
    """One image (``reference`` None) or a reference/output pair.

    Arrays are float32 in [0, 1], shape (H, W) or (H, W, C) with C in {1, 3}.
    ``path``/``reference_path`` name the files (or tracker keys) for messages.
    ``step`` is the training step the sample belongs to, when known.
    A logged sample also says where it came from: ``source`` (``"tensorboard"``,
    ``"wandb"``, ``"mlflow"``, ``"folder"``), ``key`` (the tag, history key or
    folder it was logged under) and ``index`` (its position among the images of
    that key and step); ``path`` is then its unique label
    (:func:`diffdiag.sources.samples.sample_label`).
    """

    image: np.ndarray
    path: str
    reference: np.ndarray | None = None
    reference_path: str | None = None
    step: int | None = None
    notes: list[str] = field(default_factory=list)
    source: str | None = None
    key: str | None = None
    index: int = 0


@dataclass
class LatentFile:
    """Latents saved at one step (docs/CONTRACT.md §2).

    ``arrays`` maps ``"latents"`` (a plain array) or ``"pre"``/``"post"`` to
    float32 arrays of shape (B, C, H, W).
    """

    path: str
    step: int | None
    arrays: dict[str, np.ndarray]


@dataclass
class DatasetScan:
    """A training-set folder reduced to compact per-image statistics (:mod:`diffdiag.sources.dataset`).

    Attributes
    ----------
    root : Path
    masks_dir : Path or None
        Where masks were matched (by file stem), when given.
    files : list of str
        Paths relative to ``root`` of the images that were read (POSIX separators).
    mean, std, p01, p99 : ndarray of float32, shape (n,)
        Mean luminance, RMS contrast, black and white points per image (luminance in [0, 1]).
    clip_lo, clip_hi, corr : ndarray of float32, shape (n,)
        Share (0..1) of each image's channel values at 0 / at full scale, and its lag-1 neighbour
        correlation (unitless; noise ~0) (:func:`diffdiag.analyzers.dataset.garbage_stats`).
    tiling : dict of int to dict
        Image index -> tiling features, only for images with a significant period.
    masks : dict of int to (problem, evidence)
        Image index -> mask problem, only for invalid masks.
    unreadable : list of (str, str)
        (relative path, reason) of images that could not be decoded.
    n_masks_matched : int
    images_without_mask : int
    orphan_masks : int
        Masks whose stem matches no image.
    sizes : list of (int, int)
        (width, height) in pixels per read image.
    """

    root: Path
    files: list[str] = field(default_factory=list)
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    std: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    p01: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    p99: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    clip_lo: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    clip_hi: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    corr: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    tiling: dict[int, dict[str, Any]] = field(default_factory=dict)
    masks: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    n_masks_matched: int = 0
    images_without_mask: int = 0
    orphan_masks: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)
    masks_dir: Path | None = None


@dataclass
class CheckpointInfo:
    """One checkpoint as the source read it (its parsed header).

    Attributes
    ----------
    path : Path
    name : str
        Display name, unique within the run (file name; folder added when the
        name is generic; the full path when two folders hold the same name).
    step : int or None
        Training step (file name, else metadata, else trailing digits).
    kind : {"lora", "full"}
    scheme : str
        ``"kohya"``, ``"diffusers"``, ``"peft"``, a ``+``-joined mix, or ``"full"``.
    metadata : dict of str to str
        safetensors metadata (kohya ``ss_*`` keys, ...).
    """

    path: Path
    name: str
    step: int | None
    kind: str
    scheme: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class CheckpointScan:
    """The run's checkpoints, streamed once by :func:`diffdiag.sources.checkpoints.load_checkpoints`.

    The tensors themselves are never kept (at most two checkpoints are in
    memory while streaming); what the checks and figures read is the
    per-module comparison.

    Attributes
    ----------
    checkpoints : list of CheckpointInfo
        In comparison order (ascending step).
    comparison : Comparison
        Per-checkpoint, per-module norms and changes (:mod:`diffdiag.analyzers.checkpoints`).
    notes : list of str
        What loading noted (ignored tensors, PEFT scale unknown, ...).
    """

    checkpoints: list[CheckpointInfo]
    comparison: Comparison
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckResult:
    """What one check returns (:mod:`diffdiag.registry`).

    Attributes
    ----------
    findings : list of Finding
    data : Any
        What the report draws for this check (kept in ``Diagnosis.details[check_name]``).
    notes : list of str
        Lines for ``Diagnosis.warnings`` (``outputs.warnings`` in ``diagnosis.json``).
    """

    findings: list[Finding] = field(default_factory=list)
    data: Any = None
    notes: list[str] = field(default_factory=list)


@dataclass
class RunData:
    """Everything one analysis reads. Sources fill it; checks only read it.

    Attributes
    ----------
    name : str
        A short name for the run (for titles).
    log : RunLog or None
        Scalar histories.
    images : list of ImageInput
        Images and pairs given with ``--images``.
    samples : list of ImageInput
        Sample images logged during training (with ``step``).
    latents : list of LatentFile
        Saved latents.
    dataset_dir, masks_dir : Path or None
        Training images and masks (where ``dataset`` was read from).
    dataset : DatasetScan or None
        The dataset folder's per-image statistics (:func:`diffdiag.sources.dataset.load_dataset`).
    checkpoints : list of Path
        Checkpoint files, in comparison order (tracker sources add the files they download).
    checkpoint_scan : CheckpointScan or None
        Their parsed headers and comparison (:func:`diffdiag.sources.checkpoints.load_checkpoints`).
    config : dict
        The run's configuration / hyper-parameters when known.
    model_info : dict
        Facts about the model (e.g. ``{"normalization_layers": ["GroupNorm"]}``).
    attention : list of dict
        Cross-attention captures from the training hook: ``{"step", "layer", "maps"}``.
    tracker : dict or None
        Where the run came from when a tracker source read it
        (``{"kind": "wandb"|"mlflow", "run_id", ...}``); sinks push there.
    tracker_summary, tracker_tables : dict
        The tracker run's summary values and logged tables (W&B).
    tracker_artifacts : list
        Artifacts the tracker run logged (W&B), as listed by the source.
    input_errors : list of str
        One line per input that could not be read (the CLI exits 2 after
        analysing the rest).
    inputs : dict
        What was read, for ``diagnosis.json["inputs"]``.
    warnings : list of str
        Notes from the sources (skipped files, ...), for ``outputs.warnings``.
    """

    name: str = "run"
    log: RunLog | None = None
    images: list[ImageInput] = field(default_factory=list)
    samples: list[ImageInput] = field(default_factory=list)
    latents: list[LatentFile] = field(default_factory=list)
    dataset_dir: Path | None = None
    masks_dir: Path | None = None
    dataset: DatasetScan | None = None
    checkpoints: list[Path] = field(default_factory=list)
    checkpoint_scan: CheckpointScan | None = None
    config: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    attention: list[dict[str, Any]] = field(default_factory=list)
    tracker: dict[str, Any] | None = None
    tracker_summary: dict[str, Any] = field(default_factory=dict)
    tracker_tables: dict[str, Any] = field(default_factory=dict)
    tracker_artifacts: list[Any] = field(default_factory=list)
    input_errors: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Settings:
    """Analysis settings (the CLI options of docs/CONTRACT.md §1)."""

    spike_sigma: float = 3.0
    fft_threshold: float | None = None
    heatmap_scale: float = 4.0
    max_images: int = 16
    loss_key: str | None = None
    ema_key: str | None = None
    lr_key: str | None = None
    vae_scale: int = 8
    fail_on: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and paths into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if f != f or f in (float("inf"), float("-inf")):
            return None if f != f else ("inf" if f > 0 else "-inf")
        return f
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class Finding:
    """One observed symptom (docs/CONTRACT.md §3).

    Parameters
    ----------
    id : str
        A finding id from the contract's vocabulary.
    severity : {"info", "warning", "critical"}
    score : float
        Confidence/strength in [0, 1] (clipped).
    message : str
        One plain sentence for a person.
    location : dict
        Where: the keys the contract fixes for this id.
    evidence : dict
        The numbers behind the message.
    """

    id: str
    severity: Severity
    score: float
    message: str
    location: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = float(self.score)
        self.score = 0.0 if s != s else min(1.0, max(0.0, s))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "score": round(float(self.score), 4),
            "message": self.message,
            "location": _jsonable(self.location),
            "evidence": _jsonable(self.evidence),
        }


@dataclass
class Cause:
    """A ranked explanation of a symptom, with its evidence and advice (docs/CONTRACT.md §3)."""

    id: str
    symptom: str
    score: float
    evidence: list[str]
    findings: list[int]
    advice: str
    missing_precondition: str | None = field(default=None, compare=False)
    """The mechanism this cause needs and the run is known to lack (its evidence says so; not serialised)."""

    def __post_init__(self) -> None:
        s = float(self.score)
        self.score = 0.0 if s != s else min(1.0, max(0.0, s))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "symptom": self.symptom,
            "score": round(float(self.score), 4),
            "evidence": list(self.evidence),
            "findings": [int(i) for i in self.findings],
            "advice": self.advice,
        }


@dataclass
class Diagnosis:
    """The result of one analysis: what ``diagnosis.json`` holds."""

    findings: list[Finding] = field(default_factory=list)
    causes: list[Cause] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Check name -> that check's ``CheckResult.data`` (what the report draws); not serialised."""

    def worst_severity(self) -> str | None:
        """The highest severity among the findings, or None when there are none."""
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=SEVERITY_RANK.__getitem__)

    def verdict(self) -> Verdict:
        """The run's :class:`Verdict`: from the worst severity among the findings, or
        ``cannot_judge`` when none reaches ``warning`` and a note says an input is
        :data:`CANNOT_JUDGE_NOTE`."""
        worst = self.worst_severity()
        if worst in (None, "info") and self.unjudged():
            return VERDICTS["cannot_judge"]
        return Verdict.of(worst)

    def unjudged(self) -> list[str]:
        """The notes that say an input was too short to judge (:data:`CANNOT_JUDGE_NOTE`)."""
        return [w for w in self.warnings if CANNOT_JUDGE_NOTE in str(w).lower()]

    def by_id(self, finding_id: str) -> list[Finding]:
        return [f for f in self.findings if f.id == finding_id]

    def to_dict(self) -> dict[str, Any]:
        from ._version import __version__

        return {
            "schema": "diffdiag.diagnosis/1",
            "tool": {"name": "diffdiag", "version": __version__},
            "created": self.created,
            "inputs": _jsonable(self.inputs),
            "settings": _jsonable(self.settings),
            "findings": [f.to_dict() for f in self.findings],
            "causes": [c.to_dict() for c in self.causes],
            "outputs": _jsonable({**self.outputs, "warnings": list(self.warnings)}
                                 if self.warnings else self.outputs),
        }
