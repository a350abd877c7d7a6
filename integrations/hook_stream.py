"""The hook's stream monitor: live loss and gradient-norm checks, O(1) time and memory per value.

:class:`StreamMonitor` feeds each loss (and gradient norm) through a
:class:`~diffdiag.analyzers.streaming.RobustStream` and turns what it notices
into findings with the SAME builders the offline loss check uses
(:mod:`diffdiag.findings.loss`): ``loss_spike``, ``loss_divergence``,
``loss_nonfinite``, ``grad_norm_spike``. A divergence is located and measured
exactly as the report measures it (:func:`~diffdiag.analyzers.streaming.jump_levels`),
so the live line and ``diagnosis.json`` agree on its step and severity.

It knows nothing about tensors, models or trackers: it takes floats and
returns findings (usually none), so it is testable alone::

    mon = StreamMonitor(sigma=3.0)
    for step, loss in enumerate(losses):
        for f in mon.update(step, loss):
            print(f.severity, f.message)
    leftovers = mon.finish()      # events still held when the stream ends
"""

from __future__ import annotations

import math
from typing import Any, Callable

from diffdiag.analyzers.streaming import RobustStream, StreamEvent
from diffdiag.findings import loss as build
from diffdiag.model import Finding

__all__ = ["StreamMonitor"]

_NONE: tuple = ()


class StreamMonitor:
    """Live checks of the loss and the gradient norm.

    Parameters
    ----------
    sigma : float
        Spike threshold in robust standard deviations (``--spike-sigma``).
    loss_key, grad_key : str
        The names the findings give the two signals (the keys of the hook's log).
    context : callable, optional
        ``context(step) -> dict``: evidence about a step (``lr``, ``sample_ids``),
        asked only when a finding is built.

    Attributes
    ----------
    loss, grad : RobustStream
        The running detectors.
    """

    def __init__(self, *, sigma: float = 3.0, loss_key: str = "loss", grad_key: str = "grad_norm",
                 context: Callable[[int], dict[str, Any]] | None = None) -> None:
        self.sigma = float(sigma)
        self.loss_key = loss_key
        self.grad_key = grad_key
        self.loss = RobustStream(sigma=sigma)
        self.grad = RobustStream(sigma=sigma)
        self._context = context

    def update(self, step: int, loss: float, grad_norm: float | None = None) -> list[Finding] | tuple:
        """Check one step's values; the findings they complete (usually an empty tuple).

        Spikes are reported a few values late and a divergence once enough values
        past its change point are seen (see :class:`RobustStream`); each finding
        carries the step of its event.
        """
        evs = self.loss.update(step, loss)
        out = [self._finding(ev, False) for ev in evs] if evs else _NONE
        if grad_norm is not None:
            gevs = self.grad.update(step, grad_norm)
            if gevs:
                out = list(out) + [self._finding(ev, True) for ev in gevs if ev.kind == "spike"]
        return out

    def finish(self) -> list[Finding]:
        """The findings still held when the run ends."""
        return ([self._finding(ev, False) for ev in self.loss.finish()] +
                [self._finding(ev, True) for ev in self.grad.finish() if ev.kind == "spike"])

    def _finding(self, ev: StreamEvent, grad: bool) -> Finding:
        ctx = self._context(ev.step) if self._context is not None else {}
        live = {"live": True}
        if ev.kind == "spike":
            fn = build.grad_norm_spike if grad else build.loss_spike
            return fn(self.grad_key if grad else self.loss_key, ev.step, value=ev.value, baseline=ev.baseline,
                      z=ev.z, sigma=self.sigma, sigma_log=ev.sigma,
                      threshold=float(ev.extra.get("threshold", self.sigma)), **live, **ctx)
        if ev.kind == "divergence":
            extra = {"lr_at_step": ctx["lr"]} if "lr" in ctx else {}
            return build.loss_divergence(self.loss_key, ev.step, level_before=ev.level_before,
                                         level_after=ev.level_after, jump_ratio=ev.level_after / ev.level_before,
                                         **live, **extra)
        # non-finite
        return build.loss_nonfinite(self.loss_key, [ev.step], n_nan=int(math.isnan(ev.value)),
                                    n_inf=int(not math.isnan(ev.value)), value=ev.value, **live, **ctx)

    def state(self) -> dict[str, Any]:
        """The detectors' statistics (for debugging and the hook's summary)."""
        return {"loss": self.loss.state(), "grad_norm": self.grad.state()}
