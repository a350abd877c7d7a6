"""Real tiny LoRA trainings that write their weights the way diffusers' ``train_text_to_image_lora.py`` does.

The training is :func:`diffdiag.integrations.tiny_lora.train_lora` (a PEFT LoRA
on the shipped tiny diffusers UNet, AdamW with weight decay 1e-2); a small
step callback saves what the diffusers example saves:

* every ``every`` steps, ``checkpoint-<step>/`` with the LoRA written by the
  example's ``save_model_hook``: ``get_peft_model_state_dict(unet)`` through
  diffusers' own ``StableDiffusionLoraLoaderMixin.save_lora_weights`` (PEFT-style
  ``lora_A``/``lora_B`` keys under ``unet.``, no alpha, no adapter metadata) —
  beside the files ``accelerator.save_state`` writes (``optimizer.bin``,
  ``scheduler.bin``, ``random_states_0.pkl``; stand-ins here, they are not read);
* at the end, ``pytorch_lora_weights.safetensors`` in the output folder:
  ``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))`` saved the
  same way (``lora.down``/``lora.up`` keys);
* ``logs/hparams.yml``, the run's arguments as accelerate's TensorBoard tracker
  writes them (``init_trackers(config=vars(args))``), with the example's
  argument names.
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


def _save(unet, folder: Path, *, convert: bool) -> None:
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    sd = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    if convert:
        sd = convert_state_dict_to_diffusers(sd)
    StableDiffusionLoraLoaderMixin.save_lora_weights(save_directory=str(folder), unet_lora_layers=sd,
                                                     safe_serialization=True)


class _Saver:
    """The step callback: saves ``checkpoint-<step>`` folders (steps counted from 1, as the example's global_step)."""

    def __init__(self, out: Path, every: int) -> None:
        self.out, self.every, self.saved = out, every, []

    def log_step(self, step, loss, ema, model=None, batch=None, **kw) -> None:
        global_step = step + 1
        if global_step % self.every == 0:
            d = self.out / f"checkpoint-{global_step}"
            d.mkdir(parents=True, exist_ok=True)
            _save(model, d, convert=False)
            for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
                (d / name).write_bytes(b"accelerate state (stand-in)")
            self.saved.append(d)


def train_diffusers_style(base, out: Path, *, fault: str | None = None, steps: int = 60, every: int = 10,
                          lr: float = 1e-3, rank: int = 4, seed: int = 0) -> DiffusersStyleRun:
    """Train for real and write logs, ``checkpoint-N/`` folders and the final LoRA file into ``out``."""
    import yaml

    from diffdiag.integrations.tiny_lora import LoraConfig, _lr_schedule, train_lora

    out = Path(out)
    saver = _Saver(out, every)
    cfg = LoraConfig(workdir=out, steps=steps, lr=lr, rank=rank, fault=fault, seed=seed, save_lora=False,
                     tensorboard=True, jsonl=True)
    res = train_lora(cfg, base=base, hook=saver)
    _save(res.model, out, convert=True)
    peak = _lr_schedule(cfg)(steps)
    args = {"learning_rate": peak, "rank": rank, "train_batch_size": cfg.batch_size,
            "gradient_accumulation_steps": 1, "lr_scheduler": "constant", "lr_warmup_steps": max(1, steps // 5),
            "adam_weight_decay": 1e-2, "adam_beta1": 0.9, "adam_beta2": 0.999, "use_8bit_adam": False,
            "mixed_precision": "no", "max_train_steps": steps, "checkpointing_steps": every, "seed": seed,
            "output_dir": str(out)}
    (res.logs / "hparams.yml").write_text(yaml.safe_dump(args))
    return DiffusersStyleRun(out, res.logs, list(saver.saved), out / FINAL, lr, peak, rank, res.losses)


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
