"""The real tiny training run (``integrations/tiny_lora.py``) with the in-training hook.

The tiny base UNet ships with the package (``integrations/assets/``, checked
by tests/test_training_base.py); each test here
LoRA-tunes it for real for a few dozen steps with a fault injected (or none)
and asserts what the hook and the final diagnosis find. Nothing is faked.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from .conftest import validate_diagnosis  # noqa: E402

LOSS_IDS = {"loss_spike", "loss_divergence", "loss_nonfinite", "ema_divergence"}
STEPS = 60


@pytest.fixture(scope="session")
def base():
    from diffdiag.integrations.tiny_lora import load_or_build_base

    unet, info = load_or_build_base()
    assert info["source"] == "shipped"
    return unet


def _train(base, tmp, fault, steps=STEPS, interval=10, seed=0):
    from diffdiag.integrations.hook import DiagConfig, DiagnosticWarning, LossDiagnostics
    from diffdiag.integrations.tiny_lora import LoraConfig, train_lora

    hook = LossDiagnostics(DiagConfig(report_dir=tmp / "report", diag_interval=interval, write_report=False,
                                      trackers=(), warn=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiagnosticWarning)   # a capture failing on the real UNet is a bug
        res = train_lora(LoraConfig(workdir=tmp / "run", steps=steps, fault=fault, seed=seed,
                                    tensorboard=fault is None), base=base, hook=hook)
    diag = hook.finish()
    return res, hook, diag


@pytest.fixture(scope="module")
def healthy(base, tmp_path_factory):
    return _train(base, tmp_path_factory.mktemp("healthy"), None)


@pytest.fixture(scope="module")
def lr_too_high(base, tmp_path_factory):
    return _train(base, tmp_path_factory.mktemp("lr"), "lr_too_high")


def test_base_is_trained_and_lora_loss_is_heavy_tailed(base, healthy):
    """A random UNet's loss is ~1 at every timestep; the trained base's falls with t; LoRA steps are heavy-tailed."""
    import torch

    from diffdiag.integrations import tiny_lora as T

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 4, 8, 8, generator=g) * T.LATENT_SCALE
    cond = T.prompt_embeddings(1, 3).expand(32, -1, -1)
    sched = T._scheduler()
    loss = {}
    with torch.no_grad():
        for t in (5, 900):
            n = torch.randn(x0.shape, generator=g)
            tt = torch.full((32,), t)
            loss[t] = float(((base(sched.add_noise(x0, n, tt), tt, cond).sample - n) ** 2).mean())
    assert loss[5] > 0.3 and loss[900] < 0.1 * loss[5]
    res = healthy[0]
    assert res.losses.shape == (STEPS,) and np.isfinite(res.losses).all()
    assert res.tail_ratio() > 5          # measured 12.3 (60 steps) / 12.8 (200 steps) on the shipped base


def test_healthy_run_is_quiet_and_writes_contract_files(healthy, run_cli, tmp_path):
    res, hook, diag = healthy
    assert hook.live_findings == []
    ids = {f.id for f in diag.findings}
    assert not ids & (LOSS_IDS | {"attention_collapse", "grad_norm_spike"}), ids
    doc = validate_diagnosis(diag.outputs["diagnosis"])
    assert doc["inputs"]["hook"]["steps"] == STEPS
    # latents every 10 steps, docs/CONTRACT.md §2 (pre/post, step in the name), readable by the CLI's loader
    from diffdiag.model import RunData
    from diffdiag.sources.latents import load_latents

    lat_dir = hook.latents[0].path.rsplit("/", 1)[0]
    files = load_latents(lat_dir, RunData())
    assert [f.step for f in files] == list(range(0, STEPS, 10))[1:] or [f.step for f in files] == list(range(0, STEPS, 10))
    assert set(files[0].arrays) >= {"pre", "post"} and files[0].arrays["pre"].shape[1:] == (4, 8, 8)
    # attention captured on interval steps, 4 cross-attention layers each
    steps = sorted({a["step"] for a in hook.attention})
    assert steps and all(s % 10 == 0 for s in steps) and len(hook.attention) == 4 * len(steps)
    # batch statistics carry the sample ids of the step
    assert hook.batch_stats and all(len(b.sample_ids) == 2 for b in hook.batch_stats)
    assert hook.batch_stats[0].sample_ids == res.sample_ids[hook.batch_stats[0].step]
    # the trainer's own logs are readable by the CLI
    rows = [json.loads(line) for line in res.jsonl.read_text().splitlines()]
    assert len(rows) == STEPS and {"loss", "ema_loss", "lr", "grad_norm", "sample_ids", "timesteps"} <= set(rows[0])
    code, out, err, cli = run_cli("analyze", "--logdir", str(res.logs), "--report", str(tmp_path / "r"),
                                  report=tmp_path / "r")
    assert code == 0, err
    assert not {f["id"] for f in cli["findings"]} & LOSS_IDS


def test_lr_too_high_is_found_live_and_ranked_first(lr_too_high):
    res, hook, diag = lr_too_high
    # the loss really blew up: the run ends near a random model's level
    assert np.median(res.losses[-15:]) > 5 * np.median(res.losses[:10])
    live = [f for f in hook.live_findings if f.id in LOSS_IDS]
    assert live and live[0].id == "loss_divergence" and 10 <= live[0].location["step"] <= 45
    assert {f.id for f in diag.findings} & {"loss_divergence", "loss_spike"}
    top = [c for c in diag.causes if c.symptom == "loss_spikes"]
    if top:                              # cause ranking lands with issue 4
        assert top[0].id == "loss_spikes.learning_rate_too_high"


def test_lr_too_high_breaks_cross_attention(lr_too_high, healthy):
    """The blown-up LoRA (on to_q/to_k) wrecks the cross-attention maps; the healthy run keeps them."""
    _, hook, diag = lr_too_high
    found = [f for f in hook.live_findings + diag.findings if f.id == "attention_collapse"]
    assert found and all(f.location["layer"].endswith("attn2") and 0 <= f.location["token"] < 4 for f in found)
    assert {f.evidence["kind"] for f in found} <= {"point", "uniform"}
    assert not [f for f in healthy[1].live_findings + healthy[2].findings if f.id == "attention_collapse"]


def test_corrupted_samples_give_nonfinite_steps_tied_to_those_samples(base, tmp_path):
    res, hook, diag = _train(base, tmp_path, "corrupted_samples", seed=1)
    bad_steps = [i for i, v in enumerate(res.losses) if not np.isfinite(v)]
    assert bad_steps, "no corrupted sample was drawn"
    # ground truth: exactly the steps whose batch holds a corrupted sample
    truth = [i for i, ids in enumerate(res.sample_ids) if set(ids) & set(res.corrupted)]
    assert bad_steps == truth
    (nf,) = [f for f in diag.findings if f.id == "loss_nonfinite"]
    assert nf.severity == "critical" and nf.location["step"] == bad_steps[0]
    assert sorted(nf.location["steps"]) == bad_steps
    assert hook.live_findings[0].id == "loss_nonfinite" and hook.live_findings[0].location["step"] == bad_steps[0]
    # the run went on: finite losses after the first corrupted step
    assert np.isfinite(res.losses[bad_steps[0] + 1:]).any()
    top = [c for c in diag.causes if c.symptom == "loss_spikes"]
    if top:
        assert top[0].id == "loss_spikes.corrupted_batch"


def test_finished_hook_leaves_the_model_exactly_as_before(base, tmp_path):
    import copy

    import torch

    from diffdiag.integrations.hook import DiagConfig, LossDiagnostics
    from diffdiag.integrations.tiny_lora import prompt_embeddings

    unet = copy.deepcopy(base)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3
    t = torch.tensor([100, 700])
    cond = prompt_embeddings(2, 11)
    with torch.no_grad():
        before = unet(x, t, cond).sample
    hook = LossDiagnostics(DiagConfig(report_dir=tmp_path / "r", diag_interval=2, write_report=False, trackers=(),
                                      warn=False))
    for step in range(7):
        with torch.no_grad():
            out = unet(x, t, cond).sample
        hook.log_step(step, ((out - x) ** 2).mean(), None, model=unet, batch={"pixel_values": x})
    assert any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())    # hooks were live
    assert hook.attention and hook.latents
    hook.finish()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())
    with torch.no_grad():
        after = unet(x, t, cond).sample
    assert torch.equal(before, after)


def test_loop_helper_and_non_main_process(base, tmp_path):
    import torch

    from diffdiag.integrations.loop import attach

    class NotMain:
        is_main_process = False

        def unwrap_model(self, m):
            return m

    idle = attach(base, accelerator=NotMain(), report_dir=tmp_path / "x")
    idle.step(0, torch.tensor(1.0))
    assert idle.finish() is None and not (tmp_path / "x").exists()
    with attach(None, report_dir=tmp_path / "y", diag_interval=5, write_report=False, trackers=(), warn=False) as d:
        for i, v in enumerate(np.exp(np.random.default_rng(0).normal(-2.5, 1.0, 200))):
            d.step(i, torch.tensor(float(v) * (80 if i == 150 else 1)))
    doc = validate_diagnosis(tmp_path / "y" / "diagnosis.json")
    assert [f["location"]["step"] for f in doc["outputs"]["live_findings"]] == [150]


def test_lightning_callback_runs_the_hook_and_cleans_up(base, tmp_path):
    """A real Lightning fit() of the tiny UNet with DiffdiagCallback."""
    pl = pytest.importorskip("lightning.pytorch")
    import copy

    import torch

    from diffdiag.integrations.lightning import DiffdiagCallback
    from diffdiag.integrations.tiny_lora import prompt_embeddings

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"pixel_values": torch.rand(1, 64, 64, generator=g) * 2 - 1,
                    "latents": torch.randn(4, 8, 8, generator=g) * 0.3, "sample_ids": f"img{i:02d}"}

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.unet = copy.deepcopy(base).requires_grad_(True).train()
            self.cond = prompt_embeddings(1, 4)

        def training_step(self, batch, idx):
            x0 = batch["latents"]
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (x0.shape[0],))
            xt = x0 + noise * 0.5
            pred = self.unet(xt, t, self.cond.expand(x0.shape[0], -1, -1)).sample
            return torch.nn.functional.mse_loss(pred, noise)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    cb = DiffdiagCallback(report_dir=tmp_path / "rep", diag_interval=4, write_report=False, trackers=(), warn=False)
    module = Module()
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    trainer.fit(module, torch.utils.data.DataLoader(Data(), batch_size=2))
    assert cb.diagnosis is not None
    doc = validate_diagnosis(tmp_path / "rep" / "diagnosis.json")
    assert doc["inputs"]["hook"]["steps"] == 10
    assert cb.diag.attention and cb.diag.latents and cb.diag.batch_stats[0].sample_ids[0].startswith("img")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.unet.modules())
