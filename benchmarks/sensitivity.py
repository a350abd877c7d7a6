"""Sensitivity of every detector: detection rate against effect size, and false alarms on healthy inputs.

Usage::

    python benchmarks/sensitivity.py              # the full run (<= 15 min on 2 cores); writes the table and plots
    python benchmarks/sensitivity.py --quick      # a smoke run (a few draws), written under a temporary folder
    python benchmarks/sensitivity.py --only loss_spike,stripes --draws 0.5 --out /tmp/sens
    python benchmarks/sensitivity.py --only latents --out /tmp/sens   # one input kind: its detectors

For every detector (a finding id, per input kind) a *curve* sweeps one effect
size — spike height, shelf drop, stripe amplitude, latent wave amplitude, ... —
over many random draws (photos, positions, periods, seeds), and counts how
often the finding is reported at warning or above **at the right place** (the
step, period, channel, array, file the fault was put in). The same detectors
then run on healthy inputs only — many seeds of healthy loss, every
scikit-image photo and texture as clean reference/output pairs, lone images
and datasets, healthy latents (plain and pre/post) — and the false-alarm rate
is the share of those inputs with that finding at warning or above.

The table gives, per curve, the effect size at which the detection rate
reaches 50 % and 90 % (interpolated between the swept values, in the
parameter's natural unit) and the detector's false-alarm rate. Curves over a
range rather than a strength (a period, a position, a channel: ``kind
"coverage"``) give the part of the range detected at 50 % / 90 % instead.

Inputs are built in memory by the generators of ``benchmarks/scenarios``
(loss_logs, images, latents, datasets) and analysed through the public pure
pipeline (``diffdiag.pipeline.analyze(RunData(...), Settings())``; datasets are
written to a temporary folder and read by ``diffdiag.api.load``), in a pool of
two processes. Draws are seeded from their curve, value and index: a run is
reproducible.

Writes ``benchmarks/results/sensitivity.json`` and ``.md``, and
``docs/sensitivity/README.md`` with one plot per detector
(``docs/sensitivity/<detector>.png``: detection rate against effect size, the
50 % and 90 % levels and thresholds marked, the false-alarm rate in the title).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.scenarios import datasets as D  # noqa: E402
from benchmarks.scenarios import images as I  # noqa: E402,E741
from benchmarks.scenarios import latents as L  # noqa: E402
from benchmarks.scenarios import loss_logs as LL  # noqa: E402

ALARM = ("warning", "critical")
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs" / "sensitivity"

#: every scikit-image photo and texture that ships with the package (graphics left out)
ALL_PHOTOS = D.ALL_PHOTOS


# =========================================================================== model

@dataclass
class Curve:
    """One swept effect size of one detector.

    Attributes
    ----------
    detector : str
        The detector: a finding id, with the input kind when an id has two (``"stripes (latents)"``).
    name : str
        The variant (e.g. ``"batch 1, timesteps logged"``).
    param : str
        What is swept, with its natural unit.
    values : list
        Swept values, the weakest effect first (numbers, or labels for categories).
    make : callable
        ``make(value, rng) -> (inputs, truth)``: ``inputs`` a RunData (or a dataset folder spec), ``truth``
        what ``judge`` needs.
    judge : callable
        ``judge(diagnosis, truth) -> (hits, trials)``.
    draws : int
        Draws per value in the full run.
    kind : str
        ``"threshold"`` (the rate grows with the value) or ``"coverage"`` (a range is swept).
    log_x : bool
        Interpolate and plot on a log axis.
    cost : float
        Relative cost of one draw (for load balancing only).
    """

    detector: str
    name: str
    param: str
    values: list
    make: Callable[[Any, np.random.Generator], tuple[Any, Any]]
    judge: Callable[[Any, Any], tuple[int, int]]
    draws: int = 12
    kind: str = "threshold"
    log_x: bool = False
    cost: float = 1.0

    @property
    def key(self) -> str:
        return f"{self.detector} | {self.name}"


@dataclass
class HealthySet:
    """Healthy inputs of one kind: ``make(i) -> inputs`` for ``i < n``."""

    domain: str
    name: str
    n: int
    make: Callable[[int], Any]
    cost: float = 1.0


#: detector -> (domain of its healthy inputs, predicate on a finding: is it this detector's)
DETECTORS: dict[str, tuple[str, Callable[[Any], bool]]] = {}


def _detector(name: str, domain: str, pred: Callable[[Any], bool] | None = None) -> str:
    fid = name.split(" ")[0]
    DETECTORS[name] = (domain, pred or (lambda f, fid=fid: f.id == fid))
    return name


def _alarms(diag, fid: str) -> list:
    return [f for f in diag.findings if f.id == fid and f.severity in ALARM]


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


# =========================================================================== inputs

def loss_run(sc: LL.LossScenario):
    """A RunData holding a generated log, as the log source would read it."""
    from diffdiag.model import RunData, Series
    from diffdiag.sources.logs import build_runlog

    steps = sc.steps
    scalars = {k: Series(k, steps, v) for k, v in sc.columns().items()}
    ids = {int(s): list(r) for s, r in zip(steps.tolist(), sc.sample_ids)} if sc.sample_ids else None
    ts = ({int(s): np.asarray(r, np.float64) for s, r in zip(steps.tolist(), sc.timesteps)}
          if sc.timesteps is not None else None)
    return RunData(name=sc.name, log=build_runlog(scalars, ids, ts, loss_key=sc.keys["loss"]))


def pair_run(out: np.ndarray, ref: np.ndarray | None):
    from diffdiag.model import ImageInput, RunData

    return RunData(images=[ImageInput(np.asarray(out, np.float32), "out.png",
                                      None if ref is None else np.asarray(ref, np.float32),
                                      None if ref is None else "ref.png")])


def latent_run(files: dict[str, Any]):
    from diffdiag.model import LatentFile, RunData

    out = []
    for i, (name, v) in enumerate(sorted(files.items())):
        out.append(LatentFile(name, 100 * (i + 1), dict(v) if isinstance(v, dict) else {"latents": v}))
    return RunData(latents=out)


@dataclass
class DatasetInputs:
    """A dataset to write and read (datasets are read from a folder, like a user's)."""

    case: D.DatasetCase


def _analyze(inputs: Any):
    from diffdiag.model import Settings
    from diffdiag.pipeline import analyze

    if isinstance(inputs, DatasetInputs):
        from diffdiag.api import load

        tmp = Path(tempfile.mkdtemp(prefix="diffdiag-sens-"))
        try:
            img_dir, mask_dir = D.write_dataset_case(inputs.case, tmp)
            run = load(dataset=img_dir, masks=mask_dir)
            diag = analyze(run, Settings())
            for f in diag.findings:  # names relative to the dataset folder, as the truth has them
                for k in ("file", "files"):
                    v = f.location.get(k)
                    if isinstance(v, str):
                        f.location[k] = _rel(v, img_dir)
                    elif isinstance(v, list):
                        f.location[k] = [_rel(x, img_dir) for x in v]
            return diag
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return analyze(inputs, Settings())


def _rel(v: Any, root: Path) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return Path(v).relative_to(root).as_posix()
    except ValueError:
        return v


# =========================================================================== loss

LOSS_SHAPES = ("exp", "power", "lora")


def _spikes(value: float, rng: np.random.Generator, *, batch: int, ts: bool, width: int):
    n = 4000
    b = LL._base(n, int(rng.integers(1 << 30)), batch_size=batch, with_timesteps=ts,
                 shape=LOSS_SHAPES[int(rng.integers(3))], keyset="plain")
    ps = LL._per_sample(b)
    steps = LL._spike_steps(b["rng"], n, 4, lo=0.1, hi=0.9, min_gap=400)
    step_loss = ps.mean(axis=1)
    med = float(np.median(step_loss))
    mult = np.ones(n)
    for s in steps:
        for j in range(width):
            if s + j < n:  # the spike's loss is `value` x the median loss at this level
                mult[s + j] = value * med / step_loss[s + j]
    sc = LL._finish("spikes", b, ps, level_mult=mult)
    return loss_run(sc), {"steps": steps, "width": width}


def _judge_spikes(diag, truth) -> tuple[int, int]:
    found = [f.location["step"] for f in _alarms(diag, "loss_spike")]
    hits = sum(any(s - 2 <= x <= s + truth["width"] + 1 for x in found) for s in truth["steps"])
    return hits, len(truth["steps"])


def _grad_spikes(value: float, rng: np.random.Generator):
    n = 4000
    b = LL._base(n, int(rng.integers(1 << 30)), shape=LOSS_SHAPES[int(rng.integers(3))])
    ps = LL._per_sample(b)
    steps = LL._spike_steps(b["rng"], n, 4, lo=0.1, hi=0.9, min_gap=400)
    gx = np.ones(n)
    gx[steps] = value
    return loss_run(LL._finish("grad", b, ps, grad_extra=gx)), {"steps": steps}


def _judge_grad(diag, truth) -> tuple[int, int]:
    found = [f.location["step"] for f in _alarms(diag, "grad_norm_spike")]
    return sum(any(abs(x - s) <= 1 for x in found) for s in truth["steps"]), len(truth["steps"])


def _divergence(value: float, rng: np.random.Generator):
    sc = LL.lr_too_high(8000, int(rng.integers(1 << 30)), jump=value, batch_size=int(rng.choice([1, 4])),
                        shape=LOSS_SHAPES[int(rng.integers(2))])
    return loss_run(sc), {"step": sc.truth["loss_divergence"][0], "tol": sc.truth["divergence_tol"]}


def _judge_divergence(diag, truth) -> tuple[int, int]:
    ok = any(abs(f.location["step"] - truth["step"]) <= truth["tol"] for f in _alarms(diag, "loss_divergence"))
    return int(ok), 1


def _shelf(rng: np.random.Generator, *, start: float | None = None, length: float | None = None,
           drop: float = 2.0):
    st = float(rng.uniform(0.15, 0.4)) if start is None else float(start)
    ln = float(rng.uniform(0.12, 0.3)) if length is None else float(length)
    sc = LL.shelf(8000, int(rng.integers(1 << 30)), start=st, length=ln, drop=drop,
                  batch_size=int(rng.choice([1, 4])))
    return loss_run(sc), {"span": sc.truth["loss_plateau"][0]}


def _judge_shelf(diag, truth) -> tuple[int, int]:
    s0, s1 = truth["span"]
    for f in _alarms(diag, "loss_plateau"):
        a, b = f.location["start_step"], f.location["end_step"]
        if min(b, s1) - max(a, s0) >= 0.5 * (s1 - s0):
            return 1, 1
    return 0, 1


EMA_DECAY = 0.995


def _ema_gap(value: float, rng: np.random.Generator):
    n = 8000
    b = LL._base(n, int(rng.integers(1 << 30)), ema_decay=EMA_DECAY, keyset="kohya",
                 shape=LOSS_SHAPES[int(rng.integers(3))])
    ps = LL._per_sample(b)
    loss = b["level"] * ps.mean(axis=1)
    good = LL._ema(loss, EMA_DECAY)
    r = int(n * rng.uniform(0.3, 0.7))
    gap = value if rng.random() < 0.5 else 1.0 / value  # a stale EMA above or below the true one
    ema = good.copy()
    ema[r:] = LL._ema(loss[r:], EMA_DECAY, init=float(good[r]) * gap)
    return loss_run(LL._finish("ema", b, ps, ema=ema)), {"step": r}


def _judge_ema(diag, truth) -> tuple[int, int]:
    r = truth["step"]
    ok = any(r - 20 <= f.location["start_step"] <= r + 1 / (1 - EMA_DECAY) for f in _alarms(diag, "ema_divergence"))
    return int(ok), 1


def _corrupted(rng: np.random.Generator, *, loss_x: float, share: float):
    n_bad = max(1, int(round(share * 1000)))
    sc = LL.corrupted_samples(5000, int(rng.integers(1 << 30)), n_bad=n_bad, factor=(loss_x / 4, loss_x / 4),
                              batch_size=4, dataset_size=1000)
    return loss_run(sc), {"ids": sc.truth["loss_sample_correlation"]}


def _judge_corrupted(diag, truth) -> tuple[int, int]:
    named = {s for f in _alarms(diag, "loss_sample_correlation") for s in f.location["sample_ids"]}
    return len(named & set(truth["ids"])), len(truth["ids"])


def _nonfinite(value: int, rng: np.random.Generator):
    sc = LL.nonfinite(3000, int(rng.integers(1 << 30)), n_bad=int(value))
    return loss_run(sc), {"steps": sc.truth["loss_nonfinite"]}


def _judge_nonfinite(diag, truth) -> tuple[int, int]:
    got = {s for f in _alarms(diag, "loss_nonfinite") for s in f.location["steps"]}
    return len(got & set(truth["steps"])), len(truth["steps"])


def loss_curves() -> list[Curve]:
    heights = [1.5, 2, 3, 4, 6, 9, 14, 20, 35, 60]
    tall = heights + [120, 250, 500, 1000]  # without timesteps a batch of small t alone reaches ~100x the median
    out = []
    spike = _detector("loss_spike", "loss")
    for batch, ts, width, draws in ((1, True, 1, 10), (1, False, 1, 10), (4, True, 1, 8), (4, False, 1, 8),
                                    (1, True, 3, 6)):
        out.append(Curve(spike, f"batch {batch}, {'timesteps logged' if ts else 'no timesteps'}, "
                                f"{width} step{'s' if width > 1 else ''} wide",
                         "spike height (x the median loss at that step)", heights if ts else tall,
                         lambda v, rng, b=batch, t=ts, w=width: _spikes(v, rng, batch=b, ts=t, width=w),
                         _judge_spikes, draws=draws, log_x=True, cost=0.5))
    out.append(Curve(spike, "batch 1, timesteps logged, height 20x", "spike width (steps)", [1, 2, 3, 5, 8, 12, 20],
                     lambda v, rng: _spikes(20.0, rng, batch=1, ts=True, width=int(v)), _judge_spikes, draws=4,
                     kind="coverage", log_x=True, cost=0.5))
    gn = _detector("grad_norm_spike", "loss")
    out.append(Curve(gn, "batch 1", "gradient-norm spike (x its level)", [1.2, 1.5, 2, 2.5, 3, 4, 6, 10],
                     _grad_spikes, _judge_grad, draws=8, log_x=True, cost=0.5))
    div = _detector("loss_divergence", "loss")
    out.append(Curve(div, "LR warm-up past a critical LR", "loss level after the LR passes it (x before)",
                     [1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5, 3.0], _divergence, _judge_divergence, draws=16,
                     log_x=True))
    pl = _detector("loss_plateau", "loss")
    drops = [1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5, 3.0]
    out.append(Curve(pl, "shelf in mid-run (15-40 %)", "shelf height (x the level reached after)", drops,
                     lambda v, rng: _shelf(rng, drop=v), _judge_shelf, draws=16, log_x=True))
    out.append(Curve(pl, "shelf from step 0", "shelf height (x the level reached after)", drops,
                     lambda v, rng: _shelf(rng, start=0.0, drop=v), _judge_shelf, draws=16, log_x=True))
    out.append(Curve(pl, "height 2x, mid-run", "shelf length (% of the run)", [2, 4, 7, 10, 15, 20, 30],
                     lambda v, rng: _shelf(rng, length=v / 100, drop=2.0), _judge_shelf, draws=12, log_x=True))
    out.append(Curve(pl, "height 2x, 15 % long", "shelf start (% of the run)", [0, 5, 10, 20, 40, 60],
                     lambda v, rng: _shelf(rng, start=v / 100, length=0.15, drop=2.0), _judge_shelf, draws=12,
                     kind="coverage"))
    ema = _detector("ema_divergence", "loss")
    out.append(Curve(ema, "EMA restored from a stale value (decay 0.995)", "EMA gap at the restart (x the true EMA)",
                     [1.05, 1.1, 1.15, 1.25, 1.4, 1.6, 2.0, 3.0], _ema_gap, _judge_ema, draws=16, log_x=True))
    cs = _detector("loss_sample_correlation", "loss")
    out.append(Curve(cs, "batch 4, 5000 steps, 3 bad samples", "bad sample's loss (x the median sample loss)",
                     [2, 4, 8, 16, 32, 64, 160], lambda v, rng: _corrupted(rng, loss_x=v, share=0.003),
                     _judge_corrupted, draws=6, log_x=True, cost=0.8))
    out.append(Curve(cs, "batch 4, bad samples at 20x", "corrupted-sample share of the dataset (%)",
                     [0.1, 0.3, 1, 2, 5, 10], lambda v, rng: _corrupted(rng, loss_x=20, share=v / 100),
                     _judge_corrupted, draws=5, kind="coverage", log_x=True, cost=0.8))
    nf = _detector("loss_nonfinite", "loss")
    out.append(Curve(nf, "isolated NaN/inf steps", "non-finite steps", [1, 2, 4], _nonfinite, _judge_nonfinite,
                     draws=3, kind="coverage", cost=0.3))
    return out


#: healthy loss run lengths (steps): short fine-tunes to long runs, every shape (a flat LoRA loss included) at each
HEALTHY_LOSS_STEPS = (300, 1000, 3000, 6000, 20000)


def healthy_loss(i: int):
    shape = LOSS_SHAPES[i % 3]
    k = len(HEALTHY_LOSS_STEPS)
    n = HEALTHY_LOSS_STEPS[(i // 3) % k]
    batch = (1, 4)[(i // (3 * k)) % 2]
    ts = (i // (6 * k)) % 3 != 0
    keyset = list(LL.KEYSETS)[i % len(LL.KEYSETS)]
    return loss_run(LL.healthy(n, 7000 + i, batch_size=batch, shape=shape, keyset=keyset, with_timesteps=ts))


# =========================================================================== images

def _kind(rng: np.random.Generator) -> str:
    return I.CLEAN_KINDS[int(rng.integers(len(I.CLEAN_KINDS)))]


def _stripes(rng: np.random.Generator, *, amplitude_gl: float, period: int | None):
    axis = ("vertical", "horizontal")[int(rng.integers(2))]
    name = I.PHOTOS[int(rng.integers(len(I.PHOTOS)))]
    case = I.stripes_case(axis, period, name, int(rng.integers(1 << 30)), amplitude=amplitude_gl / 255.0,
                          rerender_kind=_kind(rng))
    return pair_run(case.image, case.reference), {"axis": axis, "period": period}


def _judge_stripes(diag, truth) -> tuple[int, int]:
    p = truth["period"]
    for f in _alarms(diag, "stripes"):
        if "image" not in f.location or f.location["axis"] != truth["axis"]:
            continue
        q = f.location.get("period_px")
        if p is None or (q is not None and abs(q - p) <= max(1.0, 0.15 * p)):
            return 1, 1
    return 0, 1


def _tiling(rng: np.random.Generator, *, contrast_gl: float | None, period: int | None):
    name = I.TEXTURED[int(rng.integers(len(I.TEXTURED)))]
    py, px = (period, period) if period else tuple(int(v) for v in rng.integers(9, 61, size=2))
    axes = ("yx", "x", "y")[int(rng.integers(3))]
    t = I._tile_source(name, py, px, rng)
    size = (384, 416)
    ref = I._tile(t, *size)

    def alternate(a: np.ndarray, ax: int) -> np.ndarray:
        mirror = a[::-1] if ax == 0 else a[:, ::-1]
        if contrast_gl is None:
            return mirror
        rms = float(np.sqrt(np.mean((mirror - a) ** 2))) * 255
        mix = min(1.0, contrast_gl / max(rms, 1e-6))  # every other repeat differs by `contrast_gl` RMS
        return (a + mix * (mirror - a)).astype(np.float32)

    t2 = t
    if "x" in axes:
        t2 = np.concatenate([t2, alternate(t2, 1)], axis=1)
    if "y" in axes:
        t2 = np.concatenate([t2, alternate(t2, 0)], axis=0)
    out = I.rerender(I._tile(t2, *size), "noise", rng)
    want = [2 * py if "y" in axes else py, 2 * px if "x" in axes else px]
    return pair_run(out, ref), {"doubled": want}


def _judge_tiling(diag, truth) -> tuple[int, int]:
    for f in _alarms(diag, "tiling_period_doubling"):
        got = f.location.get("doubled_period_px") or []
        if len(got) == 2 and all(g is not None and abs(g - w) <= max(2, 0.06 * w) for g, w in zip(got, truth["doubled"])):
            return 1, 1
    return 0, 1


def _gray(a: np.ndarray) -> np.ndarray:
    return (a @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32) if a.ndim == 3 else a


def _periodic(share: float, rng: np.random.Generator):
    name = I.TEXTURED[int(rng.integers(len(I.TEXTURED)))]
    py, px = (int(v) for v in rng.integers(11, 61, size=2))
    tiled = _gray(I._tile(I._tile_source(name, py, px, rng), 400, 400))
    base = I._crop(I.photo(I.PHOTOS[int(rng.integers(len(I.PHOTOS)))], gray=True), 400, 400, rng)
    img = I.rerender(((1 - share) * base + share * tiled).astype(np.float32), "noise", rng)
    return pair_run(img, None), {"period": [py, px]}


def _judge_periodic(diag, truth) -> tuple[int, int]:
    for f in _alarms(diag, "periodic_pattern"):
        got = f.location.get("period_px") or []
        if len(got) == 2 and all(g is not None and abs(g - w) <= 1 for g, w in zip(got, truth["period"])):
            return 1, 1
    return 0, 1


def _hf_patch(rng: np.random.Generator, *, sigma_gl: float, side: int | None):
    name = I.PHOTOS[int(rng.integers(len(I.PHOTOS)))]
    bbox = None
    if side is not None:
        h, w = I.photo(name).shape[:2]
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        bbox = [x0, y0, x0 + side, y0 + side]
    case = I.hf_patch_case(name, int(rng.integers(1 << 30)), bbox=bbox, sigma=sigma_gl / 255.0,
                           rerender_kind=_kind(rng))
    return pair_run(case.image, case.reference), {"bbox": case.truth[0]["bbox"]}


def _judge_hf(diag, truth) -> tuple[int, int]:
    t = truth["bbox"]
    for f in _alarms(diag, "hf_noise_patch"):
        b = f.location["bbox"]
        ix = max(0, min(b[2], t[2]) - max(b[0], t[0]))
        iy = max(0, min(b[3], t[3]) - max(b[1], t[1]))
        inter = ix * iy
        if inter >= 0.5 * (t[2] - t[0]) * (t[3] - t[1]) and inter >= 0.25 * max(1, (b[2] - b[0]) * (b[3] - b[1])):
            return 1, 1
    return 0, 1


def _crop_shift(magnitude: float, rng: np.random.Generator):
    from scipy.ndimage import shift as nd_shift

    h, w = 320, 352
    m = 12
    names = [n for n in I.PHOTOS if I.photo(n).shape[0] > h + 2 * m and I.photo(n).shape[1] > w + 2 * m]
    a = I.photo(names[int(rng.integers(len(names)))])
    theta = float(rng.uniform(0, 2 * np.pi))
    dy, dx = magnitude * math.sin(theta), magnitude * math.cos(theta)
    y0 = int(rng.integers(m, a.shape[0] - h - m))
    x0 = int(rng.integers(m, a.shape[1] - w - m))
    moved = nd_shift(a, (dy, dx) + ((0,) if a.ndim == 3 else ()), order=3, mode="reflect")  # moved(y, x) = a(y-dy, x-dx)
    ref = a[y0:y0 + h, x0:x0 + w]
    out = I.rerender(np.clip(moved[y0:y0 + h, x0:x0 + w], 0, 1).astype(np.float32), _kind(rng), rng)
    return pair_run(out, ref), {"shift": [dy, dx]}


def _judge_crop(diag, truth) -> tuple[int, int]:
    dy, dx = truth["shift"]
    tol = 0.5 + 0.1 * math.hypot(dy, dx)
    for f in _alarms(diag, "crop_offset"):
        got = f.evidence.get("shift_exact") or f.location["shift_px"]
        if abs(got[0] - dy) <= tol and abs(got[1] - dx) <= tol:
            return 1, 1
    return 0, 1


def _flat(std_gl: float, rng: np.random.Generator):
    name = I.PHOTOS[int(rng.integers(len(I.PHOTOS)))]
    a = I._crop(I.photo(name), 256, 256, rng)
    mean = float(a.mean())
    sd = float(a.std()) * 255
    img = mean + (a - mean) * (std_gl / max(sd, 1e-6))
    return pair_run(np.clip(img, 0, 1).astype(np.float32), None), {}


def _judge_flat(diag, truth) -> tuple[int, int]:
    return int(bool(_alarms(diag, "image_degenerate"))), 1


def image_curves() -> list[Curve]:
    out = []
    st = _detector("stripes (images)", "images", lambda f: f.id == "stripes" and "image" in f.location)
    out.append(Curve(st, "periodic (3-24 px), pair", "stripe amplitude (peak, grey levels of 255)",
                     [1, 2, 3, 4, 6, 9, 14, 20], lambda v, rng: _stripes(rng, amplitude_gl=v,
                                                                      period=int(rng.integers(3, 25))),
                     _judge_stripes, draws=24, log_x=True))
    out.append(Curve(st, "aperiodic bands, pair", "stripe amplitude (peak, grey levels of 255)",
                     [1, 2, 3, 4, 6, 9, 14, 20], lambda v, rng: _stripes(rng, amplitude_gl=v, period=None),
                     _judge_stripes, draws=16, log_x=True))
    out.append(Curve(st, "amplitude 8 grey levels, pair", "stripe period (px)", [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64],
                     lambda v, rng: _stripes(rng, amplitude_gl=8, period=int(v)), _judge_stripes, draws=12,
                     kind="coverage", log_x=True))
    td = _detector("tiling_period_doubling", "images")
    out.append(Curve(td, "mirrored alternate tile, periods 9-60 px", "tile-to-alternate contrast (RMS grey levels)",
                     [1, 2, 4, 6, 10, 16, 25, 40], lambda v, rng: _tiling(rng, contrast_gl=v, period=None),
                     _judge_tiling, draws=16, log_x=True))
    out.append(Curve(td, "mirrored alternate tile, full contrast", "tile period (px)", [6, 8, 12, 16, 24, 32, 48, 64, 96],
                     lambda v, rng: _tiling(rng, contrast_gl=None, period=int(v)), _judge_tiling, draws=10,
                     kind="coverage", log_x=True))
    pp = _detector("periodic_pattern", "images")
    out.append(Curve(pp, "lone image, tile 11-60 px over a photo", "share of the repeated tile in the image (%)",
                     [20, 40, 60, 80, 90, 95, 100], lambda v, rng: _periodic(v / 100, rng), _judge_periodic,
                     draws=16))
    hf = _detector("hf_noise_patch", "images")
    out.append(Curve(hf, "40-120 px patch, pair", "noise strength (sigma, grey levels of 255)",
                     [1, 2, 3, 5, 8, 12, 20, 30], lambda v, rng: _hf_patch(rng, sigma_gl=v, side=None), _judge_hf,
                     draws=20, log_x=True))
    out.append(Curve(hf, "sigma 15 grey levels, pair", "patch side (px)", [6, 8, 12, 16, 24, 32, 48, 64, 96],
                     lambda v, rng: _hf_patch(rng, sigma_gl=15, side=int(v)), _judge_hf, draws=12, log_x=True))
    co = _detector("crop_offset", "images")
    out.append(Curve(co, "pair, random direction", "crop shift (px)", [0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8],
                     _crop_shift, _judge_crop, draws=14, log_x=True))
    dg = _detector("image_degenerate", "images")
    out.append(Curve(dg, "photo flattened about its mean", "image contrast (std, grey levels; lower is flatter)",
                     [8, 4, 2, 1, 0.5, 0.25, 0.1, 0.0], _flat, _judge_flat, draws=6, cost=0.5))
    return out


@lru_cache(maxsize=4)
def _any_photo(name: str) -> np.ndarray:
    import skimage.data
    from skimage.util import img_as_float32

    a = getattr(skimage.data, name)()
    if isinstance(a, tuple):  # stereo_motorcycle: (left, right, disparity)
        a = a[0]
    a = img_as_float32(a)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if max(a.shape[:2]) > 640:  # retina, hubble: a centred crop of at most 512 px keeps the analysis time comparable
        h, w = a.shape[:2]
        ch, cw = min(h, 512), min(w, 512)  # stereo_motorcycle is 500 px high: a 512 px window was 6 rows
        a = a[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    return a


def healthy_pair(i: int):
    name = ALL_PHOTOS[i % len(ALL_PHOTOS)]
    kind = I.CLEAN_KINDS[(i // len(ALL_PHOTOS)) % len(I.CLEAN_KINDS)]
    ref = _any_photo(name)
    return pair_run(I.rerender(ref, kind, np.random.default_rng(9000 + i)), ref)


def healthy_lone(i: int):
    name = ALL_PHOTOS[i % len(ALL_PHOTOS)]
    rng = np.random.default_rng(9500 + i)
    a = _any_photo(name)
    if i >= len(ALL_PHOTOS):  # later rounds: a random crop, re-rendered
        h, w = a.shape[:2]
        a = I._crop(a, min(h, 256), min(w, 256), rng)
        a = I.rerender(a, I.CLEAN_KINDS[i % len(I.CLEAN_KINDS)], rng)
    return pair_run(a, None)


# =========================================================================== latents

def _wave(size: int, period: int, rng: np.random.Generator) -> np.ndarray:
    """The banding profile of ``benchmarks.scenarios.latents.periodic_latents`` (peak 1)."""
    phase = rng.uniform(0, 2 * np.pi)
    x = np.arange(size, dtype=np.float32)
    w = np.sign(np.sin(2 * np.pi * x / period + phase)) * 0.5 + 0.5 * np.sin(2 * np.pi * x / period + phase)
    return (w - w.mean()) / (np.abs(w).max() + 1e-9)


def _latent_wave(rng: np.random.Generator, *, array: str, amplitude: float, period: int | None = None,
                 channel: int | None = None, size: int = 32):
    period = int(rng.integers(2, size // 3 + 1)) if period is None else int(period)
    channel = int(rng.integers(4)) if channel is None else int(channel)
    axis = ("vertical", "horizontal")[int(rng.integers(2))]
    seed = int(rng.integers(1 << 30))
    n_files = int(rng.integers(4, 8))
    if array == "latents":
        case = L.periodic_latents(seed, period=period, axis=axis, channel=channel, amplitude=amplitude,
                                  n_files=n_files, size=size)
    else:
        case = L.healthy_latents(seed, n_files=n_files, size=size, pre_post=True)
        w = _wave(size, period, rng)
        for v in case.files.values():
            a = v[array]
            sd = float(a[:, channel].std())
            a[:, channel] += amplitude * sd * (w[None, None, :] if axis == "vertical" else w[None, :, None])
    return latent_run(case.files), {"channel": channel, "axis": axis, "period": period, "array": array}


def _judge_latent_wave(diag, truth) -> tuple[int, int]:
    ok = any(f.location.get("channel") == truth["channel"] and f.location.get("axis") == truth["axis"]
             and f.location.get("period") == truth["period"] and f.location.get("array") == truth["array"]
             for f in _alarms(diag, "latent_periodicity"))
    return int(ok), 1


def _bands(amplitude: float, rng: np.random.Generator):
    axis = ("vertical", "horizontal")[int(rng.integers(2))]
    case = L.banded_latents(int(rng.integers(1 << 30)), axis=axis, channel=int(rng.integers(4)),
                            n_lines=int(rng.integers(2, 5)), amplitude=amplitude)
    return latent_run(case.files), {"axis": axis}


def _judge_bands(diag, truth) -> tuple[int, int]:
    ok = any("latents" in f.location and f.location["axis"] == truth["axis"] for f in _alarms(diag, "stripes"))
    return int(ok), 1


def _shift(value: float, rng: np.random.Generator, *, array: str):
    seed = int(rng.integers(1 << 30))
    if array == "latents":
        case = L.shifted_latents(seed, n_files=8, n_shifted=1, shift=value * (1 if rng.random() < 0.5 else -1))
        loc = case.truth[0]["location"]
        return latent_run(case.files), {"file": loc["files"][0], "channels": loc["channels"], "array": array}
    case = L.healthy_latents(seed, n_files=8, pre_post=True)
    names = sorted(case.files)
    bad = names[int(rng.integers(len(names)))]
    ch = int(rng.integers(4))
    sd = float(np.concatenate([case.files[n]["post"][:, ch] for n in names]).std())
    case.files[bad]["post"][:, ch] += value * sd * (1 if rng.random() < 0.5 else -1)
    return latent_run(case.files), {"file": bad, "channels": [ch], "array": array}


def _judge_shift(diag, truth) -> tuple[int, int]:
    for f in _alarms(diag, "latent_batch_shift"):
        if truth["file"] in f.location["files"] and set(f.location["channels"]) & set(truth["channels"]):
            return 1, 1
    if truth["array"] == "post":  # a shifted prediction may be reported as its drift from the input instead
        for f in _alarms(diag, "latent_stats_drift"):
            if truth["file"] in f.location["files"] and set(f.location["channels"]) & set(truth["channels"]):
                return 1, 1
    return 0, 1


def _drift(factor: float, rng: np.random.Generator):
    case = L.healthy_latents(int(rng.integers(1 << 30)), n_files=6, pre_post=True)
    names = sorted(case.files)
    bad = names[int(rng.integers(len(names)))]
    ch = int(rng.integers(4))
    case.files[bad]["post"][:, ch] *= factor if rng.random() < 0.5 else 1.0 / factor
    return latent_run(case.files), {"file": bad, "channel": ch}


def _judge_drift(diag, truth) -> tuple[int, int]:
    ok = any(truth["file"] in f.location["files"] and truth["channel"] in f.location["channels"]
             for f in _alarms(diag, "latent_stats_drift"))
    return int(ok), 1


def latent_curves() -> list[Curve]:
    out = []
    lp = _detector("latent_periodicity", "latents")
    amps = [0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7, 1.0]
    for array, draws in (("latents", 8), ("pre", 10), ("post", 10)):
        out.append(Curve(lp, f"wave in one channel of `{array}`, every file, period 2-10",
                         "wave amplitude (peak, x the channel's std)", amps,
                         lambda v, rng, a=array: _latent_wave(rng, array=a, amplitude=v), _judge_latent_wave,
                         draws=draws, log_x=True, cost=1.5))
    for array in ("pre", "post"):
        out.append(Curve(lp, f"amplitude 0.5 in `{array}`, 48x48 latents", "wave period (latent cells, 2 ... size/3)",
                         list(range(2, 17)), lambda v, rng, a=array: _latent_wave(rng, array=a, amplitude=0.5,
                                                                                   period=int(v), size=48),
                         _judge_latent_wave, draws=4, kind="coverage", cost=3.0))
    out.append(Curve(lp, "amplitude 0.3 in `post`", "channel", [0, 1, 2, 3],
                     lambda v, rng: _latent_wave(rng, array="post", amplitude=0.3, channel=int(v)),
                     _judge_latent_wave, draws=8, kind="coverage", cost=1.5))
    ls = _detector("stripes (latents)", "latents", lambda f: f.id == "stripes" and "latents" in f.location)
    out.append(Curve(ls, "2-4 fixed lines over half the frame", "band offset (x the channel's std)",
                     [0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.2], _bands, _judge_bands, draws=8, log_x=True, cost=1.2))
    bs = _detector("latent_batch_shift", "latents")
    shifts = [0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5]
    out.append(Curve(bs, "one of 8 files, plain latents", "channel shift (x the channel's std)", shifts,
                     lambda v, rng: _shift(v, rng, array="latents"), _judge_shift, draws=8, log_x=True, cost=1.5))
    out.append(Curve(bs, "one of 8 files, in `post`", "channel shift (x the channel's std)", shifts,
                     lambda v, rng: _shift(v, rng, array="post"), _judge_shift, draws=6, log_x=True, cost=2.0))
    dr = _detector("latent_stats_drift", "latents")
    out.append(Curve(dr, "one of 6 files, one channel of `post` rescaled", "prediction scale (x, or 1/x)",
                     [1.2, 1.5, 2, 2.5, 3, 4, 6], _drift, _judge_drift, draws=8, log_x=True, cost=1.5))
    return out


def healthy_latents(i: int):
    size = (32, 32, 48)[i % 3]
    n_files = (4, 6, 8)[(i // 3) % 3]
    case = L.healthy_latents(5000 + i, n_files=n_files, size=size, pre_post=bool(i % 2))
    return latent_run(case.files)


# =========================================================================== datasets

DATASET_N = 30


@lru_cache(maxsize=8)
def _base_dataset(seed: int, masks: bool) -> D.DatasetCase:
    if masks:
        return D.healthy_dataset(seed, 12, 160, formats=("png",), with_masks=True)
    return D.healthy_dataset(seed, DATASET_N)


def _copy(case: D.DatasetCase) -> D.DatasetCase:
    return D.DatasetCase(case.name, dict(case.images), dict(case.masks), [])


def _dataset_base(rng: np.random.Generator, masks: bool = False) -> D.DatasetCase:
    return _copy(_base_dataset(int(rng.integers(6)), masks))


def _skewed(rng: np.random.Generator, *, which: str, factor: float, k: int):
    case = _dataset_base(rng)
    names = sorted(case.images)
    pick = sorted(rng.choice(len(names), k, replace=False).tolist())
    for i in pick:  # the transforms of darkened_dataset / low_contrast_dataset
        a = case.images[names[i]].astype(np.float32)
        a = a * factor if which == "brightness" else a.mean() + (a - a.mean()) * factor
        case.images[names[i]] = np.clip(a, 0, 255).astype(np.uint8)
    return DatasetInputs(case), {"files": [names[i] for i in pick], "id": f"dataset_{which}_skew"}


def _judge_skew(diag, truth) -> tuple[int, int]:
    named = {x for f in _alarms(diag, truth["id"]) for x in f.location["files"]}
    return len(named & set(truth["files"])), len(truth["files"])


def _garbage_image(kind: str, rng: np.random.Generator, value: float | None = None) -> np.ndarray:
    """One unusable image, uint8 (s, s, 3). ``value`` (optional) sets how bad it is: ``noise`` the weight of
    the pixel noise mixed into a photo (1: pure noise), ``constant`` the RMS contrast left in a photo
    flattened about its mean (grey levels), ``clipped`` the contrast gain about the mean."""
    s = int(rng.integers(96, 257))
    if kind == "noise":
        noise = rng.integers(0, 256, (s, s, 3)) if rng.random() < 0.5 else rng.normal(128, 60, (s, s, 3))
        w = 1.0 if value is None else float(value)
        return np.clip((1 - w) * D.photo_crop(rng, s).astype(np.float64) + w * noise, 0, 255).round().astype(np.uint8)
    if kind == "constant":
        if value is None:  # one flat level, or within +-1 level of it
            img = np.full((s, s, 3), int(rng.choice([0, 1, 128, 254, 255])), np.int16)
            return np.clip(img + (rng.integers(-1, 2, (s, s, 1)) if rng.random() < 0.5 else 0), 0, 255).astype(np.uint8)
        a = D.photo_crop(rng, s).astype(np.float64)
        lum = a @ [0.299, 0.587, 0.114]
        return np.clip(a.mean() + (a - a.mean()) * float(value) / max(lum.std(), 1e-6), 0, 255).round().astype(np.uint8)
    a = D.photo_crop(rng, s).astype(np.float64)
    gain = float(value) if value is not None else float(rng.uniform(6, 12))
    if value is None and rng.random() < 0.4:  # blown out at one end: 90-97 % of an over/underexposed frame lost
        q = float(rng.uniform(3, 10))
        if rng.random() < 0.5:
            return np.clip(a * 255 / max(np.percentile(a.min(axis=2), q), 1.0), 0, 255).astype(np.uint8)
        dark = 255 - a
        return np.clip(255 - dark * 255 / max(np.percentile(dark.min(axis=2), q), 1.0), 0, 255).astype(np.uint8)
    return np.clip(a.mean() + (a - a.mean()) * gain, 0, 255).round().astype(np.uint8)


def _garbage(k: int, rng: np.random.Generator, *, kind: str, value: float | None = None):
    case = _dataset_base(rng)
    files = []
    for j in range(int(k)):
        name = f"garbage_{j:02d}.{'jpg' if kind == 'noise' and rng.random() < 0.5 else 'png'}"
        case.images[name] = _garbage_image(kind, rng, value)
        files.append(name)
    return DatasetInputs(case), {"files": files, "problem": kind}


def _judge_garbage(diag, truth) -> tuple[int, int]:
    named = {f.location.get("file") for f in _alarms(diag, "dataset_garbage_image")
             if f.location.get("problem") == truth["problem"]}
    return len(named & set(truth["files"])), len(truth["files"])


def _tiled_source(period: int, rng: np.random.Generator):
    case = _dataset_base(rng)
    names = sorted(n for n in case.images if n.endswith(".png"))
    name = names[int(rng.integers(len(names)))]
    case.images[name] = D.tiled_texture(rng, 192, (int(period), int(period)))
    return DatasetInputs(case), {"file": name, "period": int(period)}


def _judge_tiled(diag, truth) -> tuple[int, int]:
    for f in _alarms(diag, "dataset_tiled_source"):
        per = f.location.get("period_px") or []
        if f.location.get("file") == truth["file"] and any(p is not None and abs(p - truth["period"]) <= 1 for p in per):
            return 1, 1
    return 0, 1


def _mask(problem: str, rng: np.random.Generator, *, shift: float | None = None):
    case = _dataset_base(rng, masks=True)
    names = sorted(case.images)
    name = names[int(rng.integers(len(names)))]
    stem = Path(name).stem
    if shift is None:
        case.masks[stem] = D.corrupt_mask(rng, case.masks[stem], problem)
    else:
        theta = float(rng.uniform(0, 2 * np.pi))
        dy, dx = int(round(shift * math.sin(theta))), int(round(shift * math.cos(theta)))
        if dy == 0 and dx == 0:
            dx = 1
        case.masks[stem] = np.roll(case.masks[stem], (dy, dx), axis=(0, 1))
    return DatasetInputs(case), {"file": name, "problem": problem}


def _judge_mask(diag, truth) -> tuple[int, int]:
    ok = any(f.location.get("file") == truth["file"] and f.location.get("problem") == truth["problem"]
             for f in _alarms(diag, "dataset_invalid_mask"))
    return int(ok), 1


def dataset_curves() -> list[Curve]:
    out = []
    for which, values, k_label in (("brightness", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
                                    "brightness factor of the subset (lower is darker)"),
                                   ("contrast", [0.9, 0.75, 0.6, 0.45, 0.35, 0.25, 0.15],
                                    "contrast factor of the subset (lower is more washed out)")):
        det = _detector(f"dataset_{which}_skew", "dataset")
        strong = 0.35 if which == "brightness" else 0.25
        out.append(Curve(det, f"4 of {DATASET_N} images", k_label, values,
                         lambda v, rng, w=which: _skewed(rng, which=w, factor=v, k=4), _judge_skew, draws=5, cost=3))
        out.append(Curve(det, f"factor {strong}", f"share of the {DATASET_N} images in the subset (%)",
                         [3.3, 6.7, 10, 16.7, 26.7, 40],
                         lambda v, rng, w=which, s=strong: _skewed(rng, which=w, factor=s,
                                                                    k=max(1, round(v / 100 * DATASET_N))),
                         _judge_skew, draws=4, kind="coverage", cost=3))
    gb = _detector("dataset_garbage_image", "dataset")
    for kind, label in (("noise", "pure-noise images (uniform/Gaussian, PNG/JPEG)"),
                        ("constant", "constant images (black/grey/white, flat or +-1 level)"),
                        ("clipped", "heavily clipped photos (contrast x6-12, or 90-97 % blown out at one end)")):
        out.append(Curve(gb, f"{label} added to {DATASET_N}", f"garbage images in the set (named as {kind})",
                         [1, 2, 4], lambda v, rng, k=kind: _garbage(int(v), rng, kind=k), _judge_garbage, draws=4,
                         kind="coverage", cost=3))
    out.append(Curve(gb, "one photo mixed with pixel noise", "noise weight in the image (1 = pure noise)",
                     [0.5, 0.7, 0.8, 0.9, 0.95, 1.0], lambda v, rng: _garbage(1, rng, kind="noise", value=v),
                     _judge_garbage, draws=4, cost=3))
    out.append(Curve(gb, "one photo flattened about its mean", "image contrast (RMS, grey levels; lower is flatter)",
                     [4, 3, 2.5, 2, 1.5, 1, 0.5], lambda v, rng: _garbage(1, rng, kind="constant", value=v),
                     _judge_garbage, draws=4, cost=3))
    out.append(Curve(gb, "one photo's contrast raised about its mean", "contrast gain (x)",
                     [1.5, 2, 3, 4, 6, 8, 12], lambda v, rng: _garbage(1, rng, kind="clipped", value=v),
                     _judge_garbage, draws=4, log_x=True, cost=3))
    ts = _detector("dataset_tiled_source", "dataset")
    out.append(Curve(ts, "one seamless np.tile texture (192 px)", "tile period (px)", [8, 12, 16, 24, 32, 48, 64],
                     _tiled_source, _judge_tiled, draws=4, kind="coverage", cost=3))
    mk = _detector("dataset_invalid_mask", "dataset")
    out.append(Curve(mk, "one bad mask of 12", "mask defect", list(D.MASK_PROBLEMS), _mask, _judge_mask, draws=5,
                     kind="coverage", cost=1.5))
    out.append(Curve(mk, "one mask of 12 shifted", "mask misalignment (px)", [1, 2, 3, 4, 6, 8, 12, 16],
                     lambda v, rng: _mask("misaligned", rng, shift=v), _judge_mask, draws=4, log_x=True, cost=1.5))
    return out


def healthy_dataset(i: int):
    return DatasetInputs(D.healthy_dataset(6000 + i, DATASET_N))


def healthy_dataset_masks(i: int):
    return DatasetInputs(D.healthy_dataset(6500 + i, 12, 160, formats=("png",), with_masks=True))


def healthy_dataset_all_photos(i: int):
    """Every scikit-image photo and texture, two random crops of each (graphics and documents included)."""
    from skimage.transform import resize

    rng = np.random.default_rng(6800 + i)
    images = {}
    for j, name in enumerate(ALL_PHOTOS):
        a = np.clip(np.round(_any_photo(name) * 255), 0, 255).astype(np.uint8)
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        for r in range(2):
            h, w = a.shape[:2]
            side = int(min(h, w) * rng.uniform(0.5, 1.0))
            y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            s = int(rng.integers(96, 257))
            crop = resize(a[y0:y0 + side, x0:x0 + side], (s, s), order=1, anti_aliasing=True, preserve_range=True)
            images[f"{name}_{r}.{'png' if (j + r) % 2 else 'jpg'}"] = np.clip(crop, 0, 255).astype(np.uint8)
    return DatasetInputs(D.DatasetCase(f"all_photos_{i}", images))


# =========================================================================== the run

def all_curves() -> list[Curve]:
    return loss_curves() + image_curves() + latent_curves() + dataset_curves()


def healthy_sets(scale: float = 1.0) -> list[HealthySet]:
    def n(k: int) -> int:
        return max(2, int(round(k * scale)))

    return [
        HealthySet("loss", "healthy loss (exp/power/lora, 300-20k steps, batch 1/4, 5 trainers' keys)", n(400),
                   healthy_loss, cost=0.8),
        HealthySet("images", "every scikit-image photo and texture: clean pairs x 8 re-renderings x 2",
                   n(16 * len(ALL_PHOTOS)), healthy_pair),
        HealthySet("images", "every scikit-image photo and texture, lone (whole and crops)",
                   n(5 * len(ALL_PHOTOS)), healthy_lone),
        HealthySet("latents", "healthy latents (plain and pre/post; 4-8 files; 32-48 cells)", n(200),
                   healthy_latents, cost=1.5),
        HealthySet("dataset", f"healthy photo datasets ({DATASET_N} images)", n(30), healthy_dataset, cost=4),
        HealthySet("dataset", "datasets of every scikit-image photo and texture (2 crops each)", n(8),
                   healthy_dataset_all_photos, cost=4),
        HealthySet("dataset", "healthy datasets with correct masks (12 images)", n(20), healthy_dataset_masks,
                   cost=2),
    ]


_CURVES: dict[str, Curve] = {}
_HEALTHY: dict[str, HealthySet] = {}


def _register(curves: list[Curve], healthy: list[HealthySet]) -> None:
    _CURVES.clear()
    _CURVES.update({c.key: c for c in curves})
    _HEALTHY.clear()
    _HEALTHY.update({h.name: h for h in healthy})


def _task(task: tuple) -> tuple:
    """Run one draw (or one healthy input) in a worker; returns its tallies and CPU time."""
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.process_time()
    if task[0] == "curve":
        _, key, vi, d = task
        c = _CURVES[key]
        rng = np.random.default_rng(_seed(key, vi, d))
        inputs, truth = c.make(c.values[vi], rng)
        hits, trials = c.judge(_analyze(inputs), truth)
        return task, (hits, trials), time.process_time() - t0
    _, name, i = task
    diag = _analyze(_HEALTHY[name].make(i))
    alarms = sorted({det for det, (dom, pred) in DETECTORS.items() if dom == _HEALTHY[name].domain
                     for f in diag.findings if f.severity in ALARM and pred(f)})
    return task, alarms, time.process_time() - t0


def prepare(only: list[str] | None = None, healthy_scale: float = 1.0, values_stride: int = 1
            ) -> tuple[list[Curve], list[HealthySet]]:
    """The selected curves (every ``values_stride``-th value, and the last) and the healthy sets they need."""
    curves = all_curves()
    if only:
        # a detector's name or its input kind (``--only latents``: every latent detector)
        curves = [c for c in curves if any(o in c.detector or o == DETECTORS[c.detector][0] for o in only)]
    if values_stride > 1:
        for c in curves:
            keep = list(range(0, len(c.values), values_stride))
            if keep[-1] != len(c.values) - 1:
                keep.append(len(c.values) - 1)
            c.values = [c.values[i] for i in keep]
    domains = {DETECTORS[c.detector][0] for c in curves}
    healthy = [h for h in healthy_sets(healthy_scale) if h.domain in domains]
    _register(curves, healthy)
    return curves, healthy


def _init_worker(only: list[str] | None, healthy_scale: float, values_stride: int) -> None:
    prepare(only, healthy_scale, values_stride)


def run(*, only: list[str] | None = None, draws_scale: float = 1.0, healthy_scale: float = 1.0, workers: int = 2,
        values_stride: int = 1, progress: bool = True) -> dict[str, Any]:
    """Run every selected curve and healthy set; return the results (see :func:`table_rows`).

    Parameters
    ----------
    only : list of str, optional
        Keep detectors whose name contains one of these, or whose input kind is one of them
        (``"latents"``: every latent detector).
    draws_scale : float
        Multiplies every curve's draws (at least 1 per value).
    healthy_scale : float
        Multiplies the number of healthy inputs (at least 2 per set).
    workers : int
        Processes (1: in this process).
    values_stride : int
        Keep every k-th swept value (and always the last).
    """
    curves, healthy = prepare(only, healthy_scale, values_stride)
    tasks: list[tuple[float, tuple]] = []
    for c in curves:
        n = max(1, int(round(c.draws * draws_scale)))
        for vi in range(len(c.values)):
            for d in range(n):
                tasks.append((c.cost, ("curve", c.key, vi, d)))
    for h in healthy:
        for i in range(h.n):
            tasks.append((h.cost, ("healthy", h.name, i)))
    tasks.sort(key=lambda t: -t[0])  # the expensive ones first: the pool ends together
    t0 = time.time()
    tallies: dict[tuple[str, int], list[int]] = {}
    cpu: dict[str, float] = {}
    alarms: dict[str, dict[str, int]] = {h.name: {} for h in healthy}
    any_alarm: dict[str, int] = {h.name: 0 for h in healthy}
    done = 0

    def consume(res: tuple) -> None:
        nonlocal done
        task, value, sec = res
        done += 1
        if task[0] == "curve":
            t = tallies.setdefault((task[1], task[2]), [0, 0])
            t[0] += value[0]
            t[1] += value[1]
            cpu[task[1]] = cpu.get(task[1], 0.0) + sec
        else:
            for det in value:
                alarms[task[1]][det] = alarms[task[1]].get(det, 0) + 1
            any_alarm[task[1]] += bool(value)
            cpu["healthy: " + task[1]] = cpu.get("healthy: " + task[1], 0.0) + sec
        if progress and (done % 50 == 0 or done == len(tasks)):
            print(f"  {done}/{len(tasks)} draws, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    if workers <= 1:
        for _, task in tasks:
            consume(_task(task))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(only, healthy_scale, values_stride)) as pool:
            for res in pool.imap_unordered(_task, [t for _, t in tasks], chunksize=1):
                consume(res)
    wall = time.time() - t0
    return summarise(curves, healthy, tallies, alarms, any_alarm, cpu, wall, workers)


# =========================================================================== summary

def _interp_threshold(values: list, rates: list[float], q: float, log_x: bool) -> tuple[str, float | None]:
    """The effect size where the rate first reaches ``q`` (values ordered weakest first)."""
    for i, r in enumerate(rates):
        if r >= q:
            if i == 0:
                return "<=", float(values[0])
            v0, v1, r0 = float(values[i - 1]), float(values[i]), rates[i - 1]
            f = (q - r0) / (r - r0) if r > r0 else 1.0
            if log_x and v0 > 0 and v1 > 0:
                return "=", float(math.exp(math.log(v0) + f * (math.log(v1) - math.log(v0))))
            return "=", v0 + f * (v1 - v0)
    return ">", float(values[-1]) if not isinstance(values[-1], str) else None


def _fmt_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return "-"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.3g}"


def _coverage(values: list, rates: list[float], q: float) -> str:
    ok = [v for v, r in zip(values, rates) if r >= q]
    if not ok:
        return "none"
    if len(ok) == len(values):
        return "all"
    if all(isinstance(v, str) for v in values):
        return ", ".join(ok)
    return ", ".join(_fmt_value(v) for v in ok) if len(ok) <= 4 else f"{_fmt_value(ok[0])}-{_fmt_value(ok[-1])} " \
        f"({len(ok)} of {len(values)})"


def summarise(curves: list[Curve], healthy: list[HealthySet], tallies: dict, alarms: dict, any_alarm: dict,
              cpu: dict, wall: float, workers: int) -> dict[str, Any]:
    fa: dict[str, dict[str, Any]] = {}
    for det, (dom, _) in DETECTORS.items():
        sets = [h for h in healthy if h.domain == dom]
        n = sum(h.n for h in sets)
        k = sum(alarms[h.name].get(det, 0) for h in sets)
        fa[det] = {"domain": dom, "alarms": k, "n": n, "rate": k / n if n else None,
                   "per_set": {h.name: {"alarms": alarms[h.name].get(det, 0), "n": h.n} for h in sets}}
    rows = []
    for c in curves:
        hits = [tallies.get((c.key, i), [0, 0]) for i in range(len(c.values))]
        rates = [h / t if t else 0.0 for h, t in hits]
        row: dict[str, Any] = {"detector": c.detector, "variant": c.name, "param": c.param, "kind": c.kind,
                               "values": list(c.values), "rate": rates, "hits": [h for h, _ in hits],
                               "trials": [t for _, t in hits], "log_x": c.log_x,
                               "cpu_s": round(cpu.get(c.key, 0.0), 2)}
        for q in (0.5, 0.9):
            if c.kind == "coverage":
                row[f"at_{int(q * 100)}"] = _coverage(c.values, rates, q)
            else:
                op, v = _interp_threshold(c.values, rates, q, c.log_x)
                row[f"at_{int(q * 100)}"] = {"op": op, "value": v}
        row["false_alarm_rate"] = fa[c.detector]["rate"]
        rows.append(row)
    used = {c.detector for c in curves}
    return {"rows": rows, "false_alarms": {d: v for d, v in fa.items() if d in used},
            "healthy_sets": [{"domain": h.domain, "name": h.name, "n": h.n, "any_alarm": any_alarm[h.name]}
                             for h in healthy],
            "healthy_alarms": alarms, "wall_s": round(wall, 1), "workers": workers,
            "cpu_s": round(sum(cpu.values()), 1), "cpu_by_curve": {k: round(v, 2) for k, v in cpu.items()}}


def _cell(at: Any) -> str:
    if isinstance(at, str):
        return at
    op, v = at["op"], at["value"]
    if v is None:
        return "not reached"
    return {"<=": "≤ ", ">": "> ", "=": ""}[op] + _fmt_value(v)


def _fa_cell(fa: dict[str, Any]) -> str:
    if not fa["n"]:
        return "-"
    return f"{100 * fa['rate']:.1f} % ({fa['alarms']}/{fa['n']})"


def table_markdown(res: dict[str, Any]) -> str:
    lines = ["| detector | variant | effect size (unit) | 50 % | 90 % | false alarms on healthy inputs |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        lines.append(f"| `{r['detector']}` | {r['variant']} | {r['param']} | {_cell(r['at_50'])} | "
                     f"{_cell(r['at_90'])} | {_fa_cell(res['false_alarms'][r['detector']])} |")
    return "\n".join(lines)


def table_text(res: dict[str, Any]) -> str:
    head = ("detector", "variant", "effect size", "50 %", "90 %", "false alarms")
    body = [(r["detector"], r["variant"], r["param"], _cell(r["at_50"]), _cell(r["at_90"]),
             _fa_cell(res["false_alarms"][r["detector"]])) for r in res["rows"]]
    widths = [min(48, max(len(str(x[i])) for x in [head] + body)) for i in range(len(head))]

    def fmt(row):
        return "  ".join(str(v)[:w].ljust(w) for v, w in zip(row, widths))

    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def _slug(det: str) -> str:
    return det.replace(" ", "_").replace("(", "").replace(")", "")


def plot(res: dict[str, Any], folder: Path) -> list[Path]:
    """One PNG per detector: a panel per swept parameter, a line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    by_det: dict[str, list[dict]] = {}
    for r in res["rows"]:
        by_det.setdefault(r["detector"], []).append(r)
    for det, rows in by_det.items():
        params: dict[str, list[dict]] = {}
        for r in rows:
            params.setdefault(r["param"], []).append(r)
        fig, axes = plt.subplots(1, len(params), figsize=(5.2 * len(params), 3.8), dpi=100, squeeze=False)
        for ax, (param, rs) in zip(axes[0], params.items()):
            for r in rs:
                cat = any(isinstance(v, str) for v in r["values"])
                x = list(range(len(r["values"]))) if cat else [float(v) for v in r["values"]]
                line, = ax.plot(x, [100 * v for v in r["rate"]], marker="o", lw=1.5, label=r["variant"])
                if cat:
                    ax.set_xticks(x)
                    ax.set_xticklabels(r["values"], rotation=25, fontsize=8)
                for q in ("at_50", "at_90"):
                    at = r[q]
                    if isinstance(at, dict) and at["op"] == "=" and at["value"] is not None:
                        ax.axvline(at["value"], color=line.get_color(), ls=":", lw=1)
            pos = [float(v) for r in rs for v in r["values"] if not isinstance(v, str)]
            if rs[0]["log_x"] and pos and min(pos) > 0:
                ax.set_xscale("log")
            if pos and pos[0] > pos[-1]:  # weakest effect first: a falling parameter reads right to left
                ax.invert_xaxis()
            ax.axhline(50, color="grey", ls="--", lw=0.8)
            ax.axhline(90, color="grey", ls="--", lw=0.8)
            ax.set_ylim(-3, 103)
            ax.set_xlabel(param, fontsize=9)
            ax.set_ylabel("detected at warning+ (%)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fa = res["false_alarms"][det]
        fig.suptitle(f"{det} — false alarms on healthy {fa['domain']} inputs: {_fa_cell(fa)}", fontsize=10)
        fig.tight_layout()
        p = folder / f"{_slug(det)}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def docs_page(res: dict[str, Any], plots: list[Path], command: str) -> str:
    sets = "\n".join(f"- {h['domain']}: {h['name']} — {h['n']} inputs" for h in res["healthy_sets"])
    figs = "\n\n".join(f"![{p.stem}]({p.name})" for p in plots)
    return f"""# Detection sensitivity and false alarms

Generated by `{command}` ({res['wall_s']:.0f} s wall, {res['cpu_s']:.0f} CPU-s, {res['workers']} processes);
do not edit by hand. Method: `benchmarks/sensitivity.py` (its docstring). A draw counts as detected when the
finding is reported at warning or above at the right place (step, period, channel, array, file); the 50 % / 90 %
columns give the effect size at which the detection rate reaches that level (interpolated between the swept
values), or for a swept range (period, position, channel, category) the part of it detected that often. False
alarms: the share of healthy inputs of the detector's kind with that finding at warning or above.

Healthy inputs:

{sets}

{table_markdown(res)}

{figs}
"""


def write_outputs(res: dict[str, Any], results_dir: Path, docs_dir: Path | None, command: str) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "sensitivity.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (results_dir / "sensitivity.md").write_text(f"Generated by `{command}` in {res['wall_s']:.0f} s "
                                                f"({res['cpu_s']:.0f} CPU-s, {res['workers']} processes).\n\n"
                                                + table_markdown(res) + "\n")
    plots: list[Path] = []
    if docs_dir is not None:
        plots = plot(res, docs_dir)
        (docs_dir / "README.md").write_text(docs_page(res, plots, command))
    return plots


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: one draw per value, every other value, "
                                                         "few healthy inputs; written under a temporary folder")
    ap.add_argument("--only", default="", help="comma-separated detector names (substrings) or input kinds "
                                               "(loss, images, latents, dataset)")
    ap.add_argument("--draws", type=float, default=1.0, help="multiply every curve's draws")
    ap.add_argument("--healthy", type=float, default=1.0, help="multiply the number of healthy inputs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for the table and plots (default: benchmarks/results "
                                                "and docs/sensitivity; --quick: a temporary folder)")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or None
    draws, healthy, stride = args.draws, args.healthy, 1
    if args.quick:
        draws, healthy, stride = min(draws, 0.01), min(healthy, 0.03), 2
    command = "python benchmarks/sensitivity.py" + ("" if argv is None else " " + " ".join(argv))
    res = run(only=only, draws_scale=draws, healthy_scale=healthy, workers=args.workers, values_stride=stride)
    print(table_text(res))
    print(f"\n{len(res['rows'])} curves, {sum(sum(r['trials']) for r in res['rows'])} trials, "
          f"{sum(h['n'] for h in res['healthy_sets'])} healthy inputs; {res['wall_s']:.0f} s wall, "
          f"{res['cpu_s']:.0f} CPU-s on {res['workers']} processes")
    if args.out:
        out = Path(args.out)
        write_outputs(res, out, out / "sensitivity", command)
    elif args.quick:
        out = Path(tempfile.mkdtemp(prefix="diffdiag-sensitivity-"))
        write_outputs(res, out, out / "sensitivity", command)
        print(f"written under {out}")
    else:
        write_outputs(res, RESULTS, DOCS, command)
        print(f"written: {RESULTS / 'sensitivity.md'}, {DOCS / 'README.md'}")
    over = [d for d, v in res["false_alarms"].items() if v["rate"] is not None and v["rate"] > 0.01]
    if over:
        print("false-alarm rate above 1 %: " + ", ".join(over))
    return 0


if __name__ == "__main__":
    sys.exit(main())
