"""Checkpoints: loaders for the three LoRA naming schemes and full state dicts, factor-based norms, faults.

Checkpoints are real: a tiny diffusers UNet with a PEFT LoRA adapter trained
with AdamW (``benchmarks/scenarios/checkpoints.py``), saved in PEFT naming and
converted with diffusers' own converters to the diffusers and kohya schemes.
Faults are real optimiser events on a parameter group (LR spike, LR = inf,
huge weight decay) — which modules they hit is chosen by the seed, so the
findings can be checked module by module.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import weakref
from pathlib import Path

import numpy as np
import pytest

from benchmarks.scenarios.checkpoints import dense_reference, train_lora_checkpoints
from diffdiag.analyzers.checkpoints import CheckpointComparer, lora_inner, lora_stats
from diffdiag.errors import InputError
from diffdiag.model import Settings

FORMATS = ("peft", "diffusers", "kohya")
SCHEME_DIR = {"peft": "peft", "diffusers": "diffusers", "kohya": "kohya"}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    out = {
        "healthy": train_lora_checkpoints(root / "healthy", seed=11, n_checkpoints=6, steps_per=5),
        "healthy_r8": train_lora_checkpoints(root / "healthy_r8", seed=12, n_checkpoints=5, steps_per=7, rank=8,
                                             alpha=4, formats=("peft",), first_step=0),
        "explosion": train_lora_checkpoints(root / "explosion", seed=1, event="explosion", event_index=3,
                                            n_event_modules=2),
        "nonfinite": train_lora_checkpoints(root / "nonfinite", seed=2, event="nonfinite", event_index=2,
                                            n_event_modules=1),
        "collapse": train_lora_checkpoints(root / "collapse", seed=3, event="collapse", event_index=4,
                                           n_event_modules=3, n_checkpoints=7),
        "collapse_all": train_lora_checkpoints(root / "collapse_all", seed=4, event="collapse", event_index=2,
                                               n_event_modules=32, n_checkpoints=4, formats=("kohya",)),
    }
    return out


def _check(paths):
    """The checkpoints read by the sources, then the (pure) check: (findings, the comparison it draws)."""
    from diffdiag.checks.checkpoints import check_checkpoints
    from diffdiag.sources import load_run
    from diffdiag.sources.spec import SourceSpec

    run = load_run(SourceSpec(checkpoints=tuple(paths)))
    assert [c.path for c in run.checkpoint_scan.checkpoints] == run.checkpoints
    res = check_checkpoints(run, Settings())
    assert res.data is run.checkpoint_scan.comparison
    return res.findings, res.data


def test_norms_agree_with_dense_computation(scenarios):
    from diffdiag.sources.checkpoints import load_checkpoint

    sc = scenarios["explosion"]
    prev = None
    for p in sc.paths["peft"][2:5]:
        ck = load_checkpoint(p)
        assert ck.header.scheme == "peft" and len(ck.modules) == len(sc.modules)
        for name, m in ck.modules.items():
            assert m.scale == pytest.approx(sc.alpha / sc.rank)  # from adapter_config.json
            st = lora_stats(m.up, m.down, m.scale)
            ref = dense_reference(m.up, m.down, m.scale)
            for key in ("fro", "spectral", "stable_rank", "effective_rank"):
                assert getattr(st, key) == pytest.approx(ref[key], rel=1e-5), (name, key)
            if prev is not None:
                pm = prev.modules[name]
                pref = dense_reference(pm.up, pm.down, pm.scale)
                inner = lora_inner(pm.up, pm.down, pm.scale, m.up, m.down, m.scale)
                assert inner == pytest.approx(float(np.sum(pref["delta"] * ref["delta"])), rel=1e-5)
        prev = ck
    # the comparison's per-module change and cosine agree with dense ΔW too
    cmp = CheckpointComparer()
    cks = [load_checkpoint(p) for p in sc.paths["peft"][:2]]
    for ck in cks:
        cmp.add_lora(ck.name, ck.header.step, {k: (v.up, v.down, v.scale) for k, v in ck.modules.items()})
    res = cmp.result()
    for j, name in enumerate(res.modules):
        a = dense_reference(cks[0].modules[name].up, cks[0].modules[name].down, cks[0].modules[name].scale)["delta"]
        b = dense_reference(cks[1].modules[name].up, cks[1].modules[name].down, cks[1].modules[name].scale)["delta"]
        assert res.change[1, j] == pytest.approx(np.linalg.norm(b - a), rel=1e-5)
        assert res.cos_prev[1, j] == pytest.approx(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-5)
        assert res.fro[1, j] == pytest.approx(np.linalg.norm(b), rel=1e-5)
    assert np.all(np.isnan(res.cos_prev[0]))


def test_three_naming_schemes_give_the_same_numbers(scenarios):
    from diffdiag.sources.checkpoints import load_checkpoints

    sc = scenarios["healthy"]
    res = {}
    for fmt in FORMATS:
        scan, errors = load_checkpoints(sc.paths[fmt])
        cmp, infos = scan.comparison, scan.checkpoints
        assert errors == []
        assert [i.scheme for i in infos] == [fmt] * len(sc.steps)
        assert [i.step for i in infos] == sc.steps
        assert [i.name for i in infos] == cmp.names
        assert sorted(cmp.modules) == sorted(sc.module_name(m, fmt) for m in sc.modules)
        order = [cmp.modules.index(sc.module_name(m, fmt)) for m in sc.modules]
        res[fmt] = cmp.fro[:, order]
    np.testing.assert_allclose(res["diffusers"], res["peft"], rtol=1e-6)
    np.testing.assert_allclose(res["kohya"], res["peft"], rtol=3e-3)  # kohya files are float16
    assert res["peft"].min() > 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("event,fid", [("explosion", "checkpoint_norm_explosion"),
                                       ("nonfinite", "checkpoint_nonfinite"),
                                       ("collapse", "checkpoint_norm_collapse")])
def test_fault_names_checkpoint_and_modules(scenarios, fmt, event, fid):
    sc = scenarios[event]
    findings, cmp = _check([sc.root / SCHEME_DIR[fmt]])
    ids = [f.id for f in findings]
    assert ids == [fid], ids
    f = findings[0]
    assert f.location["checkpoint"] == sc.checkpoint_name(fmt, sc.event_index)
    assert f.location["modules"] == sorted(sc.module_name(m, fmt) for m in sc.event_modules)
    assert f.evidence["step"] == sc.steps[sc.event_index]
    if event == "explosion":
        assert f.location["growth"] > 10 and f.severity == "critical"
    elif event == "collapse":
        assert f.location["growth"] < 0.4 and f.severity == "warning"
        assert f.evidence["over_regularisation"] is False  # 3 of 32 modules
        if fmt == "kohya":
            assert f.evidence["regularisation"]["weight_decay"] == pytest.approx(0.01)
    else:
        assert f.severity == "critical"
    assert cmp.names[sc.event_index] == f.location["checkpoint"]


@pytest.mark.parametrize("name", ["healthy", "healthy_r8"])
def test_healthy_training_has_no_findings(scenarios, name):
    sc = scenarios[name]
    findings, cmp = _check([sc.root / "peft"])
    assert findings == []
    assert cmp.kind == "lora" and len(cmp.names) == len(sc.steps)
    if name == "healthy_r8":  # the step-0 checkpoint has B = 0: ΔW = 0, no growth defined, no finding
        assert np.all(cmp.fro[0] == 0)
        assert np.all(cmp.fro[1:] > 0)


def test_checkpoints_are_streamed(scenarios, monkeypatch):
    """At most one checkpoint is loaded at a time (the comparer keeps only the previous factors)."""
    import diffdiag.sources.checkpoints as src

    alive: list[weakref.ref] = []
    peaks: list[int] = []
    real = src.load_checkpoint

    def counting(path, header=None):

        peaks.append(sum(r() is not None for r in alive))
        ck = real(path, header)
        alive.append(weakref.ref(ck))
        return ck

    monkeypatch.setattr(src, "load_checkpoint", counting)
    src.load_checkpoints(scenarios["healthy"].paths["peft"])
    assert len(peaks) == len(scenarios["healthy"].steps) and max(peaks) == 0


def test_cli_end_to_end(scenarios, run_cli, tmp_path):
    sc = scenarios["explosion"]
    code, out, err, diag = run_cli("analyze", "--checkpoints", str(sc.root / "kohya"), "--format", "json",
                                   "--fail-on", "critical", report=tmp_path / "r")
    assert code == 1, err
    found = [f for f in diag["findings"] if f["id"] == "checkpoint_norm_explosion"]
    assert len(found) == 1
    assert found[0]["location"]["checkpoint"] == sc.checkpoint_name("kohya", sc.event_index)
    assert diag["inputs"]["checkpoints"] == [str(sc.root / "kohya")]
    figs = {p.name for p in (tmp_path / "r" / "figures").glob("*.png")}
    assert {"checkpoint_norms.png", "checkpoint_growth.png"} <= figs
    # files named one by one work too, in any order
    files = [str(p) for p in reversed(sc.paths["peft"])]
    code, out, err, diag = run_cli("analyze", "--checkpoints", *files, report=tmp_path / "r2")
    assert code == 0, err
    assert [f["location"]["checkpoint"] for f in diag["findings"] if f["id"].startswith("checkpoint")] == \
        [sc.checkpoint_name("peft", sc.event_index)]


# ------------------------------------------------------------------ unsafe and broken files


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("style", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, run_cli, style):
    import torch

    marker = tmp_path / "PWNED"
    d = tmp_path / "cks"
    d.mkdir()
    if style == "torch_zip":
        path = d / "evil-step100.pt"
        torch.save({"w": torch.zeros(2, 2), "payload": _Evil(marker)}, path)
    else:
        path = d / "evil-step100.ckpt"
        path.write_bytes(pickle.dumps({"payload": _Evil(marker)}, protocol=2))
    from diffdiag.sources.checkpoints import list_checkpoints

    with pytest.raises(InputError, match="refused to load") as exc:
        list_checkpoints([d])
    assert exc.value.path == str(path)
    code, out, err, diag = run_cli("analyze", "--checkpoints", str(d), report=tmp_path / "r")
    assert code == 2 and diag is None
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "refused to load" in lines[0]
    assert "Traceback" not in err
    assert not marker.exists()


def _valid_safetensors(path: Path) -> bytes:
    from safetensors.numpy import save_file

    save_file({"a.lora_down.weight": np.ones((2, 8), np.float32), "a.lora_up.weight": np.ones((8, 2), np.float32)},
              str(path))
    return path.read_bytes()


@pytest.mark.parametrize("corruption", ["huge_length", "not_json", "truncated_data", "tiny", "bad_offsets"])
def test_corrupt_safetensors_exit_2(tmp_path, run_cli, corruption):
    good = _valid_safetensors(tmp_path / "good.safetensors")
    (n,) = struct.unpack("<Q", good[:8])
    if corruption == "huge_length":
        data = struct.pack("<Q", 2 ** 62) + good[8:]
    elif corruption == "not_json":
        data = good[:8] + b"{" + b"\x00" * (n - 1) + good[8 + n:]
    elif corruption == "truncated_data":
        data = good[:-40]
    elif corruption == "tiny":
        data = good[:5]
    else:
        header = json.loads(good[8:8 + n])
        header["a.lora_down.weight"]["data_offsets"] = [0, 10 ** 9]
        hb = json.dumps(header).encode()
        data = struct.pack("<Q", len(hb)) + hb + good[8 + n:]
    d = tmp_path / "cks"
    d.mkdir()
    bad = d / "lora-step200.safetensors"
    bad.write_bytes(data)
    (d / "lora-step100.safetensors").write_bytes(good)
    code, out, err, diag = run_cli("analyze", "--checkpoints", str(d), report=tmp_path / "r")
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "safetensors" in lines[0]


def test_no_checkpoint_in_directory_exit_2(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    code, out, err, diag = run_cli("analyze", "--checkpoints", str(tmp_path / "empty"), report=tmp_path / "r")
    assert code == 2 and "no checkpoint files" in err


# ------------------------------------------------------------------ full state dicts, steps, dtypes


def test_full_state_dicts_compared_layer_by_layer(tmp_path):
    """Full fine-tuning of the tiny UNet (plain SGD on all weights), saved as .pt and Lightning-style .ckpt;
    one layer's LR is set to inf at the last step (a real overflow), which must be the only finding."""
    import torch

    from benchmarks.scenarios.checkpoints import tiny_unet

    torch.set_num_threads(1)
    unet = tiny_unet(5)
    victim = "up_blocks.1.resnets.0.conv1.weight"
    params = dict(unet.named_parameters())
    opt = torch.optim.SGD([{"params": [p for n, p in params.items() if n != victim], "lr": 1e-3},
                           {"params": [params[victim]], "lr": 1e-3}])
    g = torch.Generator().manual_seed(0)
    saved = []
    for k in range(4):
        for inner in range(2):
            x = torch.randn(2, 4, 8, 8, generator=g)
            loss = unet(x, torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, 4, 32, generator=g)
                        ).sample.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            if k == 3 and inner == 1:
                opt.param_groups[1]["lr"] = float("inf")
            opt.step()
        sd = {n: t.detach().clone() for n, t in unet.state_dict().items()}
        step = (k + 1) * 2
        if k % 2 == 0:
            d = tmp_path / f"checkpoint-{step}"
            d.mkdir()
            torch.save(sd, d / "model.pt")
            saved.append(d / "model.pt")
        else:
            torch.save({"state_dict": sd, "global_step": step, "epoch": 0}, tmp_path / f"last-v{k}.ckpt")
            saved.append(tmp_path / f"last-v{k}.ckpt")
        (tmp_path / f"optimizer-{k}.pt").write_bytes(b"not a checkpoint")  # training state is skipped
    findings, cmp = _check([tmp_path])
    assert cmp.kind == "full" and cmp.steps == [2, 4, 6, 8]
    assert [f.id for f in findings] == ["checkpoint_nonfinite"]
    assert findings[0].location["modules"] == [victim]
    assert findings[0].location["checkpoint"] == "last-v3.ckpt"
    # change between consecutive checkpoints equals the dense difference
    a = torch.load(saved[0], weights_only=True)
    b = torch.load(saved[1], weights_only=True)["state_dict"]
    j = cmp.modules.index("down_blocks.0.resnets.0.conv1.weight")
    ref = float(torch.linalg.vector_norm((b["down_blocks.0.resnets.0.conv1.weight"]
                                          - a["down_blocks.0.resnets.0.conv1.weight"]).double()))
    assert cmp.change[1, j] == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("name,step", [
    ("mylora-step00001234.safetensors", 1234),
    ("checkpoint-1500/pytorch_lora_weights.safetensors", 1500),
    ("run/checkpoint-20/adapter_model.safetensors", 20),
    ("mylora-000004.safetensors", 4),
    ("lora_step_77.pt", 77),
    ("model_global_step=300.ckpt", 300),
    ("final.safetensors", None),
])
def test_step_from_name(name, step):
    from diffdiag.sources.checkpoints import step_from_name

    assert step_from_name(name) == step


