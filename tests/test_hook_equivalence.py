"""The hook's live findings, its final diagnosis and ``diffdiag analyze`` on its log agree (issue 11).

Ground truth: a heavy-tailed per-step loss (log-normal, p99/median = 10, like a
diffusion model's loss over timesteps) with a corrupted batch at step 300 (the
loss 5000x its median), a jump to a higher level that stays from step 900
(x20: the run is broken, ``critical``; x5: ``warning`` — docs/CONTRACT.md §3
severity rules), a NaN at step 1200 and a gradient-norm spike at step 500.
Pure Python/numpy: no torch needed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from .conftest import validate_diagnosis
from diffdiag import DiagConfig, LossDiagnostics
from diffdiag.findings.loss import DIVERGENCE_CRITICAL_RATIO

N = 1500


def _stream(seed: int, jump: float) -> tuple[np.ndarray, np.ndarray, list[float | None]]:
    rng = np.random.default_rng(seed)
    loss = np.exp(rng.normal(math.log(0.08), math.log(10) / 2.326, N))
    loss[300] = np.median(loss) * 5000
    loss[900:] *= jump
    loss[1200] = float("nan")
    grad = np.exp(rng.normal(0.0, 0.1, N))
    grad[500] *= 50
    ema, e = [], None
    for v in loss:                       # the trainer's EMA skips the NaN step
        if math.isfinite(v):
            e = v if e is None else 0.98 * e + 0.02 * v
        ema.append(e)
    return loss, grad, ema


def _key(f: dict) -> tuple:
    loc = f["location"]
    return f["id"], loc.get("step", loc.get("start_step")), f["severity"]


class _Lines:
    """A callback that keeps what a live line would print."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, int, str]] = []

    def on_finding(self, finding, step):
        self.lines.append((finding.id, step, finding.severity))


@pytest.mark.parametrize("seed,jump,div_severity", [(0, 20.0, "critical"), (1, 20.0, "critical"),
                                                    (2, 5.0, "warning")])
def test_live_final_and_cli_findings_agree(tmp_path, run_cli, seed, jump, div_severity):
    loss, grad, ema = _stream(seed, jump)
    lines = _Lines()
    hook = LossDiagnostics(DiagConfig(report_dir=tmp_path / "rep", write_report=False, warn=False, trackers=()),
                           callbacks=[lines])
    for i in range(N):
        hook.log_step(i, float(loss[i]), ema[i], lr=1e-4, grad_norm=float(grad[i]))
    hook.finish()
    final = validate_diagnosis(tmp_path / "rep" / "diagnosis.json")
    code, _, err, cli = run_cli("analyze", "--logdir", str(tmp_path / "rep" / "hook_log.jsonl"),
                                "--report", str(tmp_path / "cli"), report=tmp_path / "cli")
    assert code == 0, err

    # 1. finish()'s diagnosis.json == diffdiag analyze on the log the hook wrote (ids, steps, severities,
    #    and the rest of each finding too: the log round-trips exactly)
    assert [_key(f) for f in final["findings"]] == [_key(f) for f in cli["findings"]]
    assert final["findings"] == cli["findings"]

    # 2. the injected events, at their steps, with the contract's severities
    report = {(f["id"], f["location"]["step"]): f for f in cli["findings"]}
    assert report[("loss_spike", 300)]["severity"] == "warning"
    assert report[("loss_nonfinite", 1200)]["severity"] == "critical"
    assert report[("grad_norm_spike", 500)]["severity"] == "warning"
    (div,) = [f for f in cli["findings"] if f["id"] == "loss_divergence"]
    assert 895 <= div["location"]["step"] <= 905 and div["severity"] == div_severity
    assert (div["evidence"]["jump_ratio"] >= DIVERGENCE_CRITICAL_RATIO) == (div_severity == "critical")

    # 3. every live finding is the report's finding of the same event, with the same severity and step
    live = final["outputs"]["live_findings"]
    assert [_key(f) for f in live] == lines.lines       # what the callback saw is what was recorded
    assert sorted({f["id"] for f in live}) == ["grad_norm_spike", "loss_divergence", "loss_nonfinite",
                                                 "loss_spike"]
    for f in live:
        fid, step, severity = _key(f)
        assert (fid, step) in report, f"live {fid} at step {step} is not in the report"
        assert report[(fid, step)]["severity"] == severity, (fid, step)
        assert f["evidence"]["live"] is True
    live_div = [f for f in live if f["id"] == "loss_divergence"][0]
    assert live_div["evidence"]["jump_ratio"] == pytest.approx(div["evidence"]["jump_ratio"])   # measured alike


def test_healthy_stream_is_quiet_live_and_in_the_report(tmp_path, run_cli):
    rng = np.random.default_rng(7)
    loss = np.exp(rng.normal(math.log(0.08), math.log(10) / 2.326, N))
    hook = LossDiagnostics(DiagConfig(report_dir=tmp_path / "rep", write_report=False, warn=False, trackers=()))
    for i, v in enumerate(loss):
        hook.log_step(i, float(v), lr=1e-4)
    diagnosis = hook.finish()
    assert hook.live_findings == []
    assert [f for f in diagnosis.findings if f.severity != "info"] == []
    code, _, err, cli = run_cli("analyze", "--logdir", str(tmp_path / "rep" / "hook_log.jsonl"),
                                "--report", str(tmp_path / "cli"), report=tmp_path / "cli")
    assert code == 0, err
    assert cli["findings"] == [f.to_dict() for f in diagnosis.findings]
