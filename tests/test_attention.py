"""Cross-attention maps: the pure analyzer on controlled maps, and real maps captured from the tiny UNet.

Controlled maps (numpy) cover both collapse kinds at varied grid sizes and
positions. Real maps come from the pre-trained tiny base UNet
(``integrations/tiny_lora.py``) through :class:`AttentionCapture`; a real
uniform collapse is produced by zeroing one layer's ``to_k`` (every logit 0:
every position attends to every token equally). A real collapse to a point
happens in the LR-too-high training run (``test_training.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from diffdiag.analyzers.attention import classify_collapse, map_periodicity, token_map_stats
from diffdiag.checks.attention import check_attention
from diffdiag.model import RunData, Settings


def healthy_maps(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """Smooth, localised token maps (a few blobs each) that sum to 1 over tokens at every cell."""
    yy, xx = np.mgrid[0:h, 0:w]
    logits = np.zeros((t, h, w))
    for k in range(t):
        for _ in range(2):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            logits[k] += rng.uniform(0.5, 2.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (max(h, w) / 4) ** 2))
    p = np.exp(logits)
    return (p / p.sum(axis=0, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed,t,h,w", [(0, 4, 8, 8), (1, 8, 16, 16), (2, 6, 12, 20), (3, 77, 8, 8)])
def test_healthy_maps_are_quiet(seed, t, h, w):
    s = token_map_stats(healthy_maps(np.random.default_rng(seed), t, h, w))
    assert classify_collapse(s) == [None] * t
    assert np.all(s.entropy > 0.5)


@pytest.mark.parametrize("seed,t,h,w", [(0, 4, 8, 8), (1, 8, 16, 16), (2, 5, 4, 4), (3, 6, 12, 20)])
def test_collapse_to_a_point_and_to_uniform_found_per_token(seed, t, h, w):
    rng = np.random.default_rng(seed)
    maps = healthy_maps(rng, t, h, w)
    pt, un = rng.choice(t, 2, replace=False)
    y, x = rng.integers(0, h), rng.integers(0, w)
    point = np.full((h, w), 1e-4, np.float32)
    point[y, x] = 0.9
    maps[pt] = point
    maps[un] = 0.2 * (1 + rng.normal(0, 1e-3, (h, w)))
    labels = classify_collapse(token_map_stats(maps))
    assert labels[pt] == "point" and labels[un] == "uniform"
    assert [i for i, lab in enumerate(labels) if lab] == sorted([pt, un])


def test_periodicity_of_a_striped_map():
    for period in (2, 4, 5):
        m = 1 + np.cos(2 * np.pi * np.arange(20) / period)[None, :].repeat(10, 0)
        strength, (py, px) = map_periodicity(m)
        assert strength > 0.9 and py == 0 and px == period


def test_check_needs_a_trend_not_a_one_off():
    rng = np.random.default_rng(5)
    good = healthy_maps(rng, 4, 8, 8)
    bad = good.copy()
    bad[1] = 0.25
    one_off = [{"step": s, "layer": "L", "maps": m} for s, m in [(10, good), (20, bad), (30, good)]]
    assert check_attention(RunData(attention=one_off), Settings()) == []
    trend = [{"step": s, "layer": "L", "maps": m} for s, m in [(10, good), (20, bad), (30, bad)]]
    (f,) = check_attention(RunData(attention=trend), Settings())
    assert f.id == "attention_collapse" and f.location == {"layer": "L", "token": 1}
    assert f.evidence["kind"] == "uniform" and f.evidence["steps"] == [20, 30]


@pytest.fixture(scope="module")
def base_unet():
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    import torch

    from diffdiag.integrations.tiny_lora import load_or_build_base

    torch.set_num_threads(1)  # the tiny model runs fastest on one thread (integrations/tiny_lora.py: THREADS)
    unet, _ = load_or_build_base()
    return unet


def _capture(unet, seed=0):
    import torch

    from diffdiag.integrations.attention_capture import AttentionCapture
    from diffdiag.integrations.tiny_lora import prompt_embeddings

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g) * 0.3
    t = torch.tensor([250, 600])
    cond = prompt_embeddings(2, seed=99)
    cap = AttentionCapture(unet)
    cap.arm(step=7)
    with torch.no_grad():
        out = unet(x, t, cond).sample
    assert not cap.armed or cap.captured
    maps = cap.collect()
    assert not cap.armed
    return maps, out


def test_real_maps_from_the_tiny_unet_are_probabilities_and_healthy(base_unet):
    maps, _ = _capture(base_unet)
    shapes = {m["layer"]: m["maps"].shape for m in maps}
    assert len(shapes) == 4 and all(name.endswith("attn2") for name in shapes)
    assert shapes["mid_block.attentions.0.transformer_blocks.0.attn2"] == (4, 4, 4)
    assert shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == (4, 8, 8)
    for m in maps:
        np.testing.assert_allclose(m["maps"].sum(axis=0), 1.0, atol=1e-5)   # softmax over tokens
        assert m["step"] == 7
    run = RunData(attention=maps)
    assert check_attention(run, Settings()) == []


def test_real_uniform_collapse_in_one_layer_is_found_with_layer_and_token(base_unet):
    import copy

    import torch

    unet = copy.deepcopy(base_unet)
    layer = "up_blocks.1.attentions.1.transformer_blocks.0.attn2"
    with torch.no_grad():
        unet.get_submodule(layer).to_k.weight.zero_()
    caps = _capture(unet, seed=1)[0] + _capture(unet, seed=2)[0]
    findings = check_attention(RunData(attention=caps), Settings())
    assert {(f.location["layer"], f.location["token"]) for f in findings} == {(layer, t) for t in range(4)}
    assert all(f.evidence["kind"] == "uniform" and f.evidence["cv"] < 1e-4 for f in findings)


def test_capture_leaves_the_model_unchanged(base_unet):
    import torch

    from diffdiag.integrations.tiny_lora import prompt_embeddings

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = base_unet(x, torch.tensor([500]), prompt_embeddings(1, 5)).sample
    _, _ = _capture(base_unet)
    with torch.no_grad():
        after = base_unet(x, torch.tensor([500]), prompt_embeddings(1, 5)).sample
    assert torch.equal(before, after)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in base_unet.modules())
