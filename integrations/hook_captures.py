"""The hook's captures: latents, batch statistics and cross-attention maps on interval steps.

Each capture is a small class that can be used alone:

* :class:`LatentCapture` — a forward hook on the UNet keeps its last input
  (``pre``, the noisy latents) and output (``post``, the prediction);
  :meth:`~LatentCapture.capture` saves them as
  ``latents/latents_step<N>.safetensors`` (docs/CONTRACT.md §2) with their
  per-channel statistics;
* :class:`BatchCapture` — per-image brightness, contrast and non-finite
  counts of the batch, with the sample ids;
* :class:`AttentionWatch` — arms an
  :class:`~diffdiag.integrations.attention_capture.AttentionCapture` for the
  next interval step's forward and checks the maps for ``attention_collapse``
  (built by :func:`diffdiag.findings.attention.attention_collapse`, as the
  offline check does).

:class:`Captures` runs them from the hook: it attaches to (a new) model,
calls each capture on interval steps, and switches a capture off with ONE
warning when it cannot work on this model or batch — training goes on.
Between captures nothing runs but the latent forward hook's reference swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from diffdiag.model import Finding, LatentFile

from .hook_scalars import is_tensor

__all__ = ["LatentStats", "BatchStats", "LatentCapture", "BatchCapture", "AttentionWatch", "Captures",
           "batch_images", "batch_ids"]

_IMAGE_KEYS = ("pixel_values", "images", "image", "pixels", "img", "x", "input")
_ID_KEYS = ("sample_ids", "sample_id", "ids", "id", "image_ids", "keys", "__key__", "paths", "filenames",
            "file_names", "image_paths")
_PATH_KEYS = ("paths", "filenames", "file_names", "image_paths")


def batch_images(batch: Any) -> Any:
    """The image tensor (B, C, H, W) of a batch: a tensor, a dict, or a tuple/list; None if none."""
    if is_tensor(batch):
        return batch
    if isinstance(batch, Mapping):
        for k in _IMAGE_KEYS:
            v = batch.get(k)
            if is_tensor(v):
                return v
        return None
    if isinstance(batch, (list, tuple)) and batch and is_tensor(batch[0]):
        return batch[0]
    return None


def batch_ids(batch: Any) -> list[str] | None:
    """The sample ids of a dict batch (file paths give their stems); None if none."""
    if isinstance(batch, Mapping):
        for k in _ID_KEYS:
            v = batch.get(k)
            if v is None:
                continue
            if is_tensor(v):
                v = v.detach().cpu().reshape(-1).tolist()
            if isinstance(v, (list, tuple)):
                return [str(Path(x).stem) if k in _PATH_KEYS else str(x) for x in v]
    return None


@dataclass
class LatentStats:
    """Per-channel statistics of one latent capture (lists of length C)."""

    step: int
    pre_mean: list[float]
    pre_std: list[float]
    post_mean: list[float]
    post_std: list[float]
    nonfinite: int


@dataclass
class BatchStats:
    """Per-image statistics of one captured batch (lists of length B)."""

    step: int
    sample_ids: list[str]
    brightness: list[float]
    contrast: list[float]
    nonfinite: list[int]


class LatentCapture:
    """Latents entering (``pre``) and leaving (``post``) the UNet, saved on capture steps.

    Parameters
    ----------
    max_items : int
        At most this many batch items per saved file.
    save_dir : path or None
        Where ``latents_step<N>.safetensors`` go (None: kept in memory only).
    """

    def __init__(self, *, max_items: int = 4, save_dir: str | Path | None = None) -> None:
        self.max_items = int(max_items)
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.files: list[LatentFile] = []
        self.stats: list[LatentStats] = []
        self._handle: Any = None
        self._last_io: tuple[Any, Any] | None = None

    def attach(self, unet: Any) -> None:
        """Register the forward hook that keeps the last (input, output) reference."""
        self.detach()

        def _keep(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("sample", kwargs.get("x"))
            self._last_io = (x, output)

        self._handle = unet.register_forward_hook(_keep, with_kwargs=True)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._last_io = None

    def capture(self, step: int) -> LatentFile | None:
        """Save the last forward's latents (None when the model did not run since the last capture)."""
        io, self._last_io = self._last_io, None
        if io is None:
            return None
        x, out = io
        y = getattr(out, "sample", None)
        if y is None:
            y = out[0] if isinstance(out, (tuple, list)) else out
        if not (is_tensor(x) and is_tensor(y)) or x.ndim != 4 or y.ndim != 4:
            raise ValueError(f"the model's forward did not take/return a (B, C, H, W) tensor "
                             f"(got {type(x).__name__}, {type(y).__name__})")
        import numpy as np
        import torch

        n = self.max_items
        with torch.no_grad():
            pre = x.detach()[:n].float().cpu().numpy()
            post = y.detach()[:n].float().cpu().numpy()
        with np.errstate(all="ignore"):   # non-finite latents are data (counted), not warnings
            self.stats.append(LatentStats(
                step, pre.mean(axis=(0, 2, 3)).tolist(), pre.std(axis=(0, 2, 3)).tolist(),
                post.mean(axis=(0, 2, 3)).tolist(), post.std(axis=(0, 2, 3)).tolist(),
                int((~np.isfinite(pre)).sum() + (~np.isfinite(post)).sum())))
        path = f"latents_step{step:06d}.safetensors"
        if self.save_dir is not None:
            from safetensors.numpy import save_file

            self.save_dir.mkdir(parents=True, exist_ok=True)
            save_file({"pre": np.ascontiguousarray(pre), "post": np.ascontiguousarray(post)},
                      str(self.save_dir / path), metadata={"step": str(step), "writer": "diffdiag.hook"})
            path = str(self.save_dir / path)
        lf = LatentFile(path=path, step=step, arrays={"pre": pre, "post": post})
        self.files.append(lf)
        return lf