def test_step_from_metadata_order_and_bf16(tmp_path):
    import torch
    from safetensors.torch import save_file

    from diffdiag.sources.checkpoints import list_checkpoints, load_checkpoint

    rng = np.random.default_rng(0)
    ups = {}
    for i, (fname, meta) in enumerate([("last.safetensors", {"ss_steps": "900"}),
                                       ("x-step00000300.safetensors", {}),
                                       ("final.safetensors", {})]):
        up = rng.normal(size=(16, 2)).astype(np.float32)
        down = rng.normal(size=(2, 12)).astype(np.float32)
        ups[fname] = (up, down)
        save_file({"lora_unet_a_to_q.lora_up.weight": torch.from_numpy(up).to(torch.bfloat16),
                   "lora_unet_a_to_q.lora_down.weight": torch.from_numpy(down).to(torch.bfloat16),
                   "lora_unet_a_to_q.alpha": torch.tensor(1.0, dtype=torch.bfloat16)},
                  str(tmp_path / fname), metadata=meta)
    paths = list_checkpoints([tmp_path])
    assert [p.name for p in paths] == ["x-step00000300.safetensors", "last.safetensors", "final.safetensors"]
    ck = load_checkpoint(paths[1])
    assert ck.header.step == 900 and ck.header.scheme == "kohya"
    m = ck.modules["lora_unet_a_to_q"]
    up_bf = torch.from_numpy(ups["last.safetensors"][0]).to(torch.bfloat16).float().numpy()
    assert m.up.dtype == np.float32 and np.array_equal(m.up, up_bf)
    assert m.scale == pytest.approx(0.5)


