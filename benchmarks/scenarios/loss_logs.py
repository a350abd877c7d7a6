"""Labelled training-log generators: realistic heavy-tailed diffusion loss with known faults.

Every generator returns a :class:`LossScenario` whose ``truth`` says what a
correct diagnosis finds. The loss model follows how diffusion training
behaves: every batch draws random timesteps ``t`` and the per-sample loss is
``level(step) * f(t) * difficulty(sample) * noise`` where ``f`` spans about
10-30x across timesteps (high at small ``t`` for epsilon prediction), so the
per-step loss is heavy-tailed (p99/median about 10 at batch size 1) around a
slowly decaying level.

Ground truth (``LossScenario.truth``), all optional:

- ``loss_spike``: list of spike steps (tolerance ``truth["spike_tol"]``, 2 steps)
- ``loss_plateau``: list of ``(start_step, end_step)``
- ``loss_divergence``: list of steps where the level jumps up and stays
- ``ema_divergence``: list of ``(start_step, end_step)`` where the logged EMA leaves the raw loss
- ``loss_nonfinite``: list of steps with NaN/inf loss
- ``loss_sample_correlation``: list of corrupted sample ids
- ``grad_norm_spike``: list of steps
- ``cause``: the loss-spikes cause id that should rank first (or None)

Writers: :func:`write_csv`, :func:`write_jsonl`, :func:`write_tensorboard`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: key names of common trainers (docs/CONTRACT.md §2)
KEYSETS: dict[str, dict[str, str]] = {
    "kohya": {"loss": "loss/current", "ema": "loss/average", "lr": "lr/unet", "grad_norm": "grad_norm"},
    "diffusers": {"loss": "train_loss", "ema": "ema_loss", "lr": "lr", "grad_norm": "grad_norm"},
    "simpletuner": {"loss": "train_loss", "ema": "loss_ema", "lr": "learning_rate", "grad_norm": "grad_norm"},
    "onetrainer": {"loss": "loss/train_step", "ema": "smooth_loss/train_step", "lr": "lr/unet",
                   "grad_norm": "norm/avg_grad_norm"},
    "plain": {"loss": "loss", "ema": "ema_loss", "lr": "lr", "grad_norm": "grad_norm"},
}


@dataclass
class LossScenario:
    """A labelled training log.

    Attributes
    ----------
    name : str
    steps : ndarray of int64, shape (n,)
    loss, ema, lr, grad_norm : ndarray of float64, shape (n,) (``ema``/``grad_norm`` may be None)
    sample_ids : list of list of str, or None
        The batch's sample ids per step.
    timesteps : ndarray of int64, shape (n, batch), or None
    truth : dict
        What a correct diagnosis finds (see the module docstring).
    keys : dict
        Role -> log key used by the writers (one of :data:`KEYSETS`).
    """

    name: str
    steps: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    ema: np.ndarray | None = None
    grad_norm: np.ndarray | None = None
    sample_ids: list[list[str]] | None = None
    timesteps: np.ndarray | None = None
    truth: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=lambda: dict(KEYSETS["plain"]))

    def columns(self) -> dict[str, np.ndarray]:
        """Role-mapped scalar columns under their log keys."""
        out = {self.keys["loss"]: self.loss, self.keys["lr"]: self.lr}
        if self.ema is not None:
            out[self.keys["ema"]] = self.ema
        if self.grad_norm is not None:
            out[self.keys["grad_norm"]] = self.grad_norm
        return out


# --------------------------------------------------------------------------- the loss model

def _level_curve(n: int, rng: np.random.Generator, shape: str, start: float) -> np.ndarray:
    s = np.arange(n, dtype=np.float64)
    if shape == "exp":  # fast early drop then a floor
        drop = rng.uniform(0.35, 0.6)
        tau = n * rng.uniform(0.05, 0.2)
        return start * (1 - drop + drop * np.exp(-s / tau))
    if shape == "power":  # slow steady decay
        a = rng.uniform(0.15, 0.3)
        return start * (1 + s / (n * 0.01)) ** -a
    if shape == "lora":  # fine-tune: a modest drop, then nearly flat
        drop = rng.uniform(0.12, 0.25)
        return start * (1 - drop + drop * np.exp(-s / (n * 0.03)))
    raise ValueError(shape)


def _ema(x: np.ndarray, decay: float, init: float | None = None) -> np.ndarray:
    from scipy.signal import lfilter

    x0 = x[0] if init is None else init
    y, _ = lfilter([1 - decay], [1, -decay], x, zi=[decay * x0])
    return y


def _base(n_steps: int, seed: int, *, batch_size: int = 1, shape: str = "exp", dataset_size: int = 400,
          keyset: str = "plain", t_span: float | None = None, ema_decay: float | None = 0.99,
          with_ids: bool = True, with_timesteps: bool = True, start: float | None = None,
          noise_sigma: float = 0.15) -> dict[str, Any]:
    """Draw a healthy run's per-sample pieces (before faults are injected)."""
    rng = np.random.default_rng(seed)
    T = 1000
    span = np.log(t_span if t_span is not None else rng.uniform(12, 30))
    gamma = rng.uniform(2.0, 4.0)
    t = rng.integers(0, T, size=(n_steps, batch_size))
    f = np.exp(span * (1 - t / (T - 1)) ** gamma)  # 1 .. e^span, high at small t
    f /= np.median(f)
    # epoch-shuffled batches of a fixed dataset, each sample with its own difficulty
    need = n_steps * batch_size
    order = np.concatenate([rng.permutation(dataset_size) for _ in range(need // dataset_size + 1)])[:need]
    sid = order.reshape(n_steps, batch_size)
    difficulty = np.exp(rng.normal(0, 0.25, dataset_size))
    noise = np.exp(rng.normal(0, noise_sigma, size=(n_steps, batch_size)))
    level = _level_curve(n_steps, rng, shape, start if start is not None else rng.uniform(0.05, 0.15))
    return dict(rng=rng, t=t, f=f, sid=sid, difficulty=difficulty, noise=noise, level=level,
                batch_size=batch_size, dataset_size=dataset_size, keyset=keyset, ema_decay=ema_decay,
                with_ids=with_ids, with_timesteps=with_timesteps, n=n_steps)


def _finish(name: str, b: dict[str, Any], per_sample: np.ndarray, *, level_mult: np.ndarray | None = None,
            lr: np.ndarray | None = None, grad_extra: np.ndarray | None = None,
            truth: dict[str, Any] | None = None, ema: np.ndarray | None = None) -> LossScenario:
    n = b["n"]
    rng = b["rng"]
    mult = np.ones(n) if level_mult is None else level_mult
    loss = b["level"] * mult * per_sample.mean(axis=1)
    if lr is None:
        warm = max(1, n // 50)
        lr = 1e-4 * np.minimum(1.0, (np.arange(n) + 1) / warm)
    resid = per_sample.mean(axis=1) / np.median(per_sample.mean(axis=1))
    grad = 0.6 * np.exp(rng.normal(0, 0.12, n)) * resid ** 0.3 * (b["level"] / b["level"][0]) ** 0.5
    if grad_extra is not None:
        grad = grad * grad_extra
    if ema is None and b["ema_decay"] is not None:
        ema = _ema(np.where(np.isfinite(loss), loss, np.nanmedian(loss)), b["ema_decay"])
    ids = None
    if b["with_ids"]:
        ids = [[f"img_{j:05d}.png" for j in row] for row in b["sid"].tolist()]
    tr = {"loss_spike": [], "loss_plateau": [], "loss_divergence": [], "ema_divergence": [],
          "loss_nonfinite": [], "loss_sample_correlation": [], "grad_norm_spike": [], "cause": None,
          "spike_tol": 2}
    tr.update(truth or {})
    return LossScenario(name=name, steps=np.arange(n, dtype=np.int64), loss=loss, lr=np.asarray(lr, float),
                        ema=ema, grad_norm=grad, sample_ids=ids,
                        timesteps=b["t"].astype(np.int64) if b["with_timesteps"] else None,
                        truth=tr, keys=dict(KEYSETS[b["keyset"]]))


def _per_sample(b: dict[str, Any]) -> np.ndarray:
    return b["f"] * b["difficulty"][b["sid"]] * b["noise"]


# --------------------------------------------------------------------------- scenarios

def healthy(n_steps: int = 20000, seed: int = 0, *, batch_size: int = 1, shape: str = "exp",
            keyset: str = "plain", **kw: Any) -> LossScenario:
    """A healthy heavy-tailed run: nothing should be reported at warning or above."""
    b = _base(n_steps, seed, batch_size=batch_size, shape=shape, keyset=keyset, **kw)
    return _finish(f"healthy-{shape}-b{batch_size}-s{seed}", b, _per_sample(b))


def _spike_steps(rng: np.random.Generator, n: int, k: int, lo: float = 0.05, hi: float = 0.95,
                 min_gap: int = 50) -> list[int]:
    out: list[int] = []
    while len(out) < k:
        s = int(rng.integers(int(n * lo), int(n * hi)))
        if all(abs(s - o) >= min_gap for o in out):
            out.append(s)
    return sorted(out)


def injected_spikes(n_steps: int = 20000, seed: int = 0, *, n_spikes: int = 5, magnitude: tuple[float, float] = (40, 100),
                    batch_size: int = 1, shape: str = "exp", keyset: str = "plain", **kw: Any) -> LossScenario:
    """Isolated loss spikes (``magnitude`` x the step's own loss and x the median loss), level unchanged after.

    Each spike lasts one step (one in three lasts two); the gradient norm spikes with it.
    """
    b = _base(n_steps, seed, batch_size=batch_size, shape=shape, keyset=keyset, **kw)
    rng = b["rng"]
    ps = _per_sample(b)
    steps = _spike_steps(rng, n_steps, n_spikes)
    mult = np.ones(n_steps)
    gx = np.ones(n_steps)
    med = np.median(ps.mean(axis=1))
    for i, s in enumerate(steps):
        m = rng.uniform(*magnitude)
        # m x this step's own loss, and at least m x the median loss at this level
        mult[s] = m * max(1.0, med / ps[s].mean())
        gx[s] = m ** 0.7
        if i % 3 == 2 and s + 1 < n_steps:
            mult[s + 1] = 0.6 * m * max(1.0, med / ps[s + 1].mean())
            gx[s + 1] = (0.6 * m) ** 0.7
    return _finish(f"spikes-{shape}-b{batch_size}-s{seed}", b, ps, level_mult=mult, grad_extra=gx,
                   truth={"loss_spike": steps, "grad_norm_spike": steps, "cause": "loss_spikes.corrupted_batch"})


def corrupted_samples(n_steps: int = 20000, seed: int = 0, *, n_bad: int = 3, factor: tuple[float, float] = (40, 100),
                      batch_size: int = 4, dataset_size: int = 1000, shape: str = "exp", keyset: str = "plain",
                      **kw: Any) -> LossScenario:
    """A few corrupted training samples whose every appearance spikes the batch loss.

    ``sample_ids`` are logged; each bad sample appears in ``n_steps * batch_size / dataset_size`` steps.
    """
    b = _base(n_steps, seed, batch_size=batch_size, shape=shape, keyset=keyset, dataset_size=dataset_size, **kw)
    rng = b["rng"]
    bad = rng.choice(dataset_size, size=n_bad, replace=False)
    ps = _per_sample(b)
    med = np.median(ps)
    hit = np.isin(b["sid"], bad)
    ps = np.where(hit, med * rng.uniform(*factor, size=ps.shape) * batch_size, ps)
    steps = np.flatnonzero(hit.any(axis=1)).tolist()
    gx = np.where(hit.any(axis=1), 4.0, 1.0)
    ids = sorted(f"img_{j:05d}.png" for j in bad)
    return _finish(f"corrupted-b{batch_size}-s{seed}", b, ps, grad_extra=gx,
                   truth={"loss_spike": steps, "grad_norm_spike": steps, "loss_sample_correlation": ids,
                          "cause": "loss_spikes.corrupted_batch"})


def lr_too_high(n_steps: int = 20000, seed: int = 0, *, jump: float = 2.5, batch_size: int = 1,
                shape: str = "exp", keyset: str = "plain", **kw: Any) -> LossScenario:
    """LR warmup to a too-high value: past a critical LR the loss jumps to a higher level and stays,
    spikes become frequent and the gradient norm grows.

    Truth: ``loss_divergence`` at the step where the LR crosses the critical value (tolerance
    ``truth["divergence_tol"]``); ``loss_spike`` lists the injected (large) spikes after it.
    """
    b = _base(n_steps, seed, batch_size=batch_size, shape=shape, keyset=keyset, **kw)
    rng = b["rng"]
    s = np.arange(n_steps)
    warm = int(n_steps * rng.uniform(0.3, 0.5))
    lr_max = 1e-3
    lr = lr_max * np.minimum(1.0, (s + 1) / warm)
    crit = int(warm * rng.uniform(0.55, 0.75))
    # the level rises quickly (within ~1% of the run) to `jump` x and keeps rising slowly with the LR
    ramp = np.clip((s - crit) / max(1, n_steps // 100), 0, 1)
    mult = np.exp(np.log(jump) * ramp) * (1 + 0.5 * np.clip((lr - lr[crit]) / lr_max, 0, None))
    gx = mult ** 1.5
    ps = _per_sample(b)
    spikes = []
    after = np.arange(crit + n_steps // 50, n_steps - 2)
    rate = 1.0 / 400
    cand = after[rng.random(after.size) < rate * (lr[after] / lr_max)]
    for c in cand:
        if not spikes or c - spikes[-1] >= 50:
            spikes.append(int(c))
    ps_med = np.median(ps.mean(axis=1))
    for c in spikes:
        m = rng.uniform(40, 90)
        mult[c] *= m * ps_med / ps[c].mean()
        gx[c] *= m ** 0.7
    return _finish(f"lr-too-high-s{seed}", b, ps, level_mult=mult, lr=lr, grad_extra=gx,
                   truth={"loss_divergence": [crit], "divergence_tol": max(100, n_steps // 50),
                          "loss_spike": spikes, "cause": "loss_spikes.learning_rate_too_high",
                          "lr_critical_step": crit})


def stale_ema(n_steps: int = 20000, seed: int = 0, *, restore_at: float | None = None, stale_from: float = 0.01,
              ema_decay: float = 0.995, batch_size: int = 1, shape: str = "exp", keyset: str = "kohya",
              **kw: Any) -> LossScenario:
    """Training resumed at ``restore_at`` with the EMA/smoothed loss restored from a stale state
    (its value at ``stale_from`` of the run, or the early value farthest from the current one
    when that differs by less than 1.25x): the logged EMA jumps away from the raw loss and
    decays back over ~``1/(1-ema_decay)`` steps; the raw loss is healthy throughout.

    Truth: ``ema_divergence`` ``[(restore, end)]`` where ``end`` is where the true gap falls below 10%
    (start tolerance ``truth["ema_tol"]``, end tolerance a quarter of the span).
    """
    b = _base(n_steps, seed, batch_size=batch_size, shape=shape, keyset=keyset, ema_decay=ema_decay, **kw)
    rng = b["rng"]
    ps = _per_sample(b)
    loss = b["level"] * ps.mean(axis=1)
    good = _ema(loss, ema_decay)
    r = int(n_steps * (restore_at if restore_at is not None else rng.uniform(0.4, 0.7)))
    stale_value = good[max(1, int(n_steps * stale_from))]
    if abs(np.log(stale_value / good[r])) < np.log(1.25):  # no visible gap: the most different early value
        early = good[1:max(2, n_steps // 20)]
        stale_value = early[int(np.argmax(np.abs(np.log(early / good[r]))))]
    ema = good.copy()
    tail = _ema(loss[r:], ema_decay, init=stale_value)
    ema[r:] = tail
    gap = np.abs(np.log(ema[r:] / good[r:]))
    below = np.flatnonzero(gap < np.log(1.1))
    end = r + int(below[0]) if below.size else n_steps - 1
    return _finish(f"stale-ema-s{seed}", b, ps, ema=ema,
                   truth={"ema_divergence": [(r, end)], "ema_tol": 5, "cause": "loss_spikes.ema_gap",
                          "stale_ratio": float(stale_value / good[r])})


def shelf(n_steps: int = 20000, seed: int = 0, *, start: float | None = None, length: float | None = None,
          drop: float | None = None, batch_size: int = 1, keyset: str = "plain", **kw: Any) -> LossScenario:
    """The smoothed loss sits flat on a shelf, then drops well below it (e.g. a long warm-up at a too-low
    LR, frozen layers). ``start``/``length`` are fractions of the run; ``drop`` is the level ratio.

    Truth: ``loss_plateau`` ``[(s0, s1)]`` (tolerance ``truth["plateau_tol"]`` steps on each end).
    """
    b = _base(n_steps, seed, batch_size=batch_size, shape="power", keyset=keyset, **kw)
    rng = b["rng"]
    st = start if start is not None else rng.choice([0.0, rng.uniform(0.15, 0.4)])
    ln = length if length is not None else rng.uniform(0.12, 0.3)
    dr = drop if drop is not None else rng.uniform(1.5, 2.5)
    s0, s1 = int(n_steps * st), int(n_steps * (st + ln))
    lev = b["level"].copy()
    n = n_steps
    fall = max(10, n // 100)  # the drop after the shelf takes ~1% of the run
    new = np.empty(n)
    if s0:  # before the shelf: a clear decay (from 2x, steady in log) onto the shelf
        new[:s0] = lev[s0] * dr * 2.0 ** ((s0 - np.arange(s0)) / s0)
    new[s0:s1] = lev[s0] * dr
    k = np.arange(n - s1)
    w = np.clip(k / fall, 0, 1)
    new[s1:] = np.exp((1 - w) * np.log(lev[s0] * dr) + w * np.log(lev[s1:]))
    b["level"] = new
    return _finish(f"shelf-s{seed}", b, _per_sample(b),
                   truth={"loss_plateau": [(s0, s1)], "plateau_tol": max(200, n_steps // 25), "drop": dr})


def nonfinite(n_steps: int = 20000, seed: int = 0, *, n_bad: int = 4, tail_from: float | None = None,
              batch_size: int = 1, keyset: str = "plain", **kw: Any) -> LossScenario:
    """NaN/inf at a few steps (one of them ``inf``); with ``tail_from`` the loss stays NaN from there on."""
    b = _base(n_steps, seed, batch_size=batch_size, keyset=keyset, **kw)
    rng = b["rng"]
    sc = _finish(f"nonfinite-s{seed}", b, _per_sample(b))
    bad = _spike_steps(rng, n_steps, n_bad)
    sc.loss[bad] = np.nan
    sc.loss[bad[-1]] = np.inf
    if tail_from is not None:
        k = int(n_steps * tail_from)
        sc.loss[k:] = np.nan
        bad = sorted(set(bad) | set(range(k, n_steps)))
    sc.truth["loss_nonfinite"] = bad
    if sc.ema is not None:  # isolated bad steps skipped by the trainer's EMA; a NaN tail poisons it
        sc.ema = _ema(np.where(np.isfinite(sc.loss), sc.loss, np.nanmedian(sc.loss)), b["ema_decay"])
        if tail_from is not None:
            sc.ema[int(n_steps * tail_from):] = np.nan
    return sc


#: name -> generator, for benchmarks/accuracy.py and tests
SCENARIOS: dict[str, Callable[..., LossScenario]] = {
    "healthy": healthy,
    "injected_spikes": injected_spikes,
    "corrupted_samples": corrupted_samples,
    "lr_too_high": lr_too_high,
    "stale_ema": stale_ema,
    "shelf": shelf,
    "nonfinite": nonfinite,
}


# --------------------------------------------------------------------------- writers

def _list_cell(values: list[Any]) -> str:
    return ";".join(str(v) for v in values)


def write_csv(sc: LossScenario, path: str | Path, *, lists: bool = True) -> Path:
    """Write a CSV with a ``step`` column, the scalar columns and (optionally) ``sample_ids``/``timesteps``
    as ``;``-separated strings."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: dict[str, Any] = {"step": sc.steps}
    cols.update(sc.columns())
    if lists and sc.sample_ids is not None:
        cols["sample_ids"] = [_list_cell(r) for r in sc.sample_ids]
    if lists and sc.timesteps is not None:
        cols["timesteps"] = [_list_cell(r) for r in sc.timesteps.tolist()]
    pd.DataFrame(cols).to_csv(path, index=False, na_rep="nan")
    return path


def write_jsonl(sc: LossScenario, path: str | Path, *, lists: bool = True) -> Path:
    """Write one JSON object per step (``step`` plus keys; lists as JSON lists; NaN as ``NaN``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = sc.columns()
    names = list(cols)
    arrs = [cols[k].tolist() for k in names]
    with path.open("w") as fh:
        for i, step in enumerate(sc.steps.tolist()):
            row: dict[str, Any] = {"step": step}
            for k, a in zip(names, arrs):
                row[k] = a[i]
            if lists and sc.sample_ids is not None:
                row["sample_ids"] = sc.sample_ids[i]
            if lists and sc.timesteps is not None:
                row["timesteps"] = sc.timesteps[i].tolist()
            fh.write(json.dumps(row) + "\n")
    return path


def write_tensorboard(sc: LossScenario, logdir: str | Path, *, every: int = 1) -> Path:
    """Write TensorBoard scalar events (tag = key) with tensorboard's own writer; returns ``logdir``."""
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.compat.proto import event_pb2, summary_pb2

    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    w = EventFileWriter(str(logdir))
    cols = sc.columns()
    for i in range(0, len(sc.steps), every):
        vals = [summary_pb2.Summary.Value(tag=k, simple_value=float(v[i])) for k, v in cols.items()]
        w.add_event(event_pb2.Event(step=int(sc.steps[i]), wall_time=1.7e9 + i, summary=summary_pb2.Summary(value=vals)))
    w.close()
    return logdir
