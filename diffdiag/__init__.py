"""diffdiag: diagnostics for diffusion-model and LoRA training.

Reads a run's logs, sample images, latents, dataset and checkpoints, finds the
symptoms (loss spikes, stripes, doubled tiling, ...), ranks their probable
causes and writes the answer as ``diagnosis.json``, an HTML/PDF report, and
back into W&B or MLflow.

The in-training hook::

    from diffdiag import LossDiagnostics, DiagConfig
    diag = LossDiagnostics(DiagConfig(report_dir="diag"))
    diag.log_step(step, loss, ema_loss, model, batch)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "LossDiagnostics", "DiagConfig", "analyze"]


def __getattr__(name: str):
    # Lazy: importing diffdiag must stay cheap and must never import torch or a tracker.
    if name in ("LossDiagnostics", "DiagConfig"):
        from .integrations import hook

        return getattr(hook, name)
    if name == "analyze":
        from .pipeline import analyze

        return analyze
    raise AttributeError(f"module 'diffdiag' has no attribute {name!r}")
