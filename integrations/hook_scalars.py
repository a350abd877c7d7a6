"""The hook's scalar record: what a logger keeps, with tensors read from the device in chunks.

:class:`ScalarRecorder` holds the run's loss, EMA loss, learning rate,
gradient norm and any other scalar per step, plus the per-step sample ids and
diffusion timesteps. Python floats are recorded at once; 0-d tensors are
buffered and read with ONE device sync per chunk (:func:`to_floats`), never
one per step. :meth:`ScalarRecorder.run_log` turns the record into the
:class:`~diffdiag.model.RunLog` the analysis reads, and :func:`write_log`
writes it as the JSONL log ``diffdiag analyze --logdir`` reads back
(docs/CONTRACT.md §2).
"""

from __future__ import annotations

import bisect
import json
import math
from pathlib import Path
from typing import Any

from diffdiag.model import RunLog, Series

__all__ = ["ScalarRecorder", "to_floats", "is_tensor", "write_log"]


def is_tensor(x: Any) -> bool:
    """True for torch tensors (anything with ``detach`` and ``ndim``), without importing torch."""
    return hasattr(x, "detach") and hasattr(x, "ndim")


def to_floats(values: list[Any]) -> list[float]:
    """Floats from a list of floats / 0-d tensors / None (None -> nan); one device sync for the tensors."""
    out: list[float] = [math.nan] * len(values)
    tens_idx = []
    for i, v in enumerate(values):
        if v is None:
            continue
        if is_tensor(v):
            tens_idx.append(i)
        else:
            out[i] = float(v)
    if tens_idx:
        try:
            import torch

            # one stack + one device->host copy for the whole chunk (0-d tensors of one device)
            vals = torch.stack([values[i] for i in tens_idx]).detach().double().cpu().reshape(-1).tolist()
            if len(vals) != len(tens_idx):
                raise ValueError("not 0-d")
        except Exception:  # noqa: BLE001 - mixed devices/shapes: one by one
            vals = [float(values[i].detach().float().reshape(-1)[0].cpu()) for i in tens_idx]
        for i, v in zip(tens_idx, vals):
            out[i] = float(v)
    return out


class ScalarRecorder:
    """Per-step scalars of a training run, recorded in O(1) per call.

    Parameters
    ----------
    sync_every : int
        Buffered tensor values are read once this many are pending.

    Attributes
    ----------
    steps, loss : list
        The steps and (float) losses recorded so far.
    ema_steps, ema : list
        The same for the smoothed loss.
    scalars : dict of str to (list of int, list)
        Other scalars (``lr``, ``grad_norm``, ...); values may still be tensors.
    pending : list of (step, loss, ema, grad_norm)
        Values not read from the device yet.
    sample_ids : dict of int to list of str
    timesteps : dict of int to list of float
    """

    def __init__(self, *, sync_every: int = 64) -> None:
        self.sync_every = max(1, int(sync_every))
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.ema_steps: list[int] = []
        self.ema: list[float] = []
        self.scalars: dict[str, tuple[list[int], list[Any]]] = {}
        self.pending: list[tuple[int, Any, Any, Any]] = []
        self.sample_ids: dict[int, list[str]] = {}
        self.timesteps: dict[int, list[float]] = {}

    # ------------------------------------------------------------------ recording
    def record(self, step: int, loss: float, ema: Any, grad_norm: float | None) -> None:
        """Record one step's float values (``ema`` may be a float or a 0-d tensor)."""
        self.steps.append(step)
        self.loss.append(loss)
        if ema is not None:
            self.ema_steps.append(step)
            self.ema.append(float(ema))
        if grad_norm is not None:
            self.scalar("grad_norm", step, grad_norm)

    def defer(self, step: int, loss: Any, ema: Any, grad_norm: Any) -> bool:
        """Buffer one step's (tensor) values; True when the buffer is full and should be drained."""
        self.pending.append((step, loss, ema, grad_norm))
        return len(self.pending) >= self.sync_every

    def drain(self) -> list[tuple[int, float, Any, float | None]]:
        """Read the buffered values (one sync per kind), record them; ``(step, loss, ema, grad_norm)`` each."""
        pend, self.pending = self.pending, []
        if not pend:
            return []
        losses = to_floats([p[1] for p in pend])
        emas = to_floats([p[2] for p in pend])
        grads = to_floats([p[3] for p in pend])
        out = []
        for (step, _, e, g), lo, em, gn in zip(pend, losses, emas, grads):
            row = (step, lo, None if e is None else em, None if g is None else gn)
            self.record(*row)
            out.append(row)
        return out

    def scalar(self, key: str, step: int, value: Any) -> None:
        """Record another scalar (may be a tensor: read at :meth:`run_log`)."""
        s = self.scalars.get(key)
        if s is None:
            s = self.scalars[key] = ([], [])
        s[0].append(step)
        s[1].append(value)

    def record_timesteps(self, step: int, timesteps: Any) -> None:
        """The diffusion timesteps of a step's batch (a sequence or a tensor)."""
        if is_tensor(timesteps):
            timesteps = timesteps.detach().float().cpu().reshape(-1).tolist()
        self.timesteps[step] = [float(t) for t in timesteps]

    # ------------------------------------------------------------------ reading
    def value_at(self, key: str, step: int) -> float | None:
        """The scalar ``key`` at ``step`` (the last one recorded at or before it), or None."""
        s = self.scalars.get(key)
        if not s or not s[0]:
            return None
        i = bisect.bisect_right(s[0], step) - 1
        if i < 0:
            return None
        try:
            v = float(s[1][i])
        except Exception:  # noqa: BLE001 - an odd value is no context
            return None
        return v if math.isfinite(v) else None

    def run_log(self) -> RunLog:
        """The record as the RunLog the analysis reads (key roles ``loss``/``ema_loss``/``lr``/``grad_norm``)."""
        import numpy as np

        log = RunLog(loss_key="loss", sources=["diffdiag.hook"])
        log.scalars["loss"] = Series("loss", np.array(self.steps), np.array(self.loss, dtype=float))
        if self.ema:
            log.scalars["ema_loss"] = Series("ema_loss", np.array(self.ema_steps), np.array(self.ema, dtype=float))
            log.ema_key = "ema_loss"
        for k, (st, vals) in self.scalars.items():
            log.scalars[k] = Series(k, np.array(st), np.array(to_floats(vals), dtype=float))
        if "lr" in log.scalars:
            log.lr_key = "lr"
        if "grad_norm" in log.scalars:
            log.grad_norm_key = "grad_norm"
        log.sample_ids = dict(self.sample_ids)
        log.timesteps = {k: np.asarray(v, dtype=float) for k, v in self.timesteps.items()}
        return log


def write_log(path: str | Path, log: RunLog) -> None:
    """Write ``log`` as JSONL (docs/CONTRACT.md §2), one object per step; non-finite values as strings."""
    rows: dict[int, dict[str, Any]] = {}
    for key, s in log.scalars.items():
        for st, v in zip(s.steps.tolist(), s.values.tolist()):
            rows.setdefault(st, {"step": st})[key] = v if math.isfinite(v) else str(v)
    for st, ids in log.sample_ids.items():
        rows.setdefault(st, {"step": st})["sample_ids"] = ids
    for st, ts in log.timesteps.items():
        rows.setdefault(st, {"step": st})["timesteps"] = [float(t) for t in ts]
    with open(path, "w", encoding="utf-8") as fh:
        for st in sorted(rows):
            fh.write(json.dumps(rows[st]) + "\n")
