"""Spectral toolkit: tile periods (not powers of two, not divisors of the size), octave guard, significance."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.scenarios.images import _tile, _tile_source, photo
from diffdiag.analyzers import spectral


def _tiled(py, px, name, seed, size=(360, 410), noise=0.01):
    rng = np.random.default_rng(seed)
    t = _tile_source(name, py, px, rng)
    img = _tile(spectral.to_gray(t), *size)
    return img + rng.normal(0, noise, img.shape).astype(np.float32)


@pytest.mark.parametrize("py,px,name,seed", [(7, 13, "grass", 0), (23, 37, "astronaut", 1), (45, 19, "gravel", 2),
                                             (61, 29, "coffee", 3), (33, 100, "immunohistochemistry", 4),
                                             (50, 50, "brick", 5)])
def test_tile_period_exact(py, px, name, seed):
    ey, ex = spectral.tile_period(_tiled(py, px, name, seed))
    assert (ey.period, ex.period) == (py, px)
    assert ey.significant and ex.significant
    assert ey.strength > 0.8 and ex.strength > 0.8
    # octave guard: 2P, 3P correlate as well as P, the fundamental is still chosen
    assert ex.best_lag % px == 0 and ey.best_lag % py == 0


@pytest.mark.parametrize("name", ["camera", "astronaut", "rocket", "brick", "coffee", "chelsea", "grass", "gravel",
                                  "coins", "moon", "page", "clock"])
def test_photos_have_no_significant_tile_period(name):
    ey, ex = spectral.tile_period(photo(name))
    assert not (ey.significant and ey.strength >= 0.8)
    assert not (ex.significant and ex.strength >= 0.8)


def test_profile_and_latent_sizes():
    rng = np.random.default_rng(3)
    # 1-D profile with period 9 (not a divisor of 200), plus noise
    x = np.arange(200)
    prof = np.sign(np.sin(2 * np.pi * x / 9)) + rng.normal(0, 0.2, 200)
    e = spectral.estimate_period(prof, whiten=False)
    assert e.period == 9 and e.significant
    # a 64x64 latent channel with period 6 along x only
    lat = rng.normal(0, 1, (64, 64)).astype(np.float32) * 0.3
    lat += np.tile(rng.normal(0, 1, (1, 6)), (64, 11))[:, :64]
    ey, ex = spectral.tile_period(lat)
    assert ex.period == 6 and ex.significant
    assert not ey.significant
    # tiny 8x8 cells: period 2 checkerboard along x
    cells = np.tile([[1.0, -1.0]], (8, 4)) + rng.normal(0, 0.05, (8, 8))
    assert spectral.estimate_period(cells, axis=1, whiten=False).period == 2


def test_threshold_sets_sensitivity():
    img = photo("gravel", gray=True)[:300, :300] * 0.8
    weak = 0.02 * np.sin(2 * np.pi * np.arange(300) / 14)[None, :]
    e_default = spectral.estimate_period(img + weak, axis=1)
    e_loose = spectral.estimate_period(img + weak, axis=1, threshold=1.5)
    e_strict = spectral.estimate_period(img + weak, axis=1, threshold=1e6)
    assert e_loose.snr == e_default.snr or (np.isnan(e_loose.snr) and np.isnan(e_default.snr))
    assert not e_strict.significant
    assert e_loose.threshold == 1.5 and e_default.threshold == spectral.DEFAULT_THRESHOLD
    assert e_loose.significant or not e_default.significant


def test_doubling_signature_odd_harmonics():
    """A 2P-periodic signal has power at odd multiples of N/(2P); a P-periodic one does not."""
    rng = np.random.default_rng(7)
    for p in (11, 17, 26):
        a = rng.normal(0, 1, p)
        b = rng.normal(0, 1, p)
        single = np.tile(a, 600 // p + 1)[:600] + rng.normal(0, 0.05, 600)
        double = np.tile(np.concatenate([a, b]), 600 // (2 * p) + 1)[:600] + rng.normal(0, 0.05, 600)
        assert spectral.doubling_snr(double[None, :].repeat(8, 0), 1, p) > 20
        assert spectral.doubling_snr(single[None, :].repeat(8, 0), 1, p) < 4


def test_autocorr_and_psd_shapes():
    img = photo("camera", gray=True)[:100, :120]
    assert spectral.power_spectrum(img).shape == (100, 61)
    assert spectral.power_spectrum(img, axis=1).shape == (61,)
    assert spectral.power_spectrum(img, axis=0).shape == (51,)
    r = spectral.autocorr_1d(img, axis=1)
    assert r.shape == (61,) and r[0] == pytest.approx(1.0)
    r2 = spectral.autocorr_2d(img)
    assert r2.shape == (199, 239) and r2[99, 119] == pytest.approx(1.0)
    assert spectral.power_spectrum(img).dtype == np.float32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_nyquist_periods_2_and_3(seed):
    """Checkerboards / alternating columns (latent artifacts) are periods the band-pass must not hide."""
    rng = np.random.default_rng(seed)
    alt = np.tile([1.0, -1.0], 16)[None].repeat(20, 0) + rng.normal(0, 0.5, (20, 32))
    e = spectral.estimate_period(alt, axis=1)
    assert e.period == 2 and e.significant
    three = np.tile([1.0, -1.0, 0.0], 30)[None].repeat(16, 0) + rng.normal(0, 0.5, (16, 90))
    assert spectral.estimate_period(three, axis=1).period == 3
    noise = rng.normal(0, 1, (20, 32))
    assert not spectral.estimate_period(noise, axis=1).significant
