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
* **Every call** (O(1) time and memory per call): the loss (and ``grad_norm``
  when given) goes through a robust running detector
  (:class:`diffdiag.analyzers.streaming.RobustStream`) that raises
  ``loss_spike`` / ``loss_divergence`` / ``loss_nonfinite`` /
  ``grad_norm_spike`` findings as they happen: to the callbacks (W&B, MLflow,
  yours), and as a :class:`DiagnosticWarning`. Python floats are checked at
  once; tensors are buffered and read in chunks of ``sync_every`` values (one
  device sync per chunk, none per step).
* **Every** ``diag_interval`` **steps** (when ``model``/``batch`` are given):
  latent statistics before/after the UNet (``pre`` = its input sample,
  ``post`` = its output, from a forward hook), saved as
  ``latents/latents_step<N>.safetensors`` (docs/CONTRACT.md §2); batch statistics of the
  images (brightness, contrast, non-finite values) with their sample ids; the
  cross-attention maps of the next interval step's forward
  (:mod:`.attention_capture`), checked for ``attention_collapse``.
* ``finish()``: removes every hook, builds a :class:`~diffdiag.model.RunData`
  from what it saw, runs the same analysis as ``diffdiag analyze``
  (:func:`diffdiag.pipeline.analyze`), writes ``report.html``/``report.pdf``/
  ``diagnosis.json`` plus ``hook_log.jsonl`` (so ``diffdiag analyze --logdir
  REPORT/hook_log.jsonl --latents REPORT/latents`` re-analyses it later) and
  returns the :class:`~diffdiag.model.Diagnosis`.

Never raises into the training loop (unless ``raise_errors=True``): a capture
that cannot work on this model logs ONE warning and is switched off.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from diffdiag.analyzers.streaming import RobustStream, StreamEvent
from diffdiag.model import Diagnosis, Finding, LatentFile, RunData, RunLog, Series, Settings

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
        ``on_finish(diagnosis, report_dir)`` methods; their errors are swallowed.
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


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "ndim")


_IMAGE_KEYS = ("pixel_values", "images", "image", "pixels", "img", "x", "input")
_ID_KEYS = ("sample_ids", "sample_id", "ids", "id", "image_ids", "keys", "__key__", "paths", "filenames",
            "file_names", "image_paths")


def _batch_images(batch: Any) -> Any:
    """The image tensor (B, C, H, W) of a batch: a tensor, a dict, or a tuple/list."""
    if _is_tensor(batch):
        return batch
    if isinstance(batch, Mapping):
        for k in _IMAGE_KEYS:
            v = batch.get(k)
            if _is_tensor(v):
                return v
        return None
    if isinstance(batch, (list, tuple)) and batch and _is_tensor(batch[0]):
        return batch[0]
    return None


def _batch_ids(batch: Any) -> list[str] | None:
    if isinstance(batch, Mapping):
        for k in _ID_KEYS:
            v = batch.get(k)
            if v is None:
                continue
            if _is_tensor(v):
                v = v.detach().cpu().reshape(-1).tolist()
            if isinstance(v, (list, tuple)):
                return [str(Path(x).stem) if k in ("paths", "filenames", "file_names", "image_paths") else str(x)
                        for x in v]
    return None


