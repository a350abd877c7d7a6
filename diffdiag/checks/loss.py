"""Loss checks (placeholder until the loss analyzers land): non-finite loss only."""

from __future__ import annotations

import numpy as np

from ..model import Finding, RunData, Settings
from ..registry import register


@register("loss", needs=lambda run: run.log is not None and run.log.loss is not None, order=10)
def check_loss(run: RunData, settings: Settings) -> list[Finding]:
    loss = run.log.loss
    bad = ~np.isfinite(loss.values)
    if not bad.any():
        return []
    steps = loss.steps[bad].tolist()
    return [Finding("loss_nonfinite", "critical", 1.0,
                    f"The loss '{loss.key}' is non-finite at {len(steps)} steps, first at step {steps[0]}.",
                    {"step": steps[0], "steps": steps, "key": loss.key}, {"count": len(steps)})]