class BatchCapture:
    """Per-image statistics of the training batch on capture steps."""

    def __init__(self) -> None:
        self.rows: list[BatchStats] = []

    def capture(self, step: int, batch: Any, sample_ids: list[str] | None = None) -> BatchStats | None:
        """Statistics of ``batch``'s images (None when it has ids but no image tensor).

        Raises
        ------
        ValueError
            When the batch has neither an image tensor nor sample ids.
        """
        x = batch_images(batch)
        if x is None:
            if sample_ids is None:
                raise ValueError(f"no image tensor found in the batch ({type(batch).__name__}); "
                                 f"expected a tensor or a dict with one of {', '.join(_IMAGE_KEYS)}")
            return None
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
        row = BatchStats(step, sample_ids or [f"step{step}_item{i}" for i in range(b)],
                         [r[0] for r in rows], [r[1] for r in rows], [int(r[2]) for r in rows])
        self.rows.append(row)
        return row


class AttentionWatch:
    """Cross-attention maps of the forward after each arming, checked live for collapse.

    Parameters
    ----------
    unet : torch.nn.Module
        A diffusers UNet (or anything holding one as ``.unet``).
    max_items : int
        Batch items the maps are averaged over.
    maps : list, optional
        The list the captured maps are appended to (``{"step", "layer", "maps"}`` each).
    reported : set, optional
        ``(layer, token)`` pairs already reported (each is reported once).

    Raises
    ------
    CaptureError
        When the model has no cross-attention layers.
    """

    def __init__(self, unet: Any, *, max_items: int = 4, maps: list[dict[str, Any]] | None = None,
                 reported: set[tuple[str, int]] | None = None) -> None:
        from .attention_capture import AttentionCapture

        self.capture = AttentionCapture(unet, max_items=max_items)
        self.maps: list[dict[str, Any]] = [] if maps is None else maps
        self._reported: set[tuple[str, int]] = set() if reported is None else reported

    @property
    def armed(self) -> bool:
        return self.capture.armed

    def arm(self, step: int) -> None:
        self.capture.arm(step)

    def detach(self) -> None:
        self.capture.disarm()

    def collect(self, step: int) -> list[Finding]:
        """The maps of the forward since :meth:`arm`; a finding per newly collapsed (layer, token)."""
        from diffdiag.analyzers.attention import classify_collapse, token_map_stats
        from diffdiag.findings.attention import attention_collapse

        out: list[Finding] = []
        for cap in self.capture.collect():
            cap_step = cap["step"] if cap["step"] is not None else step
            cap["step"] = cap_step
            self.maps.append(cap)
            stats = token_map_stats(cap["maps"])
            for tok, kind in enumerate(classify_collapse(stats)):
                if kind is None or (cap["layer"], tok) in self._reported:
                    continue
                self._reported.add((cap["layer"], tok))
                out.append(attention_collapse(cap["layer"], tok, kind=kind, stats=stats, steps=[cap_step],
                                              n_captures=1, live=True))
        return out


