"""Streaming (online) statistics for scalar training signals: O(1) memory and time per value.

The in-training hook (:mod:`diffdiag.integrations.hook`) feeds the loss (and
the gradient norm) through a :class:`RobustStream` as the run goes and raises
findings the moment a value stands out. The statistics are *robust running*
estimates in log space (losses are positive and multiplicative: a spike is
"10x the usual", not "+0.3"):

* location ``m``: an exponentially weighted Huber M-estimate — each value pulls
  ``m`` by at most ``clip`` robust standard deviations, so a spike barely moves it;
* scale ``s``: an exponentially weighted mean absolute deviation (clipped the
  same way), converted to a standard deviation (x 1.2533 for a normal);
* a fast location ``m_fast`` (short half-life) to see level shifts
  (divergence) that the slow location deliberately ignores; a divergence is
  the fast level staying ``divergence_ratio`` times above the *lowest* slow
  level of the run so far (a loss that climbs gradually, e.g. while a too-high
  learning rate warms up, is caught although the slow location follows it).

The first ``warmup`` values are kept (a fixed, small list) and initialise
``m``/``s`` with their median and MAD; nothing is flagged before that.

Everything here is plain Python (no numpy in the per-value path: a numpy call
costs more than the whole update).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

__all__ = ["StreamEvent", "RobustStream"]

_MAD_TO_SIGMA = 1.4826   # MAD of a normal -> sigma
_MEANABS_TO_SIGMA = 1.2533  # mean |x - mu| of a normal -> sigma


@dataclass
class StreamEvent:
    """Something a :class:`RobustStream` noticed.

    Attributes
    ----------
    kind : {"spike", "divergence", "nonfinite"}
    step : int
        The step of the value that triggered it (divergence: where the new
        level started).
    value : float
        The value at ``step`` (in the signal's own units).
    z : float
        Robust z-score of the value (log space) against the running baseline;
        for a divergence, the level shift in robust standard deviations.
    baseline : float
        The running typical value before the event (signal units).
    sigma : float
        The robust standard deviation (log units) at the time.
    level_before, level_after : float or None
        Divergence only: typical value before and after the shift.
    extra : dict
        Anything else (e.g. the number of values seen).
    """

    kind: str
    step: int
    value: float
    z: float
    baseline: float
    sigma: float
    level_before: float | None = None
    level_after: float | None = None
    extra: dict = field(default_factory=dict)


class RobustStream:
    """Online spike / divergence / non-finite detector for one positive scalar signal.

    Parameters
    ----------
    sigma : float
        A value more than ``sigma`` robust standard deviations above the running
        baseline (log space) is a spike. Default 3 (the CLI's ``--spike-sigma``).
    warmup : int
        Values used to initialise the statistics; nothing is flagged before.
    halflife : float
        Half-life (in values) of the slow baseline and scale.
    fast_halflife : float
        Half-life of the fast level used to detect divergence.
    divergence_ratio : float
        The fast level must exceed the baseline by this factor ...
    divergence_count : int
        ... for this many consecutive values to call a divergence.
    clip : float
        Huber clipping of each update, in robust standard deviations.
    cooldown : int
        Values after a spike during which further exceedances belong to the same
        event (one event per spike, not one per value).
    adaptive : bool
        When True (default) the spike threshold is ``max(sigma, sqrt(2 ln n)) +
        margin`` after ``n`` values: the expected maximum of ``n`` normal values.
        Per-step diffusion losses are heavy-tailed over timesteps (p99/median
        about 10, a log-space sigma near 1), so a fixed 3-sigma line fires a few
        times in any long healthy run; the adaptive line keeps a healthy run of
        any length quiet while a corrupted batch (tens of times the usual loss)
        still stands out. False: the plain ``sigma`` line.
    margin : float
        Added to the adaptive threshold.

    Notes
    -----
    Memory is O(``warmup``) and each :meth:`update` is O(1).
    """

    def __init__(self, sigma: float = 3.0, warmup: int = 20, halflife: float = 100.0,
                 fast_halflife: float = 8.0, divergence_ratio: float = 3.0,
                 divergence_count: int = 12, clip: float = 2.5, cooldown: int = 5,
                 adaptive: bool = True, margin: float = 0.5) -> None:
        if sigma <= 0 or warmup < 3:
            raise ValueError("sigma must be > 0 and warmup >= 3")
        self.sigma = float(sigma)
        self.warmup = int(warmup)
        self.alpha = 1.0 - 0.5 ** (1.0 / float(halflife))
        self.alpha_fast = 1.0 - 0.5 ** (1.0 / float(fast_halflife))
        self.log_div = math.log(float(divergence_ratio))
        self.divergence_count = int(divergence_count)
        self.clip = float(clip)
        self.cooldown = int(cooldown)
        self.adaptive = bool(adaptive)
        self.margin = float(margin)
        self.n = 0                 # finite values seen
        self.n_nonfinite = 0
        self.first_nonfinite: int | None = None
        self.m = 0.0               # slow robust location (log space)
        self.s = 0.0               # robust sigma (log space)
        self.m_fast = 0.0
        self.m_low = 0.0           # lowest slow location so far (log space)
        self._init: list[float] = []
        self._over = 0             # consecutive values with m_fast above the divergence line
        self._over_start: int | None = None
        self._since_spike = 10 ** 9
        self.n_spikes = 0
        self.n_divergences = 0

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _log(value: float) -> float:
        return math.log(value) if value > 1e-30 else math.log(1e-30)

    @property
    def ready(self) -> bool:
        """True once the warm-up is over and values can be flagged."""
        return self.n >= self.warmup

    @property
    def baseline(self) -> float:
        """The running typical value (signal units); NaN before the warm-up ends."""
        return math.exp(self.m) if self.ready else float("nan")

    def threshold(self) -> float:
        """The current spike line in robust standard deviations."""
        if not self.adaptive:
            return self.sigma
        return max(self.sigma, math.sqrt(2.0 * math.log(max(self.n, 2)))) + self.margin

    def _start(self) -> None:
        xs = sorted(self._init)
        k = len(xs)
        med = xs[k // 2] if k % 2 else 0.5 * (xs[k // 2 - 1] + xs[k // 2])
        dev = sorted(abs(x - med) for x in xs)
        mad = dev[k // 2] if k % 2 else 0.5 * (dev[k // 2 - 1] + dev[k // 2])
        self.m = self.m_fast = self.m_low = med
        self.s = max(_MAD_TO_SIGMA * mad, 1e-3)
        self._init = []

    # ------------------------------------------------------------------ update
    def update(self, step: int, value: float) -> list[StreamEvent]:
        """Feed one value; return the events it triggers (usually none).

        Parameters
        ----------
        step : int
            Training step of the value.
        value : float
            The signal (e.g. the loss). Non-finite values are events, never errors.
        """
        if not math.isfinite(value):
            self.n_nonfinite += 1
            if self.first_nonfinite is None:
                self.first_nonfinite = step
                return [StreamEvent("nonfinite", step, value, float("inf"),
                                    self.baseline, self.s, extra={"n": self.n})]
            return []
        y = self._log(value)
        self.n += 1
        if self.n <= self.warmup:
            self._init.append(y)
            if self.n == self.warmup:
                self._start()
            return []
        events: list[StreamEvent] = []
        s = self.s
        dev = y - self.m
        z = dev / s
        self._since_spike += 1
        if z > self.sigma and z > self.threshold():
            if self._since_spike > self.cooldown:
                self.n_spikes += 1
                events.append(StreamEvent("spike", step, value, z, math.exp(self.m), s,
                                          extra={"n": self.n, "threshold": self.threshold()}))
            self._since_spike = 0
        # Huber-clipped updates: one value moves the statistics by a bounded amount.
        c = self.clip
        zc = -c if z < -c else (c if z > c else z)
        self.m += self.alpha * zc * s
        a = abs(zc)
        self.s = max((1.0 - self.alpha) * s + self.alpha * _MEANABS_TO_SIGMA * a * s, 1e-3)
        self.m_fast += self.alpha_fast * (y - self.m_fast)
        if self.m < self.m_low:
            self.m_low = self.m
        # Divergence: the fast level sits well above the run's lowest baseline for a while.
        if self.m_fast - self.m_low > self.log_div:
            if self._over == 0:
                self._over_start = step
            self._over += 1
            if self._over >= self.divergence_count:
                before = math.exp(self.m_low)
                after = math.exp(self.m_fast)
                self.n_divergences += 1
                events.append(StreamEvent(
                    "divergence", int(self._over_start if self._over_start is not None else step),
                    value, (self.m_fast - self.m_low) / s, before, s,
                    level_before=before, level_after=after, extra={"n": self.n}))
                # Re-baseline on the new level: later spikes are judged against it.
                self.m = self.m_low = self.m_fast
                self._over = 0
                self._over_start = None
        else:
            self._over = 0
            self._over_start = None
        return events

    def update_many(self, steps: Iterable[int], values: Iterable[float]) -> list[StreamEvent]:
        """Feed several values in order; return all events."""
        out: list[StreamEvent] = []
        for st, v in zip(steps, values):
            ev = self.update(int(st), float(v))
            if ev:
                out.extend(ev)
        return out

    def state(self) -> dict:
        """The current statistics (for reports and debugging)."""
        return {"n": self.n, "n_nonfinite": self.n_nonfinite, "baseline": self.baseline,
                "sigma_log": self.s if self.ready else float("nan"),
                "fast_level": math.exp(self.m_fast) if self.ready else float("nan"),
                "spikes": self.n_spikes, "divergences": self.n_divergences,
                "first_nonfinite": self.first_nonfinite}
