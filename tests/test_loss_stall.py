"""A loss that never leaves its start level: a stall when something else shows the weights were not
trained (LR 0, gradient norm 0, one exact loss value repeated), else a note — a healthy LoRA fine-tune's
loss drops a little early and then barely moves, on any run length."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.scenarios.loss_logs import healthy
from diffdiag.checks.loss import check_loss
from diffdiag.model import RunData, RunLog, Series, Settings

N = 6000


def _run(loss: np.ndarray, **other: np.ndarray) -> RunData:
    steps = np.arange(loss.size)
    scalars = {"loss": Series("loss", steps, loss)}
    scalars.update({k: Series(k, steps, v) for k, v in other.items()})
    return RunData(log=RunLog(scalars=scalars, loss_key="loss", lr_key="lr" if "lr" in other else None,
                              grad_norm_key="grad_norm" if "grad_norm" in other else None))


def _never_moves(n: int = N, seed: int = 5) -> np.ndarray:
    """Heavy-tailed diffusion-like loss whose level is constant from step 0 (no drop at all)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    return 0.15 * np.exp(2.3 * (1 - t) ** 3) * np.exp(rng.normal(0, 0.3, n))


def _plateaus(run: RunData) -> list:
    return [f for f in check_loss(run, Settings()).findings if f.id == "loss_plateau"]


@pytest.mark.parametrize("seed", [1953, 0, 1, 2, 3, 4])
def test_healthy_flat_lora_runs_raise_nothing_at_warning(seed: int) -> None:
    # seed 1953 is the reported case: a 6000-step LoRA run that drops ~9 % early, then stays flat
    sc = healthy(N, seed, shape="lora")
    run = _run(sc.loss, lr=sc.lr, grad_norm=sc.grad_norm)
    found = check_loss(run, Settings()).findings
    assert not [f for f in found if f.severity != "info"], (seed, [f.message for f in found])


def test_flat_loss_alone_is_a_note_not_a_stall() -> None:
    found = _plateaus(_run(_never_moves()))
    assert len(found) == 1 and found[0].severity == "info"
    assert found[0].evidence["kind"] == "flat_run" and found[0].evidence["stall_evidence"] == []


@pytest.mark.parametrize("reason", ["lr_zero", "grad_norm_zero"])
def test_flat_loss_with_lr_or_grad_norm_zero_is_a_stall_warning(reason: str) -> None:
    loss = _never_moves()
    lr = np.full(N, 0.0 if reason == "lr_zero" else 1e-4)
    grad = np.full(N, 0.0) if reason == "grad_norm_zero" else np.full(N, 0.5)
    found = _plateaus(_run(loss, lr=lr, grad_norm=grad))
    assert len(found) == 1 and found[0].severity == "warning"
    assert found[0].evidence["kind"] == "flat_run" and found[0].evidence["stall_evidence"] == [reason]
    assert found[0].location["start_step"] <= N * 0.05 and found[0].location["end_step"] >= N * 0.95
    assert "stalled" in found[0].message


def test_a_loss_repeating_one_value_is_a_stall_warning() -> None:
    loss = np.full(N, 0.1234)
    loss[::7] = 0.2                                   # a few other values: still one value repeated
    found = _plateaus(_run(loss, lr=np.full(N, 1e-4)))
    assert len(found) == 1 and found[0].severity == "warning"
    assert found[0].evidence["stall_evidence"] == ["loss_constant"]


def test_lr_zero_outside_the_flat_span_is_no_stall_evidence() -> None:
    # LR 0 only at the first step (a warm-up from 0): the weights were trained over the flat span
    lr = np.full(N, 1e-4)
    lr[0] = 0.0
    found = _plateaus(_run(_never_moves(), lr=lr))
    assert len(found) == 1 and found[0].severity == "info"
