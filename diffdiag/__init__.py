"""diffdiag: diagnostics for diffusion-model and LoRA training.

Reads a run's logs, sample images, latents, dataset and checkpoints, finds the
symptoms (loss spikes, stripes, doubled tiling, ...), ranks their probable
causes and writes the answer as ``diagnosis.json``, an HTML/PDF report, and
back into W&B or MLflow.

The Python API (:mod:`diffdiag.api`)::

    import diffdiag
    run = diffdiag.load(logdir="logs/")
    diagnosis = diffdiag.analyze(run)
    diffdiag.write_report(run, diagnosis, "diffdiag-report")

The in-training hook::

    from diffdiag import LossDiagnostics, DiagConfig
    diag = LossDiagnostics(DiagConfig(report_dir="diag"))
    diag.log_step(step, loss, ema_loss, model, batch)
"""

from __future__ import annotations

from ._version import __version__

_API = ("load", "analyze", "write_report", "push", "target_of", "SourceSpec", "MlflowTarget", "WandbTarget")
_MODEL = ("RunData", "Settings", "Diagnosis", "Finding", "Cause")
_HOOK = ("LossDiagnostics", "DiagConfig")

__all__ = ["__version__", *_API, *_MODEL, *_HOOK]


def __getattr__(name: str):
    # Lazy: importing diffdiag must stay cheap and must never import torch or a tracker.
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in _MODEL:
        from . import model

        return getattr(model, name)
    if name in _HOOK:
        from .integrations import hook

        return getattr(hook, name)
    raise AttributeError(f"module 'diffdiag' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
