"""Sinks: write a diagnosis back into the tracker run it came from (docs/CONTRACT.md §4).

Sources record where a run came from in ``run.tracker``
(``{"kind": "wandb"|"mlflow", ...}``); the sink for that kind is imported
lazily from :mod:`diffdiag.integrations`.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from .errors import InputError, NotAvailableError
from .model import Diagnosis, RunData

_SINKS = {
    "wandb": ("diffdiag.integrations.wandb_sink", "push_wandb"),
    "mlflow": ("diffdiag.integrations.mlflow_sink", "push_mlflow"),
}


def push_results(args: Any, run: RunData, diagnosis: Diagnosis, report_dir: Path) -> dict[str, Any]:
    """Push into the source tracker (``--push``) and/or build a W&B Report (``--wandb-report``).

    Returns
    -------
    dict
        Entries for ``diagnosis.outputs`` (e.g. the companion run's path).
    """
    tracker = (run.tracker or {})
    kind = tracker.get("kind")
    outputs: dict[str, Any] = {}
    if args.wandb_report and kind not in (None, "wandb"):
        raise InputError("--wandb-report needs a W&B run (--wandb-run)")
    if kind is None:
        raise InputError("--push/--wandb-report need a tracker run (--wandb-run or --mlflow-run)")
    module, func = _SINKS[kind]
    try:
        mod = import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("diffdiag"):
            raise NotAvailableError(f"writing back to {kind} is not available yet") from None
        raise NotAvailableError(f"writing back to {kind} needs '{exc.name}': pip install 'diffdiag[{kind}]'") from None
    outputs.update(getattr(mod, func)(args, run, diagnosis, report_dir) or {})
    return outputs
