"""The in-training hook: ``LossDiagnostics`` (seed §5.2).

::

    from diffdiag import LossDiagnostics, DiagConfig
    diag = LossDiagnostics(DiagConfig(report_dir="diag", diag_interval=100))
    for step, batch in enumerate(loader):
        loss = ...                                   # a 0-d tensor is fine: no sync here
        diag.log_step(step, loss, ema_loss, model=unet, batch=batch)
    diagnosis = diag.finish()                        # diagnosis.json + report.html in report_dir

What it does
------------
Four parts, each a small class in its own module (testable alone), composed here:

* **Record** (:class:`~.hook_scalars.ScalarRecorder`, every call, O(1)): the
  loss, EMA loss, LR, gradient norm and other scalars, sample ids and
  timesteps. Python floats are taken at once; tensors are buffered and read
  in chunks of ``sync_every`` values (one device sync per chunk, none per step).
* **Stream monitor** (:class:`~.hook_stream.StreamMonitor`, every value, O(1)):
  robust running detectors (:class:`diffdiag.analyzers.streaming.RobustStream`)
  raise ``loss_spike`` / ``loss_divergence`` / ``loss_nonfinite`` /
  ``grad_norm_spike`` as they happen, built by the same functions as the
  report's findings (:mod:`diffdiag.findings.loss`): the same event gets the
  same step and severity live and in ``diagnosis.json``. A spike is raised
  a few steps after it (once it is clear it is not the start of a
  divergence); a divergence once 48 values past its change point are seen.
* **Captures** (:class:`~.hook_captures.Captures`, every ``diag_interval``
  steps when ``model``/``batch`` are given): latents before/after the UNet
  (``pre`` = its input sample, ``post`` = its output, from a forward hook),
  saved as ``latents/latents_step<N>.safetensors`` (docs/CONTRACT.md §2);
  batch statistics of the images (brightness, contrast, non-finite values)
  with their sample ids; the cross-attention maps of the next interval step's
  forward (:mod:`.attention_capture`), checked for ``attention_collapse``.
* **Callbacks** (:class:`~.hook_callbacks.Callbacks`): each live finding goes
  to the callbacks (W&B and MLflow when a run of theirs is active, yours:
  ``LossDiagnostics(config, callbacks=[...])`` or :meth:`LossDiagnostics.add_callback`)
  and out as a :class:`DiagnosticWarning`; the final diagnosis too.

``finish()`` removes every hook, builds a :class:`~diffdiag.model.RunData`
from what it saw, runs the same analysis as ``diffdiag analyze``
(:func:`diffdiag.pipeline.analyze`), writes ``report.html``/``report.pdf``/
``diagnosis.json`` plus ``hook_log.jsonl`` (so ``diffdiag analyze --logdir
REPORT/hook_log.jsonl --latents REPORT/latents`` re-analyses it later and
finds the same) and returns the :class:`~diffdiag.model.Diagnosis`.

Never raises into the training loop (unless ``raise_errors=True``): a capture
that cannot work on this model logs ONE warning and is switched off.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from diffdiag.model import Diagnosis, Finding, LatentFile, RunData, Settings

from .hook_callbacks import Callbacks
from .hook_captures import BatchStats, Captures, LatentStats, batch_ids
from .hook_scalars import ScalarRecorder, write_log
from .hook_stream import StreamMonitor

__all__ = ["DiagConfig", "LossDiagnostics", "DiagnosticWarning"]


class DiagnosticWarning(UserWarning):
    """A finding raised by the in-training hook (or a capture that had to be switched off)."""


@dataclass
class DiagConfig:
    """Settings of :class:`LossDiagnostics` (a plain dict with these keys works too).

    Attributes
    ----------
    report_dir : str or Path
        Where ``finish()`` writes ``diagnosis.json``, the report and saved latents.
    diag_interval : int
        Heavy captures (latents, batch statistics, attention maps) every this many steps.
    spike_sigma : float
        Loss-spike threshold in robust standard deviations (like ``--spike-sigma``).
    fft_threshold : float or None
        Passed to the analysis (like ``--fft-threshold``).
    capture_latents, capture_attention, capture_batch : bool
        What to capture on interval steps.
    save_latents : bool
        Write the captured ``pre``/``post`` latents to ``report_dir/latents/``.
    latent_items : int
        At most this many batch items per saved latent file / attention capture.
    callbacks : list
        Objects with optional ``on_finding(finding, step)`` and
        ``on_finish(diagnosis, report_dir)`` methods; their errors are swallowed
        (more: ``LossDiagnostics(config, callbacks=[...])`` or ``add_callback``).
    trackers : "auto" or sequence of str
        "auto": add the W&B / MLflow callbacks when a run of theirs is active;
        ``()`` for none, or e.g. ``("wandb",)``.
    warn : bool
        Also report live findings with ``warnings.warn`` (DiagnosticWarning).
    raise_errors : bool
        Let internal errors propagate (debugging); default False never breaks training.
    sync_every : int
        Tensor losses are read from the device once per this many calls.
    write_report : bool
        ``finish()`` writes report.html/report.pdf too (else only diagnosis.json).
    run_name : str
        Name of the run in the report.
    run_config : dict
        Hyper-parameters to record (``RunData.config``), e.g. ``{"lr": 1e-4}``.
    dataset_dir, masks_dir : path or None
        The training images (and masks): ``finish()`` checks them too, like
        ``diffdiag analyze --dataset --masks``.
    """

    report_dir: str | Path = "diffdiag-report"
    diag_interval: int = 100
    spike_sigma: float = 3.0
    fft_threshold: float | None = None
    capture_latents: bool = True
    capture_attention: bool = True
    capture_batch: bool = True
    save_latents: bool = True
    latent_items: int = 4
    callbacks: list = field(default_factory=list)
    trackers: Any = "auto"
    warn: bool = True
    raise_errors: bool = False
    sync_every: int = 64
    write_report: bool = True
    run_name: str = "run"
    run_config: dict = field(default_factory=dict)
    dataset_dir: str | Path | None = None
    masks_dir: str | Path | None = None

    @classmethod
    def from_any(cls, config: Any = None, **overrides: Any) -> "DiagConfig":
        """Build from a DiagConfig, a dict with the same keys, or any object with some of these attributes.

        A dict with an unknown key is an error (a typo would silently do nothing);
        other objects (e.g. a trainer's own config) contribute the attributes
        whose names match.
        """
        names = {f.name for f in fields(cls)}
        if config is None:
            values: dict[str, Any] = {}
        elif isinstance(config, cls):
            values = {n: getattr(config, n) for n in names}
        elif isinstance(config, Mapping):
            unknown = sorted(set(config) - names)
            if unknown:
                raise ValueError(f"unknown DiagConfig field(s): {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(names))}")
            values = dict(config)
        else:
            values = {n: getattr(config, n) for n in names if hasattr(config, n)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown DiagConfig field(s): {', '.join(unknown)}")
        values.update(overrides)
        cfg = cls(**values)
        if int(cfg.diag_interval) < 1:
            raise ValueError("diag_interval must be >= 1")
        cfg.diag_interval = int(cfg.diag_interval)
        cfg.sync_every = max(1, int(cfg.sync_every))
        cfg.callbacks = list(cfg.callbacks or [])
        return cfg


class LossDiagnostics:
    """Diagnostics that run inside the training loop (see the module docstring).

    Composed of a :class:`~.hook_scalars.ScalarRecorder` (the per-step record,
    tensors read in chunks), a :class:`~.hook_stream.StreamMonitor` (live loss
    and gradient-norm checks), :class:`~.hook_captures.Captures` (latents, batch
    statistics, attention maps on interval steps) and
    :class:`~.hook_callbacks.Callbacks` (where live findings and the final
    diagnosis go).

    Parameters
    ----------
    config : DiagConfig, dict, object or None
        Settings; a trainer's own config object contributes the fields it has
        (e.g. ``diag_interval``).
    callbacks : iterable, optional
        Callbacks added after ``config.callbacks``: objects with
        ``on_finding(finding, step)`` and/or ``on_finish(diagnosis, report_dir)``
        (see :mod:`.hook_callbacks`). More can be added with :meth:`add_callback`.
    **overrides
        Field values that win over ``config``.
    """

    def __init__(self, config: Any = None, *, callbacks: Iterable[Any] = (), **overrides: Any) -> None:
        self.config = DiagConfig.from_any(config, **overrides)
        c = self.config
        self.scalars = ScalarRecorder(sync_every=c.sync_every)
        self.monitor = StreamMonitor(sigma=c.spike_sigma, context=self._context)
        self.captures = Captures(interval=c.diag_interval, latents=c.capture_latents,
                                 attention=c.capture_attention, batch=c.capture_batch, max_items=c.latent_items,
                                 save_dir=Path(c.report_dir) / "latents" if c.save_latents else None,
                                 warn=self._warn_once, raise_errors=c.raise_errors)
        self.callbacks = Callbacks(list(c.callbacks) + list(callbacks), trackers=c.trackers, warn=self._warn_once)
        self.live_findings: list[Finding] = []
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._last_step: int | None = None
        self._sparse = False
        self._finished = False
        self._diagnosis: Diagnosis | None = None
        self.n_calls = 0

    def add_callback(self, callback: Any) -> Any:
        """Add a callback (``on_finding(finding, step)`` and/or ``on_finish(diagnosis, report_dir)``); returns it."""
        return self.callbacks.add(callback)

    # ------------------------------------------------------------------ what the hook saw
    @property
    def latents(self) -> list[LatentFile]:
        """The latent files captured so far."""
        return self.captures.latents.files

    @property
    def latent_stats(self) -> list[LatentStats]:
        return self.captures.latents.stats

    @property
    def batch_stats(self) -> list[BatchStats]:
        return self.captures.batch.rows

    @property
    def attention(self) -> list[dict[str, Any]]:
        """Cross-attention captures: ``{"step", "layer", "maps"}`` each."""
        return self.captures.attention_maps

    @property
    def model_info(self) -> dict[str, Any]:
        return self.captures.model_info

    @property
    def sample_ids(self) -> dict[int, list[str]]:
        return self.scalars.sample_ids

    @property
    def timesteps(self) -> dict[int, list[float]]:
        return self.scalars.timesteps

    # ================================================================== hot path
    def log_step(self, step: int, loss: Any, ema_loss: Any = None, model: Any = None, batch: Any = None, *,
                 lr: Any = None, grad_norm: Any = None, sample_ids: Iterable[Any] | None = None,
                 timesteps: Any = None, **scalars: Any) -> None:
        """Record one training step. Never raises (unless ``raise_errors``).

        Parameters
        ----------
        step : int
            The global training step.
        loss : float or 0-d tensor
            The raw (per-step) loss. Tensors are not synced here.
        ema_loss : float or 0-d tensor, optional
            The smoothed loss the trainer shows.
        model : torch.nn.Module, optional
            The UNet (or an object with ``.unet``): enables latent and attention captures.
        batch : tensor, dict or tuple, optional
            The step's batch: images under ``pixel_values``/``images``/..., ids under
            ``sample_ids``/``ids``/``paths``/...
        lr, grad_norm : float or tensor, optional
        sample_ids : list, optional
            The samples in this step's batch (else taken from ``batch``).
        timesteps : sequence or tensor, optional
            The diffusion timesteps of the batch (recorded on interval steps).
        **scalars
            Further scalars to record under their names.
        """
        if self._finished:
            return
        try:
            self.n_calls += 1
            step = int(step)
            rec = self.scalars
            if lr is not None:
                rec.scalar("lr", step, lr)
            for k, v in scalars.items():
                rec.scalar(k, step, v)
            if sample_ids is not None:
                rec.sample_ids[step] = [str(s) for s in sample_ids]
            if isinstance(loss, (float, int)) and not rec.pending and (grad_norm is None or
                                                                        isinstance(grad_norm, (float, int))):
                loss = float(loss)
                rec.record(step, loss, ema_loss, grad_norm)
                found = self.monitor.update(step, loss, None if grad_norm is None else float(grad_norm))
                if found:
                    self._raise(found)
            elif rec.defer(step, loss, ema_loss, grad_norm):
                self._flush()
            last, self._last_step = self._last_step, step
            if last is not None and step - last > 1:
                self._sparse = True
            if model is None and batch is None:
                return
            self._interval(step, model, batch, timesteps)
        except Exception as exc:  # noqa: BLE001 - never break the training loop
            self._internal("log_step", exc)

    def _flush(self) -> None:
        """Read the buffered tensor values (one device sync per kind) and check them."""
        mon = self.monitor
        for step, lo, _, gn in self.scalars.drain():
            found = mon.update(step, lo, gn)
            if found:
                self._raise(found)

    def _interval(self, step: int, model: Any, batch: Any, timesteps: Any) -> None:
        if step % self.config.diag_interval == 0:
            self._flush()    # a capture syncs anyway: check the buffered losses now too
            if timesteps is not None:
                self.scalars.record_timesteps(step, timesteps)
            if batch is not None and step not in self.scalars.sample_ids:
                ids = batch_ids(batch)
                if ids is not None:
                    self.scalars.sample_ids[step] = ids
        found = self.captures.step(step, model, batch, sample_ids=self.scalars.sample_ids.get(step),
                                   sparse=self._sparse)
        if found:
            self._raise(found)

    # ================================================================== live findings
    def _context(self, step: int) -> dict[str, Any]:
        """Evidence about ``step`` for a live finding: the learning rate and the batch's sample ids."""
        ctx: dict[str, Any] = {}
        lr = self.scalars.value_at("lr", step)
        if lr is not None:
            ctx["lr"] = lr
        ids = self.scalars.sample_ids.get(step)
        if ids:
            ctx["sample_ids"] = ids
        return ctx

    def _raise(self, findings: Iterable[Finding]) -> None:
        for f in findings:
            step = f.location.get("step")
            if step is None:
                steps = f.evidence.get("steps") or [None]
                step = steps[-1]
            self.live_findings.append(f)
            if self.config.warn:
                warnings.warn(f"diffdiag: {f.message}", DiagnosticWarning, stacklevel=4)
            self.callbacks.finding(f, step)

    # ================================================================== errors
    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        self.warnings.append(message)
        warnings.warn(message, DiagnosticWarning, stacklevel=4)

    def _internal(self, where: str, exc: Exception) -> None:
        """Report an internal error once per place and kind (``raise_errors=True``: raise it)."""
        if self.config.raise_errors:
            raise exc
        self._warn_once(f"internal:{where}:{type(exc).__name__}",
                        f"diffdiag: internal error in {where} ({type(exc).__name__}: {exc}); training continues")

    # ================================================================== finish
    def close(self) -> None:
        """Remove every hook from the model (no analysis). ``finish()`` calls it."""
        self.captures.detach()

    def run_data(self) -> RunData:
        """What the hook saw, as the RunData the analysis reads (the held live findings are raised first)."""
        self._flush()
        if not self._finished:
            held = self.monitor.finish()
            if held:
                self._raise(held)
        run = RunData(name=self.config.run_name, log=self.scalars.run_log(), latents=list(self.latents),
                      config=dict(self.config.run_config), model_info=dict(self.model_info),
                      attention=list(self.attention))
        if self.config.dataset_dir is not None and Path(self.config.dataset_dir).is_dir():
            from diffdiag.errors import InputError
            from diffdiag.sources.dataset import load_dataset

            run.dataset_dir = Path(self.config.dataset_dir)
            run.inputs["dataset"] = str(run.dataset_dir)
            if self.config.masks_dir is not None and Path(self.config.masks_dir).is_dir():
                run.masks_dir = Path(self.config.masks_dir)
                run.inputs["masks"] = str(run.masks_dir)
            try:
                run.dataset = load_dataset(run.dataset_dir, run.masks_dir, fft_threshold=self.config.fft_threshold,
                                           progress=False)
            except InputError as exc:
                run.warnings.append(f"dataset: {exc}")
        run.inputs["hook"] = {"steps": len(self.scalars.steps), "calls": self.n_calls,
                              "diag_interval": self.config.diag_interval, "latent_files": len(self.latents),
                              "attention_captures": len(self.attention)}
        run.warnings.extend(self.warnings)
        return run

    def finish(self) -> Diagnosis | None:
        """Remove the hooks, analyse everything seen, write the report; return the Diagnosis.

        Writes into ``config.report_dir``: ``diagnosis.json`` (schema-valid),
        ``report.html``/``report.pdf``/``figures/`` (unless ``write_report=False``),
        ``hook_log.jsonl`` and ``latents/``. Calling it again returns the same
        diagnosis. Returns None only if the analysis itself failed (a warning
        says why; ``raise_errors=True`` raises instead).
        """
        if self._finished:
            return self._diagnosis
        self.close()
        try:
            from diffdiag.diagnosis_io import write_diagnosis
            from diffdiag.pipeline import analyze

            report_dir = Path(self.config.report_dir)
            report_dir.mkdir(parents=True, exist_ok=True)
            run = self.run_data()
            self._finished = True
            write_log(report_dir / "hook_log.jsonl", run.log)
            settings = Settings(spike_sigma=float(self.config.spike_sigma), fft_threshold=self.config.fft_threshold)
            diagnosis = analyze(run, settings)
            if self.config.write_report:
                from diffdiag.reports import write_report

                diagnosis.outputs.update(write_report(run, diagnosis, report_dir, settings))
            diagnosis.outputs["diagnosis"] = str(report_dir / "diagnosis.json")
            diagnosis.outputs["hook_log"] = str(report_dir / "hook_log.jsonl")
            diagnosis.outputs["live_findings"] = [f.to_dict() for f in self.live_findings]
            write_diagnosis(diagnosis, report_dir / "diagnosis.json")
            self._diagnosis = diagnosis
        except Exception as exc:  # noqa: BLE001
            self._finished = True
            if self.config.raise_errors or os.environ.get("DIFFDIAG_STRICT", "") not in ("", "0"):
                raise
            self._warn_once("finish", f"diffdiag: the final analysis failed ({type(exc).__name__}: {exc})")
            return None
        self.callbacks.finish(self._diagnosis, report_dir)
        return self._diagnosis

    def __enter__(self) -> "LossDiagnostics":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()

    def __del__(self) -> None:  # hooks never outlive the diagnostics object
        try:
            self.captures.detach()
        except Exception:  # noqa: BLE001
            pass
