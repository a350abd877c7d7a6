"""`diffdiag analyze --logdir` end to end on labelled logs; every diagnosis.json is schema-validated."""

from __future__ import annotations

from benchmarks.scenarios import loss_logs as S


def test_cli_healthy_csv_no_findings(run_cli, tmp_path):
    p = S.write_csv(S.healthy(20000, 21, batch_size=2, shape="power"), tmp_path / "log.csv")
    code, out, err, diag = run_cli("analyze", "--logdir", str(p), "--no-progress", "--fail-on", "warning")
    assert code == 0, err
    assert [f for f in diag["findings"] if f["severity"] != "info"] == []


def test_cli_spikes_jsonl_fail_on(run_cli, tmp_path):
    sc = S.injected_spikes(20000, 8, batch_size=2)
    p = S.write_jsonl(sc, tmp_path / "log.jsonl")
    code, out, err, diag = run_cli("analyze", "--logdir", str(p), "--no-progress", "--fail-on", "warning",
                                   "--format", "json")
    assert code == 1
    steps = sorted(f["location"]["step"] for f in diag["findings"] if f["id"] == "loss_spike")
    assert len(steps) == len(sc.truth["loss_spike"])
    assert all(abs(a - b) <= 2 for a, b in zip(steps, sc.truth["loss_spike"]))
    assert any(c["symptom"] == "loss_spikes" for c in diag["causes"]) or diag["causes"] == []


def test_cli_stale_ema_tensorboard_with_key_flags(run_cli, tmp_path):
    sc = S.stale_ema(20000, 4, restore_at=0.5, keyset="plain")
    sc.keys = {"loss": "custom/raw", "ema": "custom/smoothed", "lr": "opt/step_size", "grad_norm": "gn"}
    d = S.write_tensorboard(sc, tmp_path / "tb")
    code, out, err, diag = run_cli("analyze", "--logdir", str(d), "--no-progress", "--loss-key", "custom/raw",
                                   "--ema-key", "custom/smoothed", "--lr-key", "opt/step_size")
    assert code == 0, err
    ema = [f for f in diag["findings"] if f["id"] == "ema_divergence"]
    assert len(ema) == 1 and ema[0]["location"]["key"] == "custom/smoothed"
    assert abs(ema[0]["location"]["start_step"] - sc.truth["ema_divergence"][0][0]) <= 5


def test_cli_nonfinite_and_shelf_csv(run_cli, tmp_path):
    sc = S.shelf(20000, 5, start=0.0)
    sc.loss[[5000, 9000]] = float("nan")
    p = S.write_csv(sc, tmp_path / "log.csv")
    code, out, err, diag = run_cli("analyze", "--logdir", str(p), "--no-progress", "--fail-on", "critical")
    assert code == 1
    nf = [f for f in diag["findings"] if f["id"] == "loss_nonfinite"]
    assert nf[0]["location"]["steps"] == [5000, 9000] and nf[0]["severity"] == "critical"
    pl = [f for f in diag["findings"] if f["id"] == "loss_plateau"]
    assert len(pl) == 1 and pl[0]["location"]["start_step"] <= 1000  # tolerance: 5% of the run