@pytest.mark.parametrize("key,expected", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
     ("lora_unet_down_blocks_0_attentions_0_proj_in", "down", "kohya")),
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
     ("lora_te1_text_model_encoder_layers_0_mlp_fc1", "up", "kohya")),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", ("lora_te_text_model_encoder_layers_0_mlp_fc1", "alpha", "kohya")),
    ("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight",
     ("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q", "down", "diffusers")),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight",
     ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "up", "diffusers")),
    ("mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight",
     ("mid_block.attentions.0.transformer_blocks.0.attn1.to_out", "down", "diffusers")),
    ("base_model.model.up_blocks.1.attentions.0.proj_out.lora_A.default.weight",
     ("base_model.model.up_blocks.1.attentions.0.proj_out", "down", "peft")),
    ("unet.up_blocks.1.attentions.0.proj_out.lora_B.weight", ("unet.up_blocks.1.attentions.0.proj_out", "up", "peft")),
    ("up_blocks.1.attentions.0.proj_out.weight", None),
    ("lora_unet_x.dora_scale", None),
])
def test_lora_key_schemes(key, expected):
    from diffdiag.sources.checkpoints import parse_lora_key

    assert parse_lora_key(key) == expected


def test_whole_adapter_collapse_is_over_regularisation(scenarios):
    """Weight decay on every LoRA module (lr·wd = 0.3 per step): the adapter is regularised away."""
    sc = scenarios["collapse_all"]
    findings, _ = _check([sc.root / "kohya"])
    assert [f.id for f in findings] == ["checkpoint_norm_collapse"]
    f = findings[0]
    assert f.location["checkpoint"] == sc.checkpoint_name("kohya", 2)
    assert f.location["modules"] == sorted(sc.module_name(m, "kohya") for m in sc.modules)
    assert f.evidence["over_regularisation"] is True and f.evidence["fraction_of_modules"] == 1.0
    assert f.evidence["total_norm_ratio_to_peak"] < 0.4


