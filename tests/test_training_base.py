"""The tiny base UNet shipped with the package (``integrations/assets/tiny_base.safetensors``).

``make base`` trains it with the project's own code (``integrations/tiny_lora.py``)
and records its checksum, config and loss profile over timesteps in
``tiny_base.json``. These tests check that the shipped file is the one the code
describes, that it loads without training (an empty ``DIFFDIAG_CACHE``), that
it is trained (heavy-tailed loss over timesteps, unlike a random UNet), and that
a build is deterministic and falls back to the cache as documented.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffdiag.integrations import tiny_lora as T  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    """(unet, info) of an empty cache: the shipped base."""
    return T.load_or_build_base()


def test_shipped_file_is_the_one_the_code_describes():
    meta = json.loads(T.SHIPPED_META.read_text())
    assert meta["key"] == T.BaseConfig().key(), "the base's config changed: rebuild it with `make base`"
    assert meta["sha256"] == T._sha256(T.SHIPPED_BASE) and meta["bytes"] == T.SHIPPED_BASE.stat().st_size
    assert meta["bytes"] < 2_000_000                      # 0.79 M parameters in fp16
    from safetensors import safe_open

    with safe_open(str(T.SHIPPED_BASE), "pt") as f:
        keys = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"F16"}
    assert set(keys) == set(T.build_unet().state_dict())
    assert meta["parameters"] == sum(p.numel() for p in T.build_unet().parameters()) == 792_964


def test_empty_cache_loads_the_shipped_base_without_training(tmp_path):
    lines: list[str] = []
    unet, info = T.load_or_build_base(cache=tmp_path / "cache", log=lines.append)
    assert info["source"] == "shipped" and info["path"] == str(T.SHIPPED_BASE)
    assert lines == [] and not (tmp_path / "cache").exists()   # nothing trained, nothing written
    assert not any(p.requires_grad for p in unet.parameters()) and not unet.training
    assert next(unet.parameters()).dtype == torch.float32


def test_shipped_base_is_trained_heavy_tailed_over_timesteps(shipped):
    """Ground truth from the build (tiny_base.json) and the shape the demo relies on.

    A random UNet scores ~1.1 at every timestep (per-sample p99/median ~1.3); the
    trained base is high near t=0 and low at large t.
    """
    unet, _ = shipped
    meta = T.shipped_base_meta()
    loss = T.timestep_loss(unet)
    recorded = {int(t): v for t, v in meta["timestep_loss"].items()}
    assert loss.keys() == recorded.keys()
    np.testing.assert_allclose(list(loss.values()), list(recorded.values()), rtol=1e-3)
    assert loss[1] > 0.3 and loss[5] > 0.3
    assert loss[700] < 0.1 * loss[5] and loss[999] < 0.1 * loss[5]
    assert all(a >= b for a, b in zip(list(loss.values()), list(loss.values())[1:]))   # falls with t
    tail = T.timestep_tail_ratio(unet)
    assert tail == pytest.approx(meta["timestep_tail_ratio"], rel=1e-3) and tail > 5
    rand = T.build_unet(0)
    rand_loss = T.timestep_loss(rand)
    assert min(rand_loss.values()) > 0.9 and T.timestep_tail_ratio(rand) < 2


def test_build_is_deterministic_and_feeds_the_cache(tmp_path):
    cfg = T.BaseConfig(steps=4, pool=32)
    a = T.build_base(tmp_path / "a", cfg)
    b = T.build_base(tmp_path / "b", cfg)
    assert a["sha256"] == b["sha256"] and a["key"] == cfg.key() != T.BaseConfig().key()
    assert (tmp_path / "a" / "tiny_base.json").read_text() == (tmp_path / "b" / "tiny_base.json").read_text()
    lines: list[str] = []
    cache = tmp_path / "cache"
    unet, info = T.load_or_build_base(cfg, cache=cache, log=lines.append)   # not the shipped config: trained
    assert info["source"] == "trained" and lines[0].startswith("training the tiny base UNet (4 steps")
    assert any("base step 4/4" in line and "done in" in line for line in lines)
    assert T._sha256(info["path"]) == a["sha256"]          # the cache holds the same bytes as a build
    again, info2 = T.load_or_build_base(cfg, cache=cache)
    assert info2["source"] == "cache"
    for (k, v), w in zip(unet.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k


def test_damaged_shipped_file_falls_back_to_the_cache(tmp_path, monkeypatch):
    cfg = T.BaseConfig()
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(T.SHIPPED_BASE, cache / f"tiny_base-{cfg.key()}.safetensors")
    broken = tmp_path / "tiny_base.safetensors"
    data = bytearray(T.SHIPPED_BASE.read_bytes())
    data[-1] ^= 0xFF
    broken.write_bytes(bytes(data))
    monkeypatch.setattr(T, "SHIPPED_BASE", broken)
    lines: list[str] = []
    _, info = T.load_or_build_base(cache=cache, log=lines.append)
    assert info["source"] == "cache"
    assert lines == [f"shipped base {broken} unusable (its checksum differs from tiny_base.json); "
                     "using the cache or training it"]


def test_progress_lines_carry_an_eta_and_the_last_step():
    lines: list[str] = []
    every_step = T.Progress(3, lines.append, "step", every=0.0)
    for i in (1, 2, 3):
        every_step(i, f"loss {i}")
    assert [line.split(" (")[0] for line in lines] == ["  step 1/3: loss 1", "  step 2/3: loss 2", "  step 3/3: loss 3"]
    assert "ETA" in lines[0] and "ETA" in lines[1] and "done in" in lines[2]
    lines.clear()
    quiet = T.Progress(100, lines.append, "step", every=3600.0)
    for i in range(1, 101):
        quiet(i)
    assert len(lines) == 1 and lines[0].startswith("  step 100/100 (")


def test_torch_threads_is_restored():
    before = torch.get_num_threads()
    with T.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with T.torch_threads(None):
        assert torch.get_num_threads() == before
