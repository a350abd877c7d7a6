"""Healthy runs that used to raise warnings (found by the healthy-loss sweep), and the faults next to them
that must still be found: a naturally hard image is no corrupted sample, and a logged EMA whose decay is
long against a short run is compared with its own decay."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.scenarios import loss_logs as LL
from benchmarks.sensitivity import loss_run
from diffdiag.checks.loss import check_loss
from diffdiag.model import Settings


def _ids(sc: LL.LossScenario, fid: str) -> list:
    return [f for f in check_loss(loss_run(sc), Settings()).findings if f.id == fid and f.severity != "info"]


def test_a_naturally_hard_image_is_no_corrupted_sample() -> None:
    # seed 100011: image 282's difficulty is 3.7 sd above the set's (2.5x the median image), batch 4
    b = LL._base(3000, 100011, batch_size=4)
    assert np.log(b["difficulty"][282]) - np.log(b["difficulty"]).mean() > 3.5 * np.log(b["difficulty"]).std()
    assert _ids(LL.healthy(3000, 100011, batch_size=4), "loss_sample_correlation") == []
    # seed 100002, no timesteps: image 162 (1.9x the median image) in 200 steps of 20000
    assert _ids(LL.healthy(20000, 100002, batch_size=4, shape="lora", with_timesteps=False),
                "loss_sample_correlation") == []


@pytest.mark.parametrize("factor", [8.0, 40.0])
def test_corrupted_samples_are_still_named(factor: float) -> None:
    sc = LL.corrupted_samples(3000, 11, n_bad=2, factor=(factor / 4, factor / 4), batch_size=4)
    found = _ids(sc, "loss_sample_correlation")
    assert len(found) == 1 and set(found[0].location["sample_ids"]) == set(sc.truth["loss_sample_correlation"])


@pytest.mark.parametrize("seed,batch", [(100028, 1), (100047, 4)])
def test_short_run_with_a_long_ema_raises_nothing(seed: int, batch: int) -> None:
    # decay 0.99 (span 199) over 300 steps: longer than the smoothing grid (a third of the run) goes
    assert _ids(LL.healthy(300, seed, batch_size=batch), "ema_divergence") == []


def test_a_stale_ema_on_a_short_run_is_still_found() -> None:
    b = LL._base(600, 3, ema_decay=0.99)
    ps = LL._per_sample(b)
    loss = b["level"] * ps.mean(axis=1)
    ema = LL._ema(loss, 0.99)
    ema[300:] = LL._ema(loss[300:], 0.99, init=float(ema[300]) * 2.0)   # restored from a stale value
    found = _ids(LL._finish("ema", b, ps, ema=ema), "ema_divergence")
    assert len(found) == 1 and abs(found[0].location["start_step"] - 300) <= 5
