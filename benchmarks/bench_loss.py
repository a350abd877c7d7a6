"""Loss-analysis speed and false alarms, side by side with baselines, in one run.

    python benchmarks/bench_loss.py [--steps 1000000]

Prints the time to analyse a healthy heavy-tailed run of N steps (spikes, plateau +
divergence, EMA, and all together; the minimum of ``--repeats`` runs, since the machine
is shared) next to a naive pandas-rolling mean+3sigma on the same series and ruptures
PELT on a 10k-step slice (as ratios, and per step), with each method's false alarms
(events for diffdiag, flagged steps for the rolling rule, change points for PELT) and
the time to load the run from a CSV and a JSONL file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scenarios.loss_logs import healthy, write_csv, write_jsonl  # noqa: E402
from diffdiag.analyzers.loss_levels import (detect_divergence, detect_ema_divergence,  # noqa: E402
                                            detect_plateaus, level_curve)
from diffdiag.analyzers.loss_spikes import detect_spikes  # noqa: E402


def spikes(sc):
    return len(detect_spikes(sc.loss).events)


def levels(sc):
    cv = level_curve(sc.loss)
    return len(detect_divergence(sc.loss, curve=cv)) + len(detect_plateaus(sc.loss, curve=cv))


def ema(sc):
    return len(detect_ema_divergence(sc.steps, sc.loss, sc.steps, sc.ema)[0])


def ours(sc):
    return spikes(sc) + levels(sc) + ema(sc)


def naive(sc, window=200):
    import pandas as pd

    s = pd.Series(sc.loss)
    r = s.rolling(window, min_periods=20)
    m, sd = r.mean().shift(1), r.std().shift(1)
    return int((s > m + 3 * sd).sum())


def pelt(x):
    import ruptures as rpt

    algo = rpt.Pelt(model="l2", min_size=20, jump=5).fit(np.log(x))
    return len(algo.predict(pen=3 * np.log(x.size) * np.var(np.log(x)))) - 1


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def best(f, *a, reps=3):
    """Minimum wall-clock time over ``reps`` runs (and the minimum process CPU time, in ``CPU``)."""
    t, c = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = f(*a)
        t.append(time.perf_counter() - t0)
        c.append(time.process_time() - c0)
    CPU[f.__name__] = min(c)
    return min(t), out


CPU: dict[str, float] = {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--pelt-steps", type=int, default=10_000)
    a = ap.parse_args()
    sc = healthy(a.steps, a.seed, batch_size=1, with_ids=False, with_timesteps=False)
    x = sc.loss[-5000:]
    print(f"healthy heavy-tailed run: {a.steps} steps, p99/median = {np.percentile(x, 99) / np.median(x):.1f}")
    reps = a.repeats
    t_sp, fa_sp = best(spikes, sc, reps=reps)
    t_lv, fa_lv = best(levels, sc, reps=reps)
    t_em, fa_em = best(ema, sc, reps=reps)
    t_ours, fa_ours = best(ours, sc, reps=reps)
    t_naive, fa_naive = best(naive, sc, reps=reps)
    sl = sc.loss[: a.pelt_steps]
    t_pelt, fa_pelt = best(pelt, sl, reps=1)
    print(f"timings: minimum of {reps} repeats (shared machine: `uptime` load {_load()})")
    print(f"{'method':52s} {'wall (s)':>9s} {'cpu (s)':>8s} {'vs ours':>8s} {'false alarms':>13s}")
    print(f"{'diffdiag spikes':52s} {t_sp:9.3f} {CPU['spikes']:8.3f} {'':8s} {fa_sp:13d}")
    print(f"{'diffdiag plateau + divergence':52s} {t_lv:9.3f} {CPU['levels']:8.3f} {'':8s} {fa_lv:13d}")
    print(f"{'diffdiag EMA break':52s} {t_em:9.3f} {CPU['ema']:8.3f} {'':8s} {fa_em:13d}")
    print(f"{'diffdiag total (one call each, end to end)':52s} {t_ours:9.3f} {CPU['ours']:8.3f} {1.0:8.2f} {fa_ours:13d}")
    print(f"{'pandas rolling mean+3sd (window 200), all steps':52s} {t_naive:9.3f} {CPU['naive']:8.3f} "
          f"{t_naive / t_ours:8.2f} {fa_naive:13d}")
    print(f"{'ruptures PELT l2 on log-loss, ' + str(sl.size) + '-step slice':52s} {t_pelt:9.3f} {CPU['pelt']:8.3f} "
          f"{t_pelt / t_ours:8.2f} {fa_pelt:13d}")
    per_ours = t_ours / a.steps
    print(f"  per step: diffdiag {per_ours * 1e9:.0f} ns, pandas rolling {t_naive / a.steps * 1e9:.0f} ns "
          f"({t_naive / t_ours:.1f}x), PELT {t_pelt / sl.size * 1e9:.0f} ns ({t_pelt / sl.size / per_ours:.0f}x ours)")
    import tempfile

    from diffdiag.sources.logs import load_logs

    with tempfile.TemporaryDirectory() as d:
        for writer, name in ((write_csv, "log.csv"), (write_jsonl, "log.jsonl")):
            p = writer(sc, Path(d) / name, lists=False)
            t0 = time.perf_counter()
            log = load_logs(p)
            print(f"load a {a.steps}-row {name.split('.')[1].upper()} ({p.stat().st_size / 1e6:.0f} MB): "
                  f"{time.perf_counter() - t0:.2f} s, {len(log.loss)} steps")
    print(f"target: <= 0.3 s for 1M steps with 0 false alarms -> wall {'MET' if t_ours <= 0.3 and fa_ours == 0 else 'NOT MET'}"
          f" (load {_load()}), cpu {'MET' if CPU['ours'] <= 0.3 and fa_ours == 0 else 'NOT MET'}")


if __name__ == "__main__":
    main()