class Captures:
    """The interval captures of the hook, attached to one model at a time.

    Parameters
    ----------
    interval : int
        Capture every this many steps.
    latents, attention, batch : bool
        Which captures run.
    max_items : int
        Batch items per latent file / attention capture.
    save_dir : path or None
        Folder of the saved latents.
    warn : callable
        ``warn(key, message)``: reports a capture switched off (once per key).
    raise_errors : bool
        Let a capture's error propagate instead (debugging).

    Attributes
    ----------
    latents : LatentCapture
    batch : BatchCapture
    attention : AttentionWatch or None
        Present while a model with cross-attention is attached.
    model_info : dict
        Facts about the attached model (``class``, ``normalization_layers``).
    disabled : set of str
        Captures switched off.
    """

    def __init__(self, *, interval: int, latents: bool = True, attention: bool = True, batch: bool = True,
                 max_items: int = 4, save_dir: str | Path | None = None,
                 warn: Callable[[str, str], None] | None = None, raise_errors: bool = False) -> None:
        self.interval = int(interval)
        self.enabled = {"latents": bool(latents), "attention": bool(attention), "batch": bool(batch)}
        self.max_items = int(max_items)
        self.latents = LatentCapture(max_items=max_items, save_dir=save_dir)
        self.batch = BatchCapture()
        self.attention: AttentionWatch | None = None
        self.attention_maps: list[dict[str, Any]] = []
        self._collapsed: set[tuple[str, int]] = set()
        self.model_info: dict[str, Any] = {}
        self.disabled: set[str] = set()
        self._warn = warn or (lambda key, message: None)
        self._raise = bool(raise_errors)
        self._model_id: int | None = None

    def _on(self, kind: str) -> bool:
        return self.enabled[kind] and kind not in self.disabled

    # ------------------------------------------------------------------ model
    def attach(self, model: Any) -> None:
        """Hook a (new) model: the latent forward hook, the attention capture, model facts."""
        self.detach()
        self._model_id = id(model)
        from .attention_capture import find_unet

        unet = find_unet(model)
        try:
            norms = sorted({type(m).__name__ for m in unet.modules() if "Norm" in type(m).__name__})
            self.model_info = {"class": type(unet).__name__, "normalization_layers": norms}
        except Exception:  # noqa: BLE001
            self.model_info = {"class": type(unet).__name__}
        if self._on("latents"):
            try:
                self.latents.attach(unet)
            except Exception as exc:  # noqa: BLE001
                self.disabled.add("latents")
                self._warn("capture:latents", f"diffdiag: cannot hook the model's forward for latent "
                           f"statistics ({type(exc).__name__}: {exc}); latents are not captured")
        if self._on("attention"):
            try:
                self.attention = AttentionWatch(unet, max_items=self.max_items, maps=self.attention_maps,
                                                reported=self._collapsed)
            except Exception as exc:  # noqa: BLE001
                self.disabled.add("attention")
                self._warn("capture:attention", f"diffdiag: no cross-attention maps for "
                           f"{type(unet).__name__} ({exc}); attention checks are off, training continues")

    def detach(self) -> None:
        """Remove every hook from the model (the model is exactly as before)."""
        self.latents.detach()
        if self.attention is not None:
            self.attention.detach()
            self.attention = None
        self._model_id = None

    # ------------------------------------------------------------------ steps
    def step(self, step: int, model: Any, batch: Any, *, sample_ids: list[str] | None = None,
             sparse: bool = False) -> list[Finding]:
        """Run the captures due at ``step``; the live findings they raise.

        Parameters
        ----------
        step : int
        model, batch : optional
            The step's model and batch (either may be None).
        sample_ids : list of str, optional
            The batch's sample ids when known.
        sparse : bool
            The loop skips steps (then attention is armed for every next call).
        """
        found: list[Finding] = []
        if model is not None and id(model) != self._model_id:
            self.attach(model)
        if step % self.interval == 0:
            if batch is not None and self._on("batch"):
                self._run("batch", self.batch.capture, step, batch, sample_ids)
            if model is not None and self._on("latents"):
                self._run("latents", self.latents.capture, step)
        att = self.attention
        if att is not None:
            if att.armed:
                found += self._run("attention", att.collect, step) or []
            nxt = step + 1
            if self._on("attention") and self.attention is not None and (nxt % self.interval == 0 or sparse):
                att.arm(nxt)
        return found

    def _run(self, kind: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - one warning, then this capture is off
            if self._raise:
                raise
            self.disabled.add(kind)
            if kind == "attention" and self.attention is not None:
                try:
                    self.attention.detach()
                except Exception:  # noqa: BLE001
                    pass
            self._warn(f"capture:{kind}", f"diffdiag: the {kind} capture does not work on this model/batch "
                       f"({type(exc).__name__}: {exc}); it is switched off, training continues")
            return None
