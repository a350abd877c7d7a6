"""A plain-loop helper for accelerate / diffusers example scripts.

The diffusers training examples (``train_text_to_image_lora.py``,
``train_dreambooth_lora.py``) run a hand-written loop under 🤗 Accelerate.
Three lines add diffdiag to one::

    from diffdiag.integrations.loop import attach
    diag = attach(unet, report_dir=os.path.join(args.output_dir, "diffdiag"), accelerator=accelerator)
    ...
            accelerator.backward(loss)
            ...
            if accelerator.sync_gradients:
                diag.step(global_step, loss, batch=batch, lr=lr_scheduler.get_last_lr()[0], timesteps=timesteps)
    ...
    diag.finish()        # after the loop: diagnosis.json + report in report_dir

:class:`LoopDiagnostics` keeps the smoothed loss on the device (no sync),
does nothing on non-main processes, unwraps the model (DDP, ``torch.compile``,
Accelerate) for the hooks, and never raises into the loop.
"""

from __future__ import annotations

from typing import Any

from .hook import DiagConfig, LossDiagnostics

__all__ = ["LoopDiagnostics", "attach"]


class LoopDiagnostics:
    """:class:`~diffdiag.integrations.hook.LossDiagnostics` for a hand-written training loop.

    Parameters
    ----------
    model : torch.nn.Module, optional
        The UNet being trained (wrapped or not).
    accelerator : accelerate.Accelerator, optional
        When given, only the main process records anything and the model is unwrapped with it.
    ema_beta : float
        Smoothing of the EMA loss computed here (when the loop has none of its own).
    **config
        :class:`~diffdiag.integrations.hook.DiagConfig` fields (``report_dir``, ``diag_interval``, ...).
    """

    def __init__(self, model: Any = None, accelerator: Any = None, ema_beta: float = 0.98, **config: Any) -> None:
        self.active = accelerator is None or bool(getattr(accelerator, "is_main_process", True))
        self.diag = LossDiagnostics(DiagConfig.from_any(config)) if self.active else None
        self.model = _unwrap(model, accelerator) if model is not None else None
        self.ema_beta = float(ema_beta)
        self._ema: Any = None

    def step(self, step: int, loss: Any, ema_loss: Any = None, batch: Any = None, **kw: Any) -> None:
        """Record one optimiser step (call it once per ``global_step``). Never raises."""
        if self.diag is None:
            return
        try:
            if ema_loss is None:
                cur = loss.detach() if hasattr(loss, "detach") else float(loss)
                self._ema = cur if self._ema is None else self.ema_beta * self._ema + (1 - self.ema_beta) * cur
                ema_loss = self._ema
            self.diag.log_step(step, loss.detach() if hasattr(loss, "detach") else loss, ema_loss,
                               model=self.model, batch=batch, **kw)
        except Exception as exc:  # noqa: BLE001 - the loop must go on
            self.diag._internal("loop.step", exc)

    def finish(self) -> Any:
        """Remove the hooks, analyse, write the report; the Diagnosis (None on other processes)."""
        return None if self.diag is None else self.diag.finish()

    def close(self) -> None:
        """Remove the hooks without analysing (e.g. when the run is aborted)."""
        if self.diag is not None:
            self.diag.close()

    def __enter__(self) -> "LoopDiagnostics":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.close()


def _unwrap(model: Any, accelerator: Any) -> Any:
    if accelerator is not None and hasattr(accelerator, "unwrap_model"):
        try:
            model = accelerator.unwrap_model(model)
        except Exception:  # noqa: BLE001
            pass
    for attr in ("module", "_orig_mod"):   # DDP, torch.compile
        while hasattr(model, attr) and hasattr(getattr(model, attr), "forward"):
            model = getattr(model, attr)
    return model


def attach(model: Any = None, accelerator: Any = None, **config: Any) -> LoopDiagnostics:
    """Shorthand for :class:`LoopDiagnostics` (``attach(unet, report_dir=..., diag_interval=...)``)."""
    return LoopDiagnostics(model, accelerator=accelerator, **config)
