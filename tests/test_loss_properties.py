"""Property tests: the loss analyzers never raise on arbitrary series."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from diffdiag.analyzers.loss_levels import detect_divergence, detect_ema_divergence, detect_plateaus
from diffdiag.analyzers.loss_samples import sample_loss_correlation
from diffdiag.analyzers.loss_spikes import detect_spikes

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
series = st.one_of(
    arrays(np.float64, st.integers(0, 300), elements=floats),
    arrays(np.float64, st.integers(0, 300), elements=st.floats(-1e6, 1e6)),
    st.builds(lambda n, c: np.full(n, c), st.integers(0, 3000), st.sampled_from([0.0, 1.0, -2.0, np.nan, np.inf])),
)


_HUGE = 1e160  # its square passes float max: once raised OverflowError in sample_loss_correlation


@settings(max_examples=60, deadline=None)
@given(series, st.floats(0.1, 50))
@example(np.array([0.0, *[_HUGE] * 5, 0, 0, _HUGE, _HUGE, 0, 0, 0, *[_HUGE] * 12, 0.0]), 1.0)
def test_analyzers_never_raise(x, sigma):
    r = detect_spikes(x, sigma=sigma)
    assert r.z.shape == x.shape
    detect_divergence(x)
    detect_plateaus(x)
    steps = np.arange(x.size)
    detect_ema_divergence(steps, x, steps, x[::-1].copy())
    ids = [["a", "b"] if i % 3 else ["c"] for i in range(x.size)]
    sample_loss_correlation(r.residual, ids)


@settings(max_examples=20, deadline=None)
@given(arrays(np.float64, st.integers(0, 400), elements=st.floats(1e-6, 10)),
       arrays(np.float64, st.integers(0, 400), elements=floats))
def test_spikes_with_timesteps_and_ragged_ema(x, e):
    t = np.random.default_rng(0).integers(0, 1000, size=(x.size, 2)).astype(float)
    detect_spikes(x, timesteps=t)
    detect_ema_divergence(np.arange(x.size), x, np.arange(e.size) * 3, e)