def test_peft_scale_from_diffusers_metadata(tmp_path):
    """diffusers' own writers: ``save_lora_adapter`` (plain LoraConfig in ``lora_adapter_metadata``) and the
    pipeline layout (``{"unet.r": …, "unet.lora_alpha": …}`` with ``unet.``-prefixed keys)."""
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    from benchmarks.scenarios.checkpoints import tiny_unet
    from diffdiag.sources.checkpoints import list_checkpoints, load_checkpoint

    unet = tiny_unet(3)
    cfg = LoraConfig(r=4, lora_alpha=16, init_lora_weights="gaussian", target_modules=["to_q", "to_v"],
                     rank_pattern={"mid_block.attentions.0.transformer_blocks.0.attn1.to_q": 2},
                     alpha_pattern={"mid_block.attentions.0.transformer_blocks.0.attn1.to_q": 6})
    unet.add_adapter(cfg)
    unet.save_lora_adapter(str(tmp_path / "a" / "run-step200"))
    sd = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    meta = {f"unet.{k}": (sorted(v) if isinstance(v, set) else v) for k, v in cfg.to_dict().items()}
    (tmp_path / "b").mkdir()
    save_file(sd, str(tmp_path / "b" / "lora-step300.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps(meta), "format": "pt"})
    paths = list_checkpoints([tmp_path / "a", tmp_path / "b"])
    assert [p.parent.name for p in paths] == ["run-step200", "b"]
    for p, prefix in zip(paths, ("", "unet.")):
        ck = load_checkpoint(p)
        assert ck.notes == []
        special = prefix + "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
        assert ck.modules[special].down.shape[0] == 2 and ck.modules[special].scale == pytest.approx(3.0)
        others = {m.scale for k, m in ck.modules.items() if k != special}
        assert others == {4.0}


# ------------------------------------------------------------------ LoRA size from one file (exact, constructed)


def _sized(rho: dict[str, float], out: int = 64, inp: int = 48, r: int = 4, seed: int = 0):
    """``{module: (up, down, 1.0)}`` whose ΔW has exactly ``rho[module]`` × LAYER_GAIN·sqrt(out) Frobenius norm."""
    from diffdiag.analyzers.checkpoints import LAYER_GAIN

    rng = np.random.default_rng(seed)
    mods = {}
    for name, target in rho.items():
        up, down = rng.normal(size=(out, r)), rng.normal(size=(r, inp))
        up *= target * LAYER_GAIN * np.sqrt(out) / np.linalg.norm(up @ down)
        mods[name] = (up, down, 1.0)
    return mods


def test_size_rules_adapter_module_and_outlier():
    from diffdiag.analyzers.checkpoints import detect_oversize, norm_events

    def states(rho):
        cmp = CheckpointComparer()
        cmp.add_lora("one.safetensors", None, _sized(rho))
        return cmp.result(), detect_oversize(cmp.result())

    healthy = {f"m{i}": 0.1 + 0.05 * i for i in range(10)}          # 0.1 .. 0.55: healthy sizes
    cmp, st = states(healthy)
    assert st == [] and norm_events(cmp) == []
    np.testing.assert_allclose(cmp.relative_size()[0], [healthy[m] for m in cmp.modules], rtol=1e-6)  # float32 factors
    # one module 4x its layer: oversized alone
    cmp, st = states({**healthy, "m3": 4.5})
    assert [s.modules for s in st] == [["m3"]] and st[0].relative["m3"] == pytest.approx(4.5)
    # an outlier: 0.9 against a median of ~0.02 (≥ 20x and ≥ 0.5) — and not at 0.4
    small = {f"m{i}": 0.02 for i in range(10)}
    assert [s.modules for s in states({**small, "m0": 0.9})[1]] == [["m0"]]
    assert states({**small, "m0": 0.4})[1] == []
    # the whole adapter: median 2.5 names the modules of at least the layer's size
    big = {f"m{i}": 2.5 for i in range(8)} | {"m8": 0.5, "m9": 1.2}
    cmp, st = states(big)
    assert st[0].modules == sorted(set(big) - {"m8"}) and st[0].median_relative == pytest.approx(2.5)
    (ev,) = norm_events(cmp)
    assert ev.kind == "explosion" and ev.basis == "size" and ev.growth is None and ev.index == 0


def test_weight_decay_shrinking_an_exploded_lora_is_no_collapse():
    """Exploded at the first checkpoint, then shrunk to 10 %: one explosion (growth None), no collapse."""
    from diffdiag.analyzers.checkpoints import detect_norm_events, norm_events

    cmp = CheckpointComparer()
    for k, (step, rho) in enumerate([(100, 30.0), (200, 10.0), (300, 3.0)]):
        cmp.add_lora(f"ck-{step}.safetensors", step, _sized({f"m{i}": rho * (1 + 0.1 * i) for i in range(6)}))
    res = cmp.result()
    assert [e.kind for e in detect_norm_events(res)] == ["collapse"]   # growth alone calls it a collapse
    (ev,) = norm_events(res)
    assert (ev.kind, ev.index, ev.growth, ev.peak_index) == ("explosion", 0, None, 0)


def test_kohya_alpha_zero_means_alpha_equal_to_rank(tmp_path):
    from safetensors.numpy import save_file

    from diffdiag.sources.checkpoints import load_checkpoint

    up, down = np.ones((8, 2), np.float32), np.ones((2, 6), np.float32)
    save_file({"lora_unet_a.lora_up.weight": up, "lora_unet_a.lora_down.weight": down,
               "lora_unet_a.alpha": np.array(0.0, np.float32),
               "lora_unet_b.lora_up.weight": up, "lora_unet_b.lora_down.weight": down,
               "lora_unet_b.alpha": np.array(1.0, np.float32)}, str(tmp_path / "x-step10.safetensors"))
    ck = load_checkpoint(tmp_path / "x-step10.safetensors")
    assert ck.modules["lora_unet_a"].scale == 1.0 and ck.modules["lora_unet_a"].alpha == 2.0
    assert ck.modules["lora_unet_b"].scale == 0.5 and ck.format == "kohya"


def test_heatmap_labels_name_the_final_file():
    """The trainer's final file (no step in its name) is 'final', not a cut-off '…s.safetensors'."""
    from types import SimpleNamespace

    from reports.fig_checkpoints import _xlabels

    ck = SimpleNamespace(names=["checkpoint-10/pytorch_lora_weights.safetensors",
                                "checkpoint-20/pytorch_lora_weights.safetensors", "out/pytorch_lora_weights.safetensors"],
                         steps=[10, 20, None])
    assert _xlabels(ck) == ["10", "20", "final"]
    ck = SimpleNamespace(names=["a/pytorch_lora_weights.safetensors", "b/pytorch_lora_weights.safetensors",
                                "mylora_with_a_long_name.safetensors"], steps=[None, None, None])
    assert _xlabels(ck) == ["a", "b", "mylora_with_a_l…"]


def test_a_jump_that_later_outgrows_the_layers_is_one_explosion():
    """A 6x jump while still small, then the adapter outgrows its layers: one explosion, at the jump."""
    from diffdiag.analyzers.checkpoints import norm_events

    cmp = CheckpointComparer()
    for step, rho in [(100, 0.05), (200, 0.06), (300, 0.07), (400, 0.45), (500, 3.0)]:
        cmp.add_lora(f"ck-{step}.safetensors", step, _sized({f"m{i}": rho * (1 + 0.05 * i) for i in range(6)}))
    (ev,) = norm_events(cmp.result())
    assert (ev.kind, ev.index, ev.basis, ev.peak_index) == ("explosion", 3, "growth", 4)
    assert ev.peak_median == pytest.approx(3.0 * 1.125, rel=1e-3)
