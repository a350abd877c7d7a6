"""Smoke test of ``benchmarks/sensitivity.py``: a few draws of two detectors, in process.

Checks the table's shape (one row per curve, the 50 % / 90 % columns, the false-alarm
column), that false alarms are counted on the healthy inputs of the detector's kind
(a healthy set swapped for faulty inputs must show up as false alarms), and the outputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import sensitivity as S


def _small(**kw):
    return S.run(only=["loss_spike", "crop_offset"], draws_scale=0.05, healthy_scale=0.02, workers=1,
                 values_stride=4, progress=False, **kw)


@pytest.fixture(scope="module")
def result():
    return _small()


def test_table_has_a_row_per_curve_with_thresholds_and_false_alarms(result):
    curves, _ = S.prepare(["loss_spike", "crop_offset"], 0.02, 4)
    assert [(r["detector"], r["variant"]) for r in result["rows"]] == [(c.detector, c.name) for c in curves]
    for r in result["rows"]:
        assert len(r["rate"]) == len(r["values"]) == len(r["trials"])
        assert all(t > 0 for t in r["trials"]) and all(0.0 <= x <= 1.0 for x in r["rate"])
        for q in ("at_50", "at_90"):
            assert isinstance(r[q], str) if r["kind"] == "coverage" else r[q]["op"] in ("<=", "=", ">")
    fa = result["false_alarms"]
    assert set(fa) == {"loss_spike", "crop_offset"}
    # counted over the healthy inputs of the detector's own kind, nothing else
    assert fa["loss_spike"]["n"] == 8 and fa["loss_spike"]["domain"] == "loss"
    assert fa["crop_offset"]["n"] == 6 + 2 and fa["crop_offset"]["domain"] == "images"
    md = S.table_markdown(result).splitlines()
    assert md[0].startswith("| detector | variant | effect size (unit) | 50 % | 90 % | false alarms")
    assert len(md) == 2 + len(result["rows"])
    # big spikes with logged timesteps are found; a 0.25 px crop shift is below what is reported
    spikes = next(r for r in result["rows"] if r["variant"].startswith("batch 1, timesteps logged, 1 step"))
    assert spikes["rate"][-1] == 1.0
    crop = next(r for r in result["rows"] if r["detector"] == "crop_offset")
    assert crop["values"][0] == 0.25 and crop["rate"][0] == 0.0 and crop["rate"][-1] == 1.0


def test_false_alarms_come_from_the_healthy_inputs(monkeypatch):
    def shifted_pair(i):  # a "healthy" pair that is really shifted by 3 px
        return S._crop_shift(3.0, np.random.default_rng(i))[0]

    monkeypatch.setattr(S, "healthy_pair", shifted_pair)
    res = S.run(only=["crop_offset"], draws_scale=0.05, healthy_scale=0.02, workers=1, values_stride=8,
                progress=False)
    fa = res["false_alarms"]["crop_offset"]
    pairs = fa["per_set"][next(k for k in fa["per_set"] if "clean pairs" in k)]
    assert pairs["n"] == 6 and pairs["alarms"] >= 4  # (a tiled photo's 3 px offset is ambiguous: not reported)
    assert fa["alarms"] == sum(v["alarms"] for v in fa["per_set"].values()) and fa["rate"] > 0.5


def test_threshold_interpolation():
    assert S._interp_threshold([1, 2, 4], [0.0, 0.4, 1.0], 0.5, False) == ("=", pytest.approx(2 + 2 / 6))
    assert S._interp_threshold([1, 2, 4], [0.0, 0.4, 1.0], 0.5, True)[1] == pytest.approx(2 * 2 ** (1 / 6))
    assert S._interp_threshold([1, 2, 4], [0.6, 0.8, 1.0], 0.5, False) == ("<=", 1.0)
    assert S._interp_threshold([1, 2, 4], [0.0, 0.1, 0.2], 0.9, False) == (">", 4.0)
    assert S._coverage([2, 3, 4, 5], [0.0, 1.0, 1.0, 0.4], 0.9) == "3, 4"


def test_outputs_written(result, tmp_path):
    plots = S.write_outputs(result, tmp_path, tmp_path / "docs", "test")
    assert sorted(p.name for p in plots) == ["crop_offset.png", "loss_spike.png"]
    assert all(p.stat().st_size > 5000 for p in plots)
    data = json.loads((tmp_path / "sensitivity.json").read_text())
    assert len(data["rows"]) == len(result["rows"])
    page = (tmp_path / "docs" / "README.md").read_text()
    assert "![loss_spike](loss_spike.png)" in page and "| `crop_offset` |" in page
