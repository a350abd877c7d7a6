"""The hook's parts, each alone: stream monitor, scalar record, callbacks (captures: test_training.py).

Streams are synthetic heavy-tailed losses (log-normal, p99/median = 10) with faults at known steps.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diffdiag.integrations.hook_callbacks import Callbacks
from diffdiag.integrations.hook_scalars import ScalarRecorder, to_floats, write_log
from diffdiag.integrations.hook_stream import StreamMonitor
from diffdiag.model import Finding


def _loss(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.exp(rng.normal(math.log(0.08), math.log(10) / 2.326, n))


def _feed(mon: StreamMonitor, x: np.ndarray) -> list[tuple[int, Finding]]:
    """(value index at which a finding came out, finding)."""
    out = [(i, f) for i, v in enumerate(x) for f in mon.update(i, float(v))]
    return out + [(len(x), f) for f in mon.finish()]


def test_monitor_spike_is_held_briefly_then_reported_at_its_step():
    x = _loss(600, 0)
    x[200] = np.median(x) * 1000
    got = _feed(StreamMonitor(sigma=3.0, context=lambda step: {"lr": 1e-4}), x)
    assert [(f.id, f.location["step"], f.severity) for _, f in got] == [("loss_spike", 200, "warning")]
    came_out, f = got[0]
    assert 200 < came_out <= 200 + 8 + 1               # held `hold` values: not a divergence's onset
    assert f.evidence["live"] is True and f.evidence["lr"] == 1e-4 and f.evidence["ratio"] > 300


def test_monitor_divergence_once_at_its_change_point_no_onset_spikes():
    x = _loss(1200, 1)
    x[700:] *= 20.0
    got = _feed(StreamMonitor(), x)
    assert [(f.id, f.severity) for _, f in got] == [("loss_divergence", "critical")]
    came_out, f = got[0]
    step = f.location["step"]
    assert abs(step - 700) <= 5                       # the CUSUM change point of noisy values
    assert came_out == step + 48 - 1                  # reported once 48 values from the change point are seen
    assert f.evidence["jump_ratio"] == pytest.approx(f.evidence["ratio"]) and 12 < f.evidence["jump_ratio"] < 30


def test_monitor_nonfinite_at_once_and_only_the_first():
    x = _loss(300, 2)
    x[[100, 150]] = [float("inf"), float("nan")]
    got = _feed(StreamMonitor(), x)
    assert [(i, f.id, f.location["steps"], f.severity) for i, f in got] == [(100, "loss_nonfinite", [100],
                                                                            "critical")]
    ev = got[0][1].evidence
    assert (ev["inf"], ev["nan"], ev["live"]) == (1, 0, True)


def test_monitor_grad_norm_spikes_only():
    rng = np.random.default_rng(3)
    g = np.exp(rng.normal(0.0, 0.1, 500))
    g[300] *= 40
    mon = StreamMonitor()
    got = [f for i, v in enumerate(g) for f in mon.update(i, 0.08, float(v))] + mon.finish()
    assert [(f.id, f.location) for f in got] == [("grad_norm_spike", {"step": 300, "key": "grad_norm"})]


def test_recorder_floats_tensors_and_the_log_round_trip(tmp_path):
    rec = ScalarRecorder(sync_every=4)
    rec.record(0, 0.5, 0.5, None)
    rec.scalar("lr", 0, 1e-4)
    rec.scalar("lr", 5, 2e-4)
    assert rec.value_at("lr", 4) == 1e-4 and rec.value_at("lr", 9) == 2e-4 and rec.value_at("lr", -1) is None
    full = [rec.defer(s, 0.1 * s, None, 2.0) for s in (1, 2, 3, 4)]
    assert full == [False, False, False, True] and len(rec.pending) == 4
    assert rec.drain() == [(s, pytest.approx(0.1 * s), None, 2.0) for s in (1, 2, 3, 4)] and rec.pending == []
    rec.record(5, float("nan"), None, None)
    rec.sample_ids[2] = ["a", "b"]
    rec.record_timesteps(2, [10, 900])
    log = rec.run_log()
    assert log.loss.steps.tolist() == [0, 1, 2, 3, 4, 5] and math.isnan(log.loss.values[-1])
    assert log.ema.steps.tolist() == [0] and log.lr_key == "lr" and log.grad_norm.steps.tolist() == [1, 2, 3, 4]
    write_log(tmp_path / "log.jsonl", log)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[2] == {"step": 2, "loss": pytest.approx(0.2), "grad_norm": 2.0, "sample_ids": ["a", "b"],
                       "timesteps": [10.0, 900.0]}
    assert rows[5] == {"step": 5, "loss": "nan", "lr": 2e-4}


def test_to_floats_reads_tensors_in_one_go():
    torch = pytest.importorskip("torch")
    vals = to_floats([0.5, None, torch.tensor(0.25), torch.tensor(2.0, dtype=torch.float64)])
    assert vals[0] == 0.5 and math.isnan(vals[1]) and vals[2:] == [0.25, 2.0]


def test_callbacks_order_errors_and_no_trackers():
    seen, warned = [], []

    class Rec:
        def __init__(self, name):
            self.name = name

        def on_finding(self, finding, step):
            seen.append((self.name, finding.id, step))

    class Bad:
        def on_finding(self, finding, step):
            raise RuntimeError("down")

        def on_finish(self, diagnosis, report_dir):
            raise RuntimeError("down")

    cbs = Callbacks([Rec("a"), Bad()], trackers=(), warn=lambda key, msg: warned.append(key))
    cbs.add(Rec("b"))
    with pytest.raises(TypeError):
        cbs.add(object())
    f = Finding("loss_spike", "warning", 0.5, "m", {"step": 3})
    cbs.finding(f, 3)
    cbs.finding(f, 4)
    cbs.finish(None, None)
    assert seen == [("a", "loss_spike", 3), ("b", "loss_spike", 3), ("a", "loss_spike", 4), ("b", "loss_spike", 4)]
    assert len(cbs.items) == 3                       # trackers=(): none added
    assert len(set(warned)) == 2 and len(warned) == 3  # one key per (method, callback)
