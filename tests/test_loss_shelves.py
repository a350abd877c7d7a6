"""Shelves anywhere in the run (from step 0, mid-run, short and noisy runs) and logs too short to judge.

Ground truth: ``benchmarks.scenarios.loss_logs.shelf`` (a flat shelf, then a drop to the
run's own decay) and healthy runs of every shape; ``detect_plateaus`` must find the shelf
where it is and nothing on a healthy (convex) decay.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.scenarios import loss_logs as LL
from diffdiag.analyzers.loss_levels import detect_plateaus


def _overlap(p, s0, s1) -> float:
    return (min(p.end, s1) - max(p.start, s0)) / (s1 - s0)


@pytest.mark.parametrize("n,start,length,drop,batch", [
    (2000, 0.0, 0.2, 2.0, 1),     # a short run, shelf from step 0 (blocks of 7 steps: noisy)
    (2000, 0.3, 0.25, 2.5, 4),
    (8000, 0.0, 0.1, 1.5, 1),
    (8000, 0.2, 0.15, 1.5, 4),    # mid-run at 1.5x: missed before the kink test (drop >= 12 se of one block)
    (20000, 0.0, 0.05, 2.0, 1),   # 1000 steps long, from step 0
    (20000, 0.4, 0.2, 1.35, 1)])
def test_shelf_found_where_it_is(n, start, length, drop, batch):
    sc = LL.shelf(n, 11, start=start, length=length, drop=drop, batch_size=batch)
    (s0, s1), = sc.truth["loss_plateau"]
    shelves = [p for p in detect_plateaus(sc.loss) if p.kind == "shelf"]
    assert len(shelves) == 1
    p = shelves[0]
    assert _overlap(p, s0, s1) >= 0.6  # (the start of a shelf reached by a slow decay is blurred by noise)
    assert abs(p.end - s1) <= max(50, n // 50)
    if start == 0.0:
        assert p.start <= n // 100
    assert p.ratio > 0.8 * drop


@pytest.mark.parametrize("shape", ["exp", "power", "lora"])
@pytest.mark.parametrize("n,batch,noise", [(500, 1, 0.15), (2000, 4, 0.4), (6000, 1, 0.05), (40000, 4, 0.4),
                                           (40000, 1, 0.15)])
def test_healthy_decay_is_no_shelf(shape, n, batch, noise):
    sc = LL.healthy(n, 17, batch_size=batch, shape=shape, noise_sigma=noise)
    assert [p for p in detect_plateaus(sc.loss) if p.kind == "shelf"] == []


def test_a_steep_smooth_start_is_no_shelf():
    # an exponential start (convex: it falls fastest first) with little noise, then a floor
    s = np.arange(5000.0)
    loss = 0.1 * (0.4 + 0.6 * np.exp(-s / 300)) * np.exp(np.random.default_rng(0).normal(0, 0.05, s.size))
    assert detect_plateaus(loss) == []


# --------------------------------------------------------------------------- too short to judge

def test_three_row_csv_says_it_cannot_be_judged(run_cli, tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("step,loss\n0,0.5\n1,0.4\n2,0.45\n")
    code, out, err, diag = run_cli("analyze", "--logdir", str(p))
    assert code == 0, err
    note = "loss 'loss': too short to judge: 3 finite points, need >= 50 (only non-finite values were looked for)"
    assert diag["outputs"]["warnings"] == [note]
    assert note in " ".join(out.split()) and "No problems found" not in out
    assert "cannot judge" in out.lower()


def test_short_log_still_reports_what_it_sees_with_the_note():
    from diffdiag.model import RunData, Series, Settings
    from diffdiag.pipeline import analyze
    from diffdiag.sources.logs import build_runlog

    def diag_of(values):
        steps = np.arange(len(values))
        return analyze(RunData(log=build_runlog({"loss": Series("loss", steps, values)})), Settings())

    rng = np.random.default_rng(4)
    x = 0.1 * np.exp(rng.normal(0, 0.1, 30))
    x[12] = np.nan
    d = diag_of(x)
    assert [f.id for f in d.findings] == ["loss_nonfinite"] and d.verdict().id == "critical"
    assert d.warnings == ["loss 'loss': too short to judge: 29 finite points, need >= 50 (what could be seen is "
                          "reported; shelves, divergence and spikes need a longer log)"]
    assert diag_of(0.1 * np.exp(rng.normal(0, 0.1, 49))).verdict().id == "cannot_judge"
    ok = diag_of(0.1 * np.exp(rng.normal(0, 0.1, 50)))
    assert ok.warnings == [] and ok.verdict().id == "ok"
