"""The W&B side of the in-training hook: stream live findings into the active ``wandb.run``.

The training hook (:mod:`diffdiag.integrations.hook`) calls, for every callback it holds,
``on_finding(finding, step)`` as findings happen and ``on_finish(diagnosis, report_dir)``
at the end; with ``trackers="auto"`` it asks :func:`make_callback` for one.

What lands in the run, all under ``diffdiag/`` and none of it as a history step of its own
(only summary updates — the training's step counter is never advanced):

* ``diffdiag/live/n_findings``, ``diffdiag/live/worst_severity``,
  ``diffdiag/live/<finding id>/count``, ``.../last_step``, ``.../last_message``;
* ``diffdiag/live_findings`` — a ``wandb.Table`` of the findings so far (rewritten at most
  every ``table_interval_s`` seconds, and at the end);
* at the end, ``diffdiag/findings`` and ``diffdiag/causes`` tables and the verdict keys;
* ``run.alert`` for critical findings, at most one per finding id per ``alert_interval_s``
  and ``max_alerts`` in all.

Every method swallows its own errors: a tracker problem never breaks training.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from diffdiag.model import SEVERITY_RANK, Diagnosis, Finding

LIVE_COLUMNS = ["step", "id", "severity", "score", "message"]


class WandbCallback:
    """Streams diffdiag findings into a W&B run.

    Parameters
    ----------
    run : wandb Run, optional
        The run to write into (default: the active ``wandb.run`` at each call).
    alert_interval_s : float
        Minimum seconds between two alerts for the same finding id.
    max_alerts : int
        Alerts sent at most over the run.
    table_interval_s : float
        Minimum seconds between two rewrites of ``diffdiag/live_findings``.
    max_rows : int
        Rows kept in the live table (the newest).
    clock : callable
        Seconds (for tests); default ``time.monotonic``.
    """

    def __init__(self, run: Any = None, *, alert_interval_s: float = 600.0, max_alerts: int = 10,
                 table_interval_s: float = 30.0, max_rows: int = 500, clock: Any = None) -> None:
        self._run = run
        self.alert_interval_s = float(alert_interval_s)
        self.max_alerts = int(max_alerts)
        self.table_interval_s = float(table_interval_s)
        self.max_rows = int(max_rows)
        self._clock = clock or time.monotonic
        self.rows: list[list[Any]] = []
        self.counts: dict[str, int] = {}
        self.worst: str | None = None
        self.alerts_sent = 0
        self._last_alert: dict[str, float] = {}
        self._last_table: float | None = None
        self._table_dirty = False
        self._warned = False

    # ------------------------------------------------------------------ helpers
    @property
    def run(self) -> Any:
        if self._run is not None:
            return self._run
        import wandb

        return wandb.run

    def _safe(self, what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - never break training
            if not self._warned:
                self._warned = True
                warnings.warn(f"diffdiag: writing {what} to W&B failed ({type(exc).__name__}: {exc}); "
                              f"training continues", RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ callback interface
    def on_finding(self, finding: Finding, step: int | None = None) -> None:
        """Record one live finding (summary keys, live table, alert when critical)."""
        run = self.run
        if run is None:
            return
        step = int(step) if step is not None else finding.location.get("step")
        self.counts[finding.id] = self.counts.get(finding.id, 0) + 1
        if self.worst is None or SEVERITY_RANK[finding.severity] > SEVERITY_RANK[self.worst]:
            self.worst = finding.severity
        self.rows.append([step, finding.id, finding.severity, round(float(finding.score), 4), finding.message])
        if len(self.rows) > self.max_rows:
            del self.rows[: len(self.rows) - self.max_rows]
        self._table_dirty = True

        def _summary() -> None:
            base = f"diffdiag/live/{finding.id}"
            run.summary.update({
                f"{base}/count": self.counts[finding.id],
                f"{base}/last_step": step,
                f"{base}/last_message": finding.message,
                "diffdiag/live/n_findings": sum(self.counts.values()),
                "diffdiag/live/worst_severity": self.worst,
            })

        self._safe("summary", _summary)
        now = self._clock()
        if self._last_table is None or now - self._last_table >= self.table_interval_s:
            self._safe("the live findings table", self.flush_table)
        if finding.severity == "critical":
            self._safe("an alert", lambda: self._alert(run, finding, step, now))

    def flush_table(self) -> None:
        """Rewrite ``diffdiag/live_findings`` in the summary (no history step)."""
        run = self.run
        if run is None or not self._table_dirty:
            return
        import wandb

        run.summary["diffdiag/live_findings"] = wandb.Table(columns=LIVE_COLUMNS, data=[list(r) for r in self.rows])
        self._last_table = self._clock()
        self._table_dirty = False

    def _alert(self, run: Any, finding: Finding, step: int | None, now: float) -> None:
        if self.alerts_sent >= self.max_alerts:
            return
        last = self._last_alert.get(finding.id)
        if last is not None and now - last < self.alert_interval_s:
            return
        import wandb

        self._last_alert[finding.id] = now
        self.alerts_sent += 1
        where = f" at step {step}" if step is not None else ""
        run.alert(title=f"diffdiag: {finding.id}{where}", text=finding.message,
                  level=wandb.AlertLevel.ERROR)

    def on_finish(self, diagnosis: Diagnosis, report_dir: Path | None = None) -> None:
        """Write the final findings/causes tables and verdict keys into the run's summary."""
        run = self.run
        if run is None:
            return

        def _final() -> None:
            import wandb

            from .wandb_sink import causes_table_rows, findings_table_rows, summary_keys

            self.flush_table()
            cols, rows = findings_table_rows(diagnosis)
            run.summary["diffdiag/findings"] = wandb.Table(columns=cols, data=rows)
            cols, rows = causes_table_rows(diagnosis)
            run.summary["diffdiag/causes"] = wandb.Table(columns=cols, data=rows)
            keys = summary_keys(diagnosis)
            if report_dir is not None:
                keys["diffdiag/report"] = str(Path(report_dir) / "report.html")
            run.summary.update(keys)

        self._safe("the final diagnosis", _final)


def make_callback(run: Any = None, **kwargs: Any) -> WandbCallback | None:
    """A :class:`WandbCallback` for ``run`` or the active ``wandb.run``; None when there is none.

    Costs nothing when the training never imported wandb (then no run can be active).
    """
    if run is None:
        import sys

        wandb = sys.modules.get("wandb")
        if wandb is None or getattr(wandb, "run", None) is None:
            return None
    return WandbCallback(run, **kwargs)