class LossDiagnostics:
    """Diagnostics that run inside the training loop (see the module docstring).

    Parameters
    ----------
    config : DiagConfig, dict, object or None
        Settings; a trainer's own config object contributes the fields it has
        (e.g. ``diag_interval``).
    **overrides
        Field values that win over ``config``.
    """

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        self.config = DiagConfig.from_any(config, **overrides)
        c = self.config
        self.stream = RobustStream(sigma=c.spike_sigma)
        self.grad_stream = RobustStream(sigma=c.spike_sigma)
        # full histories (what a logger keeps; the live checks themselves are O(1))
        self._steps: list[int] = []
        self._loss: list[float] = []
        self._ema_steps: list[int] = []
        self._ema: list[float] = []
        self._scalars: dict[str, tuple[list[int], list[float]]] = {}
        self._pending: list[tuple[int, Any, Any, Any]] = []   # (step, loss, ema, grad_norm) still tensors
        self.sample_ids: dict[int, list[str]] = {}
        self.timesteps: dict[int, list[float]] = {}
        self.live_findings: list[Finding] = []
        self.batch_stats: list[dict[str, Any]] = []
        self.attention: list[dict[str, Any]] = []
        self.latents: list[LatentFile] = []
        self.latent_stats: list[dict[str, Any]] = []
        self.model_info: dict[str, Any] = {}
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._disabled: set[str] = set()
        self._callbacks: list[Any] = list(c.callbacks)
        self._trackers_added = False
        self._model_id: int | None = None
        self._latent_handle: Any = None
        self._last_io: tuple[Any, Any] | None = None
        self._attn: Any = None
        self._last_step: int | None = None
        self._sparse = False
        self._finished = False
        self._diagnosis: Diagnosis | None = None
        self.n_calls = 0

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
            if isinstance(loss, (float, int)) and not self._pending and (grad_norm is None or
                                                                          isinstance(grad_norm, (float, int))):
                self._ingest(step, float(loss), ema_loss, grad_norm)
            else:
                self._pending.append((step, loss, ema_loss, grad_norm))
                if len(self._pending) >= self.config.sync_every:
                    self._flush()
            if lr is not None:
                self._scalar("lr", step, lr)
            for k, v in scalars.items():
                self._scalar(k, step, v)
            if sample_ids is not None:
                self.sample_ids[step] = [str(s) for s in sample_ids]
            last, self._last_step = self._last_step, step
            if last is not None and step - last > 1:
                self._sparse = True
            if model is None and batch is None:
                return
            self._interval(step, model, batch, timesteps)
        except Exception as exc:  # noqa: BLE001 - never break the training loop
            self._internal("log_step", exc)

    # ================================================================== scalars
    def _scalar(self, key: str, step: int, value: Any) -> None:
        s = self._scalars.get(key)
        if s is None:
            s = self._scalars[key] = ([], [])
        s[0].append(step)
        s[1].append(value)   # may be a tensor: converted at finish()

    def _ingest(self, step: int, loss: float, ema: Any, grad_norm: Any) -> None:
        self._steps.append(step)
        self._loss.append(loss)
        if ema is not None:
            self._ema_steps.append(step)
            self._ema.append(float(ema))
        for ev in self.stream.update(step, loss) if self.stream is not None else ():
            self._event(ev, "loss")
        if grad_norm is not None:
            g = float(grad_norm)
            self._scalar("grad_norm", step, g)
            for ev in self.grad_stream.update(step, g):
                if ev.kind == "spike":
                    self._event(ev, "grad_norm")

    def _flush(self) -> None:
        """Read buffered tensor values from the device (one sync per kind) and check them."""
        pend, self._pending = self._pending, []
        if not pend:
            return
        losses = _to_floats([p[1] for p in pend])
        emas = _to_floats([p[2] for p in pend])
        grads = _to_floats([p[3] for p in pend])
        for (step, _, e, g), lo, em, gn in zip(pend, losses, emas, grads):
            self._ingest(step, lo, None if e is None else em, None if g is None else gn)

    # ================================================================== live findings
    def _event(self, ev: StreamEvent, key: str) -> None:
        f = self._finding(ev, key)
        if f is not None:
            self._raise_finding(f, ev.step)

    def _context(self, step: int) -> dict[str, Any]:
        ctx: dict[str, Any] = {}
        lr = self._scalars.get("lr")
        if lr and lr[0]:
            try:
                ctx["lr"] = float(lr[1][-1])
            except Exception:  # noqa: BLE001
                pass
        if step in self.sample_ids:
            ctx["sample_ids"] = self.sample_ids[step]
        return ctx

    def _finding(self, ev: StreamEvent, key: str) -> Finding | None:
        ctx = self._context(ev.step)
        if ev.kind == "nonfinite":
            return Finding("loss_nonfinite", "critical", 1.0,
                           f"The {key} became non-finite ({ev.value}) at step {ev.step}.",
                           {"step": ev.step, "steps": [ev.step], "key": key},
                           {"value": ev.value, "live": True, **ctx})
        if ev.kind == "spike":
            thr = float(ev.extra.get("threshold", self.config.spike_sigma))
            ratio = ev.value / ev.baseline if ev.baseline > 0 else float("inf")
            fid = "loss_spike" if key == "loss" else "grad_norm_spike"
            sev = "critical" if ev.z > 2 * thr else "warning"
            return Finding(fid, sev, min(1.0, ev.z / (2 * thr)),
                           f"The {key} spiked to {ev.value:.4g} at step {ev.step}, {ratio:.1f}x its running "
                           f"level {ev.baseline:.3g} ({ev.z:.1f} robust sigma).",
                           {"step": ev.step, "key": key},
                           {"value": ev.value, "baseline": ev.baseline, "z": ev.z, "ratio": ratio,
                            "sigma_log": ev.sigma, "threshold": thr, "live": True, **ctx})
        if ev.kind == "divergence" and key == "loss":
            ratio = (ev.level_after or 0.0) / (ev.level_before or 1.0)
            return Finding("loss_divergence", "critical", min(1.0, ratio / 10.0),
                           f"The {key} jumped to a {ratio:.1f}x higher level from step {ev.step} "
                           f"({ev.level_before:.3g} -> {ev.level_after:.3g}) and stays there.",
                           {"step": ev.step, "key": key},
                           {"level_before": ev.level_before, "level_after": ev.level_after, "ratio": ratio,
                            "live": True, **({"lr_at_step": ctx["lr"]} if "lr" in ctx else {})})
        return None

    def _raise_finding(self, f: Finding, step: int) -> None:
        self.live_findings.append(f)
        if self.config.warn:
            warnings.warn(f"diffdiag: {f.message}", DiagnosticWarning, stacklevel=4)
        self._ensure_trackers()
        for cb in list(self._callbacks):
            fn = getattr(cb, "on_finding", None)
            if fn is None:
                continue
            try:
                fn(f, step)
            except Exception as exc:  # noqa: BLE001 - a tracker must not break training
                self._warn_once(f"callback:{id(cb)}", f"callback {type(cb).__name__}.on_finding failed "
                                f"({type(exc).__name__}: {exc}); further errors of it are silenced")

    def _ensure_trackers(self) -> None:
        if self._trackers_added:
            return
        self._trackers_added = True
        t = self.config.trackers
        kinds = ("wandb", "mlflow") if t == "auto" else tuple(t or ())
        for kind in kinds:
            try:
                from importlib import import_module

                mod = import_module(f"diffdiag.integrations.{kind}_hook")
                cb = mod.make_callback()
            except ImportError:
                continue
            except Exception as exc:  # noqa: BLE001
                self._warn_once(f"tracker:{kind}", f"the {kind} hook could not start ({type(exc).__name__}: {exc})")
                continue
            if cb is not None:
                self._callbacks.append(cb)

    # ================================================================== interval captures
    def _interval(self, step: int, model: Any, batch: Any, timesteps: Any) -> None:
        c = self.config
        at_interval = step % c.diag_interval == 0
        if model is not None and id(model) != self._model_id:
            self._attach(model)
        if at_interval:
            # A capture syncs anyway: check the buffered losses now too.
            self._flush()
            if timesteps is not None:
                self._capture("timesteps", self._capture_timesteps, step, timesteps)
            if batch is not None and c.capture_batch:
                self._capture("batch", self._capture_batch, step, batch)
            if model is not None and c.capture_latents:
                self._capture("latents", self._capture_latents, step)
        if self._attn is not None:
            if self._attn.armed:
                self._capture("attention", self._collect_attention, step)
            nxt = step + 1
            if "attention" not in self._disabled and (nxt % c.diag_interval == 0 or self._sparse):
                self._attn.arm(nxt if not self._sparse else nxt)

    def _capture(self, kind: str, fn: Any, *args: Any) -> None:
        if kind in self._disabled:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - one warning, then this capture is off
            if self.config.raise_errors:
                raise
            self._disabled.add(kind)
            if kind == "attention" and self._attn is not None:
                try:
                    self._attn.disarm()
                except Exception:  # noqa: BLE001
                    pass
            self._warn_once(f"capture:{kind}", f"diffdiag: the {kind} capture does not work on this model/batch "
                            f"({type(exc).__name__}: {exc}); it is switched off, training continues")

    def _attach(self, model: Any) -> None:
        """Hook a (new) model: forward hook for latents, the attention capture, model facts."""
        self._detach_model()
        self._model_id = id(model)
        from .attention_capture import AttentionCapture, find_unet

        unet = find_unet(model)
        try:
            norms = sorted({type(m).__name__ for m in unet.modules() if "Norm" in type(m).__name__})
            self.model_info = {"class": type(unet).__name__, "normalization_layers": norms}
        except Exception:  # noqa: BLE001
            self.model_info = {"class": type(unet).__name__}
        if self.config.capture_latents and "latents" not in self._disabled:
            def _keep(module, args, kwargs, output):
                x = args[0] if args else kwargs.get("sample", kwargs.get("x"))
                self._last_io = (x, output)

            try:
                self._latent_handle = unet.register_forward_hook(_keep, with_kwargs=True)
            except Exception as exc:  # noqa: BLE001
                self._disabled.add("latents")
                self._warn_once("capture:latents", f"diffdiag: cannot hook the model's forward for latent "
                                f"statistics ({type(exc).__name__}: {exc}); latents are not captured")
        if self.config.capture_attention and "attention" not in self._disabled:
            try:
                self._attn = AttentionCapture(unet, max_items=self.config.latent_items)
            except Exception as exc:  # noqa: BLE001
                self._disabled.add("attention")
                self._warn_once("capture:attention", f"diffdiag: no cross-attention maps for "
                                f"{type(unet).__name__} ({exc}); attention checks are off, training continues")

    def _detach_model(self) -> None:
        if self._latent_handle is not None:
            self._latent_handle.remove()
            self._latent_handle = None
        if self._attn is not None:
            self._attn.disarm()
            self._attn = None
        self._last_io = None
        self._model_id = None

    def _capture_timesteps(self, step: int, timesteps: Any) -> None:
        if _is_tensor(timesteps):
            timesteps = timesteps.detach().float().cpu().reshape(-1).tolist()
        self.timesteps[step] = [float(t) for t in timesteps]

    def _capture_batch(self, step: int, batch: Any) -> None:
        ids = _batch_ids(batch)
        if ids is not None and step not in self.sample_ids:
            self.sample_ids[step] = ids
        x = _batch_images(batch)
        if x is None:
            if ids is None:
                raise ValueError(f"no image tensor found in the batch ({type(batch).__name__}); "
                                 f"expected a tensor or a dict with one of {', '.join(_IMAGE_KEYS)}")
            return
        import torch

        with torch.no_grad():
            xf = x.detach().float()
            b = xf.shape[0]
            flat = xf.reshape(b, -1)
            finite = torch.isfinite(flat)
            nonfinite = (~finite).sum(dim=1)
            clean = torch.where(finite, flat, torch.zeros_like(flat))
            cnt = finite.sum(dim=1).clamp(min=1)
            mean = clean.sum(dim=1) / cnt
            var = (torch.where(finite, (flat - mean[:, None]) ** 2, torch.zeros_like(flat))).sum(dim=1) / cnt
            rows = torch.stack([mean, var.sqrt(), nonfinite.float()], dim=1).cpu().tolist()
        self.batch_stats.append({
            "step": step,
            "sample_ids": self.sample_ids.get(step) or [f"step{step}_item{i}" for i in range(b)],
            "brightness": [r[0] for r in rows], "contrast": [r[1] for r in rows],
            "nonfinite": [int(r[2]) for r in rows],
        })

    def _capture_latents(self, step: int) -> None:
        io, self._last_io = self._last_io, None
        if io is None:
            return   # the model did not run a forward since the last capture
        x, out = io
        y = getattr(out, "sample", None)
        if y is None:
            y = out[0] if isinstance(out, (tuple, list)) else out
        if not (_is_tensor(x) and _is_tensor(y)) or x.ndim != 4 or y.ndim != 4:
            raise ValueError(f"the model's forward did not take/return a (B, C, H, W) tensor "
                             f"(got {type(x).__name__}, {type(y).__name__})")
        import torch

        n = self.config.latent_items
        with torch.no_grad():
            pre = x.detach()[:n].float().cpu().numpy()
            post = y.detach()[:n].float().cpu().numpy()
        import numpy as np

        with np.errstate(all="ignore"):   # non-finite latents are data (counted), not warnings
            self.latent_stats.append({
                "step": step,
                "pre_mean": pre.mean(axis=(0, 2, 3)).tolist(), "pre_std": pre.std(axis=(0, 2, 3)).tolist(),
                "post_mean": post.mean(axis=(0, 2, 3)).tolist(), "post_std": post.std(axis=(0, 2, 3)).tolist(),
                "nonfinite": int((~np.isfinite(pre)).sum() + (~np.isfinite(post)).sum()),
            })
        path = f"latents_step{step:06d}.safetensors"
        if self.config.save_latents:
            from safetensors.numpy import save_file

            d = Path(self.config.report_dir) / "latents"
            d.mkdir(parents=True, exist_ok=True)
            save_file({"pre": np.ascontiguousarray(pre), "post": np.ascontiguousarray(post)}, str(d / path),
                      metadata={"step": str(step), "writer": "diffdiag.hook"})
            path = str(d / path)
        self.latents.append(LatentFile(path=path, step=step, arrays={"pre": pre, "post": post}))

    def _collect_attention(self, step: int) -> None:
        caps = self._attn.collect()
        if not caps:
            return
        from diffdiag.analyzers.attention import classify_collapse, token_map_stats

        for cap in caps:
            cap_step = cap["step"] if cap["step"] is not None else step
            cap["step"] = cap_step
            self.attention.append(cap)
            stats = token_map_stats(cap["maps"])
            for tok, kind in enumerate(classify_collapse(stats)):
                if kind is None:
                    continue
                key = f"attn:{cap['layer']}:{tok}"
                if key in self._warned:
                    continue
                self._warned.add(key)
                self._raise_finding(Finding(
                    "attention_collapse", "warning", 0.8,
                    f"Cross-attention of token {tok} in {cap['layer']} collapsed to "
                    f"{'a point' if kind == 'point' else 'a uniform map'} at step {cap_step}.",
                    {"layer": cap["layer"], "token": tok},
                    {"kind": kind, "step": cap_step, "entropy": float(stats.entropy[tok]),
                     "peak": float(stats.peak[tok]), "cv": float(stats.cv[tok]), "live": True}), cap_step)

    # ================================================================== errors
    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        self.warnings.append(message)
        warnings.warn(message, DiagnosticWarning, stacklevel=4)

    def _internal(self, where: str, exc: Exception) -> None:
        if self.config.raise_errors:
            raise exc
        self._warn_once(f"internal:{where}:{type(exc).__name__}",
                        f"diffdiag: internal error in {where} ({type(exc).__name__}: {exc}); training continues")

    # ================================================================== finish
    def close(self) -> None:
        """Remove every hook from the model (no analysis). ``finish()`` calls it."""
        self._detach_model()

    def run_data(self) -> RunData:
        """What the hook saw, as the RunData the analysis reads."""
        self._flush()
        import numpy as np

        log = RunLog(loss_key="loss", sources=["diffdiag.hook"])
        log.scalars["loss"] = Series("loss", np.array(self._steps), np.array(self._loss, dtype=float))
        if self._ema:
            log.scalars["ema_loss"] = Series("ema_loss", np.array(self._ema_steps), np.array(self._ema, dtype=float))
            log.ema_key = "ema_loss"
        for k, (st, vals) in self._scalars.items():
            log.scalars[k] = Series(k, np.array(st), np.array(_to_floats(vals), dtype=float))
        if "lr" in log.scalars:
            log.lr_key = "lr"
        if "grad_norm" in log.scalars:
            log.grad_norm_key = "grad_norm"
        log.sample_ids = dict(self.sample_ids)
        log.timesteps = {k: np.asarray(v, dtype=float) for k, v in self.timesteps.items()}
        run = RunData(name=self.config.run_name, log=log, latents=list(self.latents),
                      config=dict(self.config.run_config), model_info=dict(self.model_info))
        if self.attention:
            run.attention = list(self.attention)
        if self.batch_stats:
            run.extra["batch_stats"] = list(self.batch_stats)
        if self.latent_stats:
            run.extra["latent_stats"] = list(self.latent_stats)
        if self.config.dataset_dir is not None and Path(self.config.dataset_dir).is_dir():
            run.dataset_dir = Path(self.config.dataset_dir)
            run.inputs["dataset"] = str(run.dataset_dir)
            if self.config.masks_dir is not None and Path(self.config.masks_dir).is_dir():
                run.masks_dir = Path(self.config.masks_dir)
                run.inputs["masks"] = str(run.masks_dir)
        run.extra["hook"] = {"calls": self.n_calls, "stream": self.stream.state()}
        run.inputs["hook"] = {"steps": len(self._steps), "diag_interval": self.config.diag_interval,
                              "latent_files": len(self.latents), "attention_captures": len(self.attention)}
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
        self._finished = True
        self.close()
        try:
            from diffdiag.diagnosis_io import write_diagnosis
            from diffdiag.pipeline import analyze

            report_dir = Path(self.config.report_dir)
            report_dir.mkdir(parents=True, exist_ok=True)
            run = self.run_data()
            self._write_log(report_dir / "hook_log.jsonl", run)
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
            if self.config.raise_errors or os.environ.get("DIFFDIAG_STRICT", "") not in ("", "0"):
                raise
            self._warn_once("finish", f"diffdiag: the final analysis failed ({type(exc).__name__}: {exc})")
            return None
        for cb in list(self._callbacks):
            fn = getattr(cb, "on_finish", None)
            if fn is None:
                continue
            try:
                fn(self._diagnosis, report_dir)
            except Exception as exc:  # noqa: BLE001
                self._warn_once(f"callback-finish:{id(cb)}", f"callback {type(cb).__name__}.on_finish failed "
                                f"({type(exc).__name__}: {exc})")
        return self._diagnosis

    def _write_log(self, path: Path, run: RunData) -> None:
        """The scalars as JSONL (docs/CONTRACT.md §2), one object per step, for a later ``diffdiag analyze``."""
        rows: dict[int, dict[str, Any]] = {}
        for key, s in run.log.scalars.items():
            for st, v in zip(s.steps.tolist(), s.values.tolist()):
                rows.setdefault(st, {"step": st})[key] = v if math.isfinite(v) else str(v)
        for st, ids in run.log.sample_ids.items():
            rows.setdefault(st, {"step": st})["sample_ids"] = ids
        for st, ts in run.log.timesteps.items():
            rows.setdefault(st, {"step": st})["timesteps"] = [float(t) for t in ts]
        with open(path, "w", encoding="utf-8") as fh:
            for st in sorted(rows):
                fh.write(json.dumps(rows[st]) + "\n")

    def __enter__(self) -> "LossDiagnostics":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()

    def __del__(self) -> None:  # hooks never outlive the diagnostics object
        try:
            self._detach_model()
        except Exception:  # noqa: BLE001
            pass


def _to_floats(values: list[Any]) -> list[float]:
    """Floats from a list of floats / 0-d tensors / None (None -> nan); one device sync for the tensors."""
    out: list[float] = [math.nan] * len(values)
    tens_idx = []
    for i, v in enumerate(values):
        if v is None:
            continue
        if _is_tensor(v):
            tens_idx.append(i)
        else:
            out[i] = float(v)
    if tens_idx:
        try:
            import torch

            # one stack + one device->host copy for the whole chunk (0-d tensors of one device)
            vals = torch.stack([values[i] for i in tens_idx]).detach().double().cpu().reshape(-1).tolist()
            if len(vals) != len(tens_idx):
                raise ValueError("not 0-d")
        except Exception:  # noqa: BLE001 - mixed devices/shapes: one by one
            vals = [float(values[i].detach().float().reshape(-1)[0].cpu()) for i in tens_idx]
        for i, v in zip(tens_idx, vals):
            out[i] = float(v)
    return out
