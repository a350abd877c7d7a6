"""Real tiny LoRA trainings that write their weights the way diffusers' ``train_text_to_image_lora.py`` does.

The training is :func:`diffdiag.integrations.tiny_lora.train_lora` (a PEFT LoRA
on the shipped tiny diffusers UNet, AdamW with weight decay 1e-2) with its
trainer-style outputs (``LoraConfig.checkpoint_every``): every ``every`` steps
``checkpoint-<step>/pytorch_lora_weights.safetensors`` (the example's
``save_model_hook``: the PEFT state dict through diffusers' own
``save_lora_weights``, ``lora_A``/``lora_B`` keys under ``unet.``, no alpha),
and at the end ``pytorch_lora_weights.safetensors`` (converted to
``lora.down``/``lora.up`` keys). Added here: the files ``accelerator.save_state``
writes beside them (``optimizer.bin``, ``scheduler.bin``, ``random_states_0.pkl``;
stand-ins, they are not read) and ``logs/hparams.yml``, the run's arguments as
accelerate's TensorBoard tracker writes them (``init_trackers(config=vars(args))``),
with the example's argument names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FINAL = "pytorch_lora_weights.safetensors"


@dataclass
class DiffusersStyleRun:
    """Where a run wrote its logs and weights."""

    out: Path
    logs: Path
    checkpoints: list[Path] = field(default_factory=list)   # checkpoint-N folders, ascending
    final: Path | None = None
    lr: float = 0.0
    peak_lr: float = 0.0
    rank: int = 4
    losses: object = None


def train_diffusers_style(base, out: Path, *, fault: str | None = None, steps: int = 60, every: int = 10,
                          lr: float = 1e-3, rank: int = 4, seed: int = 0) -> DiffusersStyleRun:
    """Train for real and write logs, ``checkpoint-N/`` folders and the final LoRA file into ``out``."""
    import yaml

    from diffdiag.integrations.tiny_lora import LoraConfig, train_lora

    out = Path(out)
    cfg = LoraConfig(workdir=out, steps=steps, lr=lr, rank=rank, fault=fault, seed=seed, save_lora=False,
                     tensorboard=True, jsonl=True, checkpoint_every=every)
    res = train_lora(cfg, base=base)
    folders = sorted((p.parent for p in res.checkpoints if p.parent.name.startswith("checkpoint-")),
                     key=lambda d: int(d.name.split("-")[1]))
    for d in folders:
        for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
            (d / name).write_bytes(b"accelerate state (stand-in)")
    args = {"learning_rate": cfg.peak_lr(), "rank": rank, "train_batch_size": cfg.batch_size,
            "gradient_accumulation_steps": 1, "lr_scheduler": "constant", "lr_warmup_steps": cfg.warmup_steps(),
            "adam_weight_decay": 1e-2, "adam_beta1": 0.9, "adam_beta2": 0.999, "use_8bit_adam": False,
            "mixed_precision": "no", "max_train_steps": steps, "checkpointing_steps": every, "seed": seed,
            "output_dir": str(out)}
    (res.logs / "hparams.yml").write_text(yaml.safe_dump(args))
    return DiffusersStyleRun(out, res.logs, folders, out / FINAL, lr, cfg.peak_lr(), rank, res.losses)


_RUNS: dict[tuple, DiffusersStyleRun] = {}


def cached_run(tmp_path_factory, *, fault: str | None, steps: int = 60, every: int = 10, lr: float = 1e-3,
               rank: int = 4) -> DiffusersStyleRun:
    """One training per set of arguments per test session (shared by the test modules that use it)."""
    key = (fault, steps, every, lr, rank)
    if key not in _RUNS:
        from diffdiag.integrations.tiny_lora import load_or_build_base

        base = load_or_build_base()[0]
        _RUNS[key] = train_diffusers_style(base, tmp_path_factory.mktemp(f"lora-{fault or 'healthy'}"), fault=fault,
                                           steps=steps, every=every, lr=lr, rank=rank)
    return _RUNS[key]
