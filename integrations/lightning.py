"""A Lightning ``Callback`` that runs :class:`~diffdiag.integrations.hook.LossDiagnostics`.

::

    from diffdiag.integrations.lightning import DiffdiagCallback
    trainer = lightning.Trainer(callbacks=[DiffdiagCallback(report_dir="diag", diag_interval=200)])

After every optimiser step it logs ``trainer.global_step``, the step's loss
(``outputs["loss"]`` or the returned tensor; no sync), the learning rate and
the batch; the model given to the hooks is ``pl_module.unet`` when the module
has one, else the module. At the end of ``fit`` it writes the diagnosis into
``report_dir`` (``callback.diagnosis``); on an exception the hooks are removed.
Lightning (``lightning`` or ``pytorch_lightning``) is imported only when the
callback is created.
"""

from __future__ import annotations

from typing import Any

from .hook import DiagConfig, LossDiagnostics

__all__ = ["DiffdiagCallback"]


def _callback_base() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise ImportError("DiffdiagCallback needs Lightning: pip install lightning") from None
    return Callback


def DiffdiagCallback(ema_beta: float = 0.98, **config: Any) -> Any:  # noqa: N802 - reads like a class
    """A Lightning callback (an instance of a ``lightning.pytorch.Callback`` subclass).

    Parameters
    ----------
    ema_beta : float
        Smoothing of the EMA loss it logs beside the raw loss.
    **config
        :class:`~diffdiag.integrations.hook.DiagConfig` fields.
    """
    base = _callback_base()
    cfg = DiagConfig.from_any(config)

    class _DiffdiagCallback(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.diag = LossDiagnostics(cfg)
            self.diagnosis = None
            self._ema: Any = None
            self._last_step = -1

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            try:
                if not getattr(trainer, "is_global_zero", True):
                    return
                step = int(trainer.global_step)
                if step == self._last_step:      # gradient accumulation: one record per optimiser step
                    return
                self._last_step = step
                loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
                if loss is None:
                    return
                loss = loss.detach() if hasattr(loss, "detach") else float(loss)
                self._ema = loss if self._ema is None else ema_beta * self._ema + (1 - ema_beta) * loss
                lr = None
                opts = getattr(trainer, "optimizers", None) or []
                if opts:
                    lr = opts[0].param_groups[0].get("lr")
                model = getattr(pl_module, "unet", None) or pl_module
                self.diag.log_step(step, loss, self._ema, model=model, batch=batch, lr=lr)
            except Exception as exc:  # noqa: BLE001 - never break fit()
                self.diag._internal("lightning.on_train_batch_end", exc)

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            if getattr(trainer, "is_global_zero", True):
                self.diagnosis = self.diag.finish()
            else:
                self.diag.close()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self.diag.close()

    _DiffdiagCallback.__name__ = _DiffdiagCallback.__qualname__ = "DiffdiagCallback"
    return _DiffdiagCallback()
