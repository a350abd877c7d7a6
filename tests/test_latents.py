"""Latent loading and latent analyzers on labelled cases.

Real VAE latents cannot be produced without a trained VAE, so the cases are
VAE-like latents built from real photos (``benchmarks.scenarios.latents``:
crops of scikit-image photos reduced 8x into cell features mixed into 4
channels by a fixed random map) with controlled faults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.scenarios.latents import (drift_latents, healthy_latents, periodic_latents, shifted_latents,
                                          write_latent_case)
from diffdiag.analyzers.latents import (batch_shift, channel_stats, drift_over_files, latent_periodicity,
                                        stats_drift)
from diffdiag.errors import InputError
from diffdiag.model import RunData
from diffdiag.sources.latents import load_latents, step_from_name


def _names(files):
    return sorted(Path(f).name for f in files)


# --------------------------------------------------------------------------- loader

@pytest.mark.parametrize("fmt", ["npy", "npz", "safetensors", "pt"])
def test_load_formats_round_trip(tmp_path, fmt):
    case = healthy_latents(seed=3, n_files=3, batch=2, size=16)
    write_latent_case(case, tmp_path, fmt)
    run = RunData()
    files = load_latents(tmp_path, run)
    assert [f.step for f in files] == [100, 200, 300]
    for lf, name in zip(files, sorted(case.files)):
        np.testing.assert_allclose(lf.arrays["latents"], case.files[name], rtol=0, atol=1e-6)
        assert lf.arrays["latents"].dtype == np.float32
    assert run.warnings == []


def test_pre_post_aliases_and_rank3(tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "a_step_7.npz", noisy_latents=x, model_pred=x * 2)
    np.savez(tmp_path / "b-0012.npz", input=x, output=x)
    np.save(tmp_path / "single_99.npy", x)
    files = load_latents(tmp_path, RunData())
    by = {Path(f.path).name: f for f in files}
    assert set(by["a_step_7.npz"].arrays) == {"pre", "post"}
    assert by["a_step_7.npz"].arrays["pre"].shape == (1, 4, 8, 8)
    assert set(by["b-0012.npz"].arrays) == {"pre", "post"}
    assert by["single_99.npy"].arrays["latents"].shape == (1, 4, 8, 8)
    assert [f.step for f in files] == [7, 12, 99]
    assert step_from_name("run3_latents_step00420.pt") == 420
    assert step_from_name("latents.npy") is None


def test_bad_files_are_reported_and_the_rest_loads(tmp_path):
    good = np.random.default_rng(1).normal(size=(2, 4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "lat_1.npy", good)
    nan = good.copy()
    nan[0, 1, 2, 3] = np.nan
    np.save(tmp_path / "lat_2.npy", nan)
    np.save(tmp_path / "lat_3.npy", np.zeros((8, 8), np.float32))          # wrong rank
    (tmp_path / "lat_4.npy").write_bytes(b"\x93NUMPY garbage")               # unreadable
    (tmp_path / "lat_5.safetensors").write_bytes(b"\x00" * 5)                # unreadable
    np.savez(tmp_path / "lat_6.npz", foo=good, bar=good)                     # unknown names
    run = RunData()
    files = load_latents(tmp_path, run)
    assert [f.step for f in files] == [1, 2]
    notes = "\n".join(run.warnings)
    assert "lat_2.npy" in notes and "non-finite" in notes  # NaN is data: a note, not an error
    # each bad file: one input-error line naming it (the CLI exits 2 after analysing the rest)
    errors = {Path(e.split(":")[0]).name: e for e in run.input_errors}
    assert sorted(errors) == ["lat_3.npy", "lat_4.npy", "lat_5.safetensors", "lat_6.npz"], run.input_errors
    assert "[B, C, H, W]" in errors["lat_3.npy"] and "not a NumPy .npy file" in errors["lat_4.npy"]
    assert "pre" in errors["lat_6.npz"]
    assert np.isnan(files[1].arrays["latents"]).sum() == 1  # NaN is data, kept


def test_nothing_loadable_is_an_input_error(tmp_path):
    (tmp_path / "x_1.npy").write_bytes(b"nope")
    run = RunData()
    assert load_latents(tmp_path, run) == [] and len(run.input_errors) == 1
    assert run.input_errors[0].startswith(str(tmp_path / "x_1.npy") + ": ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no latent files"):
        load_latents(tmp_path / "empty", RunData())


# --------------------------------------------------------------------------- analyzers

def test_channel_stats_ignore_nonfinite():
    x = np.ones((2, 3, 4, 4), np.float32)
    x[0, 1, 0, 0] = np.inf
    x[1, 2] = np.nan
    s = channel_stats(x)
    assert s["nonfinite"].tolist() == [0, 1, 16]
    assert s["mean"][0] == 1.0 and s["mean"][1] == 1.0 and s["mean"][2] == 1.0


@pytest.mark.parametrize("seed", [0, 5, 11])
def test_batch_shift_finds_the_shifted_file_and_channels(seed):
    case = shifted_latents(seed)
    names = sorted(case.files)
    res = batch_shift([case.files[n] for n in names])
    fi, ci = np.nonzero(res.shifted)
    assert sorted({names[i] for i in fi}) == case.truth[0]["location"]["files"]
    assert sorted(set(ci.tolist())) == case.truth[0]["location"]["channels"]
    assert res.method == "permutation"


def test_batch_shift_two_files_and_rescaled_channel():
    case = shifted_latents(4, n_files=10, n_shifted=2, channels=(2,), shift=-2.0)
    names = sorted(case.files)
    res = batch_shift([case.files[n] for n in names])
    fi, ci = np.nonzero(res.shifted)
    assert sorted({names[i] for i in fi}) == case.truth[0]["location"]["files"]
    assert set(ci.tolist()) == {2}


@pytest.mark.parametrize("seed", [1, 8])
def test_batch_shift_quiet_on_healthy_batches(seed):
    case = healthy_latents(seed, n_files=8)
    res = batch_shift([case.files[n] for n in sorted(case.files)])
    assert not res.shifted.any()
    assert (res.threshold >= 0.25).all()


def test_batch_shift_single_sample_files_is_not_testable():
    case = shifted_latents(2, n_files=9, batch=1, channels=(0,), shift=3.0)
    res = batch_shift([case.files[n] for n in sorted(case.files)])
    assert res.method == "none"
    assert not res.shifted.any()
    assert res.distance.shape == (9, 4)


@pytest.mark.parametrize("mode,seed,affected", [("scale", 0, 2), ("shift", 3, 1), ("collapse", 7, 6),
                                                 ("explode", 9, 6), ("shift", 2, 6)])
def test_stats_drift_exact_files_and_channels(mode, seed, affected):
    case = drift_latents(seed, mode=mode, files_affected=affected)
    truth = case.truth[0]["location"]
    names = list(case.files)
    results = drift_over_files([(case.files[n]["pre"], case.files[n]["post"]) for n in names])
    for name, d in zip(names, results):
        assert d.channels == (truth["channels"] if name in truth["files"] else []), name


@pytest.mark.parametrize("seed", [4, 13])
def test_stats_drift_quiet_on_healthy_eps_prediction(seed):
    from benchmarks.scenarios.latents import _pre_post, vae_like_latents

    rng = np.random.default_rng(seed)
    # latents at a small scale (x0 std ~0.3, as in tiny test models): at small timesteps the
    # epsilon prediction is several times the input's spread, and that is healthy
    pairs = []
    for _ in range(6):
        arrs = _pre_post(rng, 0.3 * vae_like_latents(rng, 2, 32))
        pairs.append((arrs["pre"], arrs["post"]))
    assert all(d.channels == [] for d in drift_over_files(pairs))


def test_stats_drift_nonfinite_prediction():
    case = healthy_latents(2, n_files=1, pre_post=True)
    arrs = next(iter(case.files.values()))
    post = arrs["post"].copy()
    post[0, 3, :4] = np.nan
    d = stats_drift(arrs["pre"], post)
    assert d.channels == [3]
    assert d.nonfinite_post.tolist() == [0, 0, 0, 4 * post.shape[3]]


@pytest.mark.parametrize("period,axis,channel,affected,size", [
    (5, "vertical", 1, None, 64), (7, "horizontal", 3, None, 64), (3, "horizontal", 0, 1, 32),
    (11, "vertical", 2, 2, 64), (3, "vertical", 0, None, 32), (6, "horizontal", 2, 1, 64)])
def test_latent_periodicity_exact(period, axis, channel, affected, size):
    case = periodic_latents(seed=period * 7 + channel, period=period, axis=axis, channel=channel,
                            n_files=5, size=size, files_affected=affected)
    names = sorted(case.files)
    hits = latent_periodicity([case.files[n] for n in names])
    assert [(h.channel, h.axis, h.period) for h in hits] == [(channel, axis, period)]
    assert [names[i] for i in hits[0].files] == case.truth[0]["location"]["files"]
    assert hits[0].banded


@pytest.mark.parametrize("seed,size", [(0, 32), (3, 64), (9, 48)])
def test_latent_periodicity_quiet_on_healthy(seed, size):
    case = healthy_latents(seed, n_files=5, size=size)
    assert latent_periodicity([case.files[n] for n in sorted(case.files)]) == []


def test_latent_grid_is_periodicity_without_stripes():
    case = healthy_latents(5, n_files=4, size=48)
    yy, xx = np.mgrid[0:48, 0:48]
    grid = np.sign(np.sin(2 * np.pi * xx / 6 + 0.3) * np.sin(2 * np.pi * yy / 6 + 0.3)).astype(np.float32)
    arrays = [case.files[n] + 1.2 * grid[None, None] * np.array([0, 1, 0, 0], np.float32)[None, :, None, None]
              for n in sorted(case.files)]
    hits = latent_periodicity(arrays)
    assert {(h.channel, h.period, h.banded) for h in hits} == {(1, 6, False)}
    assert {h.axis for h in hits} == {"vertical", "horizontal"}


# --------------------------------------------------------------------------- CLI end to end

def test_cli_latents_shift_and_bad_files(run_cli, tmp_path):
    case = shifted_latents(6)
    folder = write_latent_case(case, tmp_path / "lat", "safetensors")
    (folder / "latents_step000950.safetensors").write_bytes(b"garbage")
    np.save(folder / "latents_step000990.npy", np.zeros((3, 3), np.float32))
    code, out, err, diag = run_cli("analyze", "--latents", str(folder))
    assert code == 2, err  # two bad files: one line each, the rest analysed
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "latents_step000950.safetensors" in lines[0] and "latents_step000990.npy" in lines[1]
    shifts = [f for f in diag["findings"] if f["id"] == "latent_batch_shift"]
    assert len(shifts) == 1
    assert _names(shifts[0]["location"]["files"]) == [Path(case.truth[0]["location"]["files"][0]).stem
                                                      + ".safetensors"]
    assert shifts[0]["location"]["channels"] == case.truth[0]["location"]["channels"]
    assert shifts[0]["evidence"]["method"] == "permutation"
    assert "latents_step000950.safetensors" in out and "latents_step000990.npy" in out
    assert "Traceback" not in err
    others = [f for f in diag["findings"] if f["severity"] != "info" and f["id"] != "latent_batch_shift"]
    assert others == []


def test_cli_periodic_latents_give_stripes_in_pixels(run_cli, tmp_path):
    case = periodic_latents(seed=4, period=5, axis="horizontal", channel=2, size=64, n_files=4)
    folder = write_latent_case(case, tmp_path / "lat", "npz")
    code, out, err, diag = run_cli("analyze", "--latents", str(folder), "--vae-scale", "8")
    assert code == 0, err
    per = [f for f in diag["findings"] if f["id"] == "latent_periodicity"]
    assert [(f["location"]["axis"], f["location"]["period"], f["location"]["channel"]) for f in per] == [
        ("horizontal", 5, 2)]
    stripes = [f for f in diag["findings"] if f["id"] == "stripes"]
    assert len(stripes) == 1
    loc = stripes[0]["location"]
    assert loc["axis"] == "horizontal" and loc["period_px"] == 40 and loc["bbox"] == [0, 0, 512, 512]
    assert Path(loc["latents"]).name.startswith("latents_step")


def test_cli_drift_and_nan_prediction(run_cli, tmp_path):
    case = drift_latents(2, mode="scale", files_affected=1, channels=(1,))
    folder = write_latent_case(case, tmp_path / "lat", "pt")
    name = sorted(case.files)[0]
    arrs = case.files[name]
    arrs["post"][:, 0, 0, 0] = np.nan
    np.savez(folder / (Path(name).stem + ".npz"), **arrs)
    (folder / (Path(name).stem + ".pt")).unlink()
    code, out, err, diag = run_cli("analyze", "--latents", str(folder))
    assert code == 0, err
    drift = [f for f in diag["findings"] if f["id"] == "latent_stats_drift"]
    assert len(drift) == 1
    assert drift[0]["severity"] == "critical"
    assert _names(drift[0]["location"]["files"]) == sorted(
        [Path(name).stem + ".npz", Path(case.truth[0]["location"]["files"][0]).stem + ".pt"])
    assert drift[0]["location"]["channels"] == [0, 1]


def test_cli_healthy_latents_no_warning(run_cli, tmp_path):
    folder = write_latent_case(healthy_latents(12, n_files=6, size=48, pre_post=True), tmp_path / "lat", "npz")
    code, out, err, diag = run_cli("analyze", "--latents", str(folder), "--fail-on", "warning")
    assert code == 0, (out, err)
    assert [f for f in diag["findings"] if f["severity"] != "info"] == []


@pytest.mark.parametrize("seed,axis,channel,size", [(0, "vertical", 0, 32), (1, "horizontal", 1, 32),
                                                     (2, "vertical", 2, 64), (3, "horizontal", 3, 64)])
def test_aperiodic_latent_banding(seed, axis, channel, size):
    from benchmarks.scenarios.latents import banded_latents
    from diffdiag.analyzers.latents import latent_stripes

    case = banded_latents(seed, axis=axis, channel=channel, size=size)
    hits = latent_stripes([case.files[n] for n in sorted(case.files)])
    assert [(h.channel, h.stripe.axis, h.stripe.period_px) for h in hits] == [(channel, axis, None)]
    assert hits[0].stripe.bbox == pytest.approx(case.truth[0]["evidence"]["bbox_cells"], abs=2)


def test_cli_banded_latents_stripes_bbox_in_pixels(run_cli, tmp_path):
    from benchmarks.scenarios.latents import banded_latents

    case = banded_latents(7, axis="vertical", channel=1, size=32)
    folder = write_latent_case(case, tmp_path / "lat", "npy")
    code, out, err, diag = run_cli("analyze", "--latents", str(folder), "--vae-scale", "8")
    assert code == 0, err
    stripes = [f for f in diag["findings"] if f["id"] == "stripes"]
    assert len(stripes) == 1
    loc = stripes[0]["location"]
    assert loc["axis"] == "vertical" and loc["period_px"] is None
    assert loc["bbox"] == pytest.approx([8 * v for v in case.truth[0]["evidence"]["bbox_cells"]], abs=16)
    assert [f for f in diag["findings"] if f["severity"] != "info" and f["id"] != "stripes"] == []
