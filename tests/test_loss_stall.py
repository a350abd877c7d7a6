"""A loss that never leaves its start level: a stall on a long run, a note on a short fine-tune."""

from __future__ import annotations

import numpy as np

from benchmarks.scenarios.loss_logs import healthy
from diffdiag.checks.loss import FLAT_RUN_WARNING_STEPS, check_loss
from diffdiag.model import RunData, RunLog, Series, Settings


def _run(loss: np.ndarray) -> RunData:
    steps = np.arange(loss.size)
    return RunData(log=RunLog(scalars={"loss": Series("loss", steps, loss)}, loss_key="loss"))


def test_short_flat_lora_runs_are_not_warnings() -> None:
    for seed in range(12):
        sc = healthy(2000, seed, shape="lora")
        found = check_loss(_run(sc.loss), Settings()).findings
        assert not [f for f in found if f.severity != "info"], (seed, [f.message for f in found])


def test_long_run_that_never_moves_is_a_stall_warning() -> None:
    rng = np.random.default_rng(5)
    n = 4 * FLAT_RUN_WARNING_STEPS
    t = rng.uniform(0, 1, n)
    loss = 0.15 * np.exp(2.3 * (1 - t) ** 3) * np.exp(rng.normal(0, 0.3, n))  # heavy-tailed, level constant
    found = [f for f in check_loss(_run(loss), Settings()).findings if f.id == "loss_plateau"]
    assert len(found) == 1 and found[0].severity == "warning"
    assert found[0].evidence["kind"] == "flat_run"
    assert found[0].location["start_step"] <= n * 0.05 and found[0].location["end_step"] >= n * 0.95
