"""The in-training hook with scalars only (no model): live loss checks, config, robustness, finish().

The per-step losses are synthetic heavy-tailed streams (log-normal, p99/median
about 10 like a trained diffusion model's loss over timesteps) with injected
faults at known steps; the real training run is in ``test_training.py``.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from .conftest import validate_diagnosis
from diffdiag import DiagConfig, LossDiagnostics
from diffdiag.analyzers.streaming import RobustStream
from diffdiag.integrations.hook import DiagnosticWarning


def heavy_tailed(n: int, seed: int, median: float = 0.08) -> np.ndarray:
    """Log-normal per-step loss with p99/median = 10 (log-space sigma = ln 10 / 2.326)."""
    rng = np.random.default_rng(seed)
    return np.exp(rng.normal(math.log(median), math.log(10) / 2.326, n))


def _diag(tmp_path, **kw) -> LossDiagnostics:
    kw.setdefault("warn", False)
    kw.setdefault("write_report", False)
    kw.setdefault("trackers", ())
    return LossDiagnostics(DiagConfig(report_dir=tmp_path / "rep", **kw))


def test_streams_are_heavy_tailed_like_a_real_loss():
    x = heavy_tailed(5000, 0)
    assert 8 < np.percentile(x, 99) / np.median(x) < 12


@pytest.mark.parametrize("seed", range(6))
def test_healthy_stream_is_quiet(tmp_path, seed):
    d = _diag(tmp_path)
    n = [300, 1000, 3000][seed % 3]
    for i, v in enumerate(heavy_tailed(n, seed)):
        d.log_step(i, float(v), None)
    assert d.live_findings == []


@pytest.mark.parametrize("seed,pos,factor", [(0, 120, 60), (1, 700, 150), (2, 1900, 100), (3, 333, 500)])
def test_injected_spike_is_found_at_its_step(tmp_path, seed, pos, factor):
    x = heavy_tailed(2000, seed)
    x[pos] = np.median(x) * factor
    d = _diag(tmp_path)
    for i, v in enumerate(x):
        d.log_step(i, float(v), None)
    spikes = [f for f in d.live_findings if f.id == "loss_spike"]
    assert [f.location["step"] for f in spikes] == [pos]
    f = spikes[0]
    assert f.location["key"] == "loss"
    assert f.evidence["value"] == pytest.approx(x[pos])
    assert f.evidence["live"] is True
    assert f.evidence["ratio"] > 15


def test_floats_and_zero_d_tensors_give_the_same_findings(tmp_path):
    torch = pytest.importorskip("torch")
    x = heavy_tailed(800, 7)
    x[400] *= 300
    x[600] = float("nan")
    a, b = _diag(tmp_path / "a"), _diag(tmp_path / "b", sync_every=16)
    for i, v in enumerate(x):
        a.log_step(i, float(v), float(v) * 0.5)
        b.log_step(i, torch.tensor(v, dtype=torch.float32), torch.tensor(v * 0.5))
    # tensors are only read in chunks: nothing is checked before the chunk is full
    assert len(b.scalars.pending) == 800 % 16
    ra, rb = a.run_data(), b.run_data()
    assert [(f.id, f.location["step"]) for f in a.live_findings] == \
           [(f.id, f.location["step"]) for f in b.live_findings] == [("loss_spike", 400), ("loss_nonfinite", 600)]
    np.testing.assert_allclose(ra.log.loss.values, rb.log.loss.values, rtol=1e-6)
    np.testing.assert_allclose(ra.log.ema.values, rb.log.ema.values, rtol=1e-6)
    assert ra.log.loss.steps.tolist() == list(range(800))


def test_nonfinite_and_divergence(tmp_path):
    x = heavy_tailed(1200, 11)
    x[800:] *= 8.0          # the loss jumps to a higher level and stays there
    x[1100] = float("inf")
    d = _diag(tmp_path)
    for i, v in enumerate(x):
        d.log_step(i, float(v), None, lr=1e-4)
    ids = {f.id: f for f in d.live_findings}
    assert ids["loss_nonfinite"].severity == "critical"
    assert ids["loss_nonfinite"].location == {"step": 1100, "steps": [1100], "key": "loss"}
    div = ids["loss_divergence"]
    assert 795 <= div.location["step"] <= 830
    assert div.evidence["ratio"] > 3 and div.evidence["lr_at_step"] == 1e-4


def test_dict_config_and_config_objects():
    d = LossDiagnostics({"report_dir": "x", "diag_interval": 7, "spike_sigma": 4.0})
    assert d.config.diag_interval == 7 and d.monitor.loss.sigma == 4.0

    class TrainerConfig:           # a trainer's own config: the matching attributes are used
        diag_interval = 50
        learning_rate = 1e-4

    assert LossDiagnostics(TrainerConfig()).config.diag_interval == 50
    with pytest.raises(ValueError, match="diag_intervall"):
        LossDiagnostics({"diag_intervall": 5})
    with pytest.raises(ValueError):
        DiagConfig.from_any({"diag_interval": 0})


def test_callbacks_get_findings_and_a_failing_one_warns_once(tmp_path):
    got, finished = [], []

    class Good:
        def on_finding(self, finding, step):
            got.append((finding.id, step))

        def on_finish(self, diagnosis, report_dir):
            finished.append(report_dir)

    class Bad:
        def on_finding(self, finding, step):
            raise RuntimeError("tracker down")

    x = heavy_tailed(600, 3)
    x[200] *= 400
    x[400] *= 400
    d = _diag(tmp_path, callbacks=[Bad(), Good()])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for i, v in enumerate(x):
            d.log_step(i, float(v))
        d.finish()
    assert got == [("loss_spike", 200), ("loss_spike", 400)]
    assert finished == [tmp_path / "rep"]
    bad = [m for m in w if "Bad.on_finding failed" in str(m.message)]
    assert len(bad) == 1


def test_failing_captures_warn_once_and_training_continues(tmp_path):
    """An odd model (no UNet: a Linear layer, 2-D input) and an odd batch: one warning per capture."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    d = _diag(tmp_path, diag_interval=5)
    done = 0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for step in range(40):
            x = torch.randn(4, 8)
            loss = ((model(x) - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            d.log_step(step, loss.detach(), None, model=model, batch=object())
            done += 1
        diag = d.finish()
    assert done == 40
    msgs = [str(m.message) for m in w if issubclass(m.category, DiagnosticWarning)]
    for kind in ("latents", "attention", "batch"):
        assert sum(f"the {kind} capture" in m or (kind == "attention" and "no cross-attention" in m)
                   for m in msgs) == 1, (kind, msgs)
    assert diag is not None and len(d.run_data().log.loss) == 40
    assert model._forward_hooks == {} and model._forward_pre_hooks == {}


def test_finish_writes_a_schema_valid_diagnosis_and_a_log_the_cli_reads(tmp_path, run_cli):
    x = heavy_tailed(400, 5)
    x[250] *= 500
    d = _diag(tmp_path, write_report=True, run_name="unit")
    for i, v in enumerate(x):
        d.log_step(i, float(v), float(np.median(x)), lr=2e-4, grad_norm=1.0,
                   sample_ids=[f"s{i % 13}", f"s{(i + 5) % 13}"])
    diag = d.finish()
    assert d.finish() is diag                      # idempotent
    doc = validate_diagnosis(tmp_path / "rep" / "diagnosis.json")
    assert (tmp_path / "rep" / "report.html").exists()
    assert [f["location"]["step"] for f in doc["outputs"]["live_findings"]] == [250]
    assert doc["inputs"]["hook"]["steps"] == 400
    rows = [json.loads(line) for line in (tmp_path / "rep" / "hook_log.jsonl").read_text().splitlines()]
    assert len(rows) == 400 and rows[250]["loss"] == pytest.approx(x[250]) and rows[3]["sample_ids"] == ["s3", "s8"]
    code, out, err, cli_doc = run_cli("analyze", "--logdir", str(tmp_path / "rep" / "hook_log.jsonl"),
                                      "--report", str(tmp_path / "cli"), report=tmp_path / "cli")
    assert code == 0, err
    assert cli_doc["inputs"]["logdir"].endswith("hook_log.jsonl")


def test_robust_stream_is_constant_memory():
    s = RobustStream()
    x = heavy_tailed(5000, 1)
    s.update_many(range(5000), x)
    assert s._init == [] and s.n == 5000
    assert sorted(vars(s)) == sorted(vars(RobustStream()))   # no per-value state accumulates
    assert 0.1 * 0.08 < s.baseline < 10 * 0.08
