"""Loss-analysis speed and false alarms, side by side with baselines, in one run.

    python benchmarks/bench_loss.py [--steps 1000000]

Prints the time to analyse a healthy heavy-tailed run of N steps (spikes + plateau +
divergence + EMA) next to a naive pandas-rolling mean+3sigma on the same series and
ruptures PELT on a 10k-step slice (as ratios), with each method's false alarms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scenarios.loss_logs import healthy, write_csv  # noqa: E402
from diffdiag.analyzers.loss_levels import (detect_divergence, detect_ema_divergence,  # noqa: E402
                                            detect_plateaus, level_curve)
from diffdiag.analyzers.loss_spikes import detect_spikes  # noqa: E402


def ours(sc):
    res = detect_spikes(sc.loss)
    cv = level_curve(sc.loss)
    div = detect_divergence(sc.loss, curve=cv)
    pl = detect_plateaus(sc.loss, curve=cv)
    ema, _ = detect_ema_divergence(sc.steps, sc.loss, sc.steps, sc.ema)
    return len(res.events) + len(div) + len(pl) + len(ema)


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


def best(f, *a, reps=3):
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = f(*a)
        t.append(time.perf_counter() - t0)
    return min(t), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    sc = healthy(a.steps, a.seed, batch_size=1, with_ids=False, with_timesteps=False)
    x = sc.loss[-5000:]
    print(f"healthy heavy-tailed run: {a.steps} steps, p99/median = {np.percentile(x, 99) / np.median(x):.1f}")
    t_ours, fa_ours = best(ours, sc)
    t_naive, fa_naive = best(naive, sc)
    sl = sc.loss[: 10000]
    t_pelt, fa_pelt = best(pelt, sl, reps=1)
    print(f"{'method':46s} {'time (s)':>9s} {'vs ours':>8s} {'false alarms':>13s}")
    print(f"{'diffdiag (spikes+plateau+divergence+EMA)':46s} {t_ours:9.3f} {1.0:8.2f} {fa_ours:13d}")
    print(f"{'pandas rolling mean+3sd (window 200)':46s} {t_naive:9.3f} {t_naive / t_ours:8.2f} {fa_naive:13d}")
    print(f"{'ruptures PELT l2, 10k-step slice':46s} {t_pelt:9.3f} {t_pelt / t_ours:8.2f} {fa_pelt:13d}")
    print(f"  (PELT per step is {t_pelt / 1e4 / (t_ours / a.steps):.0f}x ours)")
    import tempfile

    from diffdiag.sources.logs import load_logs

    with tempfile.TemporaryDirectory() as d:
        p = write_csv(sc, Path(d) / "log.csv", lists=False)
        t0 = time.perf_counter()
        log = load_logs(p)
        print(f"load a {a.steps}-row CSV ({p.stat().st_size / 1e6:.0f} MB): {time.perf_counter() - t0:.2f} s, "
              f"{len(log.loss)} steps")
    print(f"target: <= 0.3 s for 1M steps with 0 false alarms -> {'MET' if t_ours <= 0.3 and fa_ours == 0 else 'NOT MET'}")


if __name__ == "__main__":
    main()
