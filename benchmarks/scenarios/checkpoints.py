"""Labelled LoRA checkpoint sequences from a real (tiny) diffusers UNet trained with PEFT LoRA.

A tiny ``UNet2DConditionModel`` (config built in code) gets a PEFT LoRA
adapter (``to_q``/``to_k``/``to_v``/``to_out.0``); it is trained with AdamW on
a fixed set of random latents (noise-prediction MSE, DDPM schedule) and a
checkpoint is saved every ``steps_per`` steps, in the three naming schemes:

* ``peft``: ``checkpoint-<step>/adapter_model.safetensors`` + ``adapter_config.json``
  (``get_peft_model_state_dict`` keys, ``lora_A``/``lora_B``);
* ``diffusers``: ``pytorch_lora_weights_<step>.safetensors`` with
  ``….lora.down.weight``/``….lora.up.weight`` keys
  (``diffusers.utils.convert_state_dict_to_diffusers``); that scheme has no alpha,
  so alpha/r is folded into the up factor;
* ``kohya``: ``<name>-step<step:08d>.safetensors`` with ``lora_unet_…`` keys
  (``convert_state_dict_to_kohya`` on the ``unet.``-prefixed PEFT dict), ``.alpha``
  set to ``lora_alpha`` and ``ss_*`` metadata, saved in float16 like kohya does.

Faults are real optimiser events on a parameter group holding the chosen modules:
``explosion`` (the group's LR ×``explosion_lr_factor`` during one interval),
``nonfinite`` (the group's LR = inf on the last step; the sequence ends there),
``collapse`` (decoupled weight decay with lr·wd = 0.3 per step from one
interval on — over-regularisation), ``blowup_decay`` (the LR ×``explosion_lr_factor``
during the first interval, so the LoRA has blown up before the first checkpoint,
then the weight decay of ``collapse`` from ``event_index`` on: an exploded
adapter shrunk by weight decay, not an over-regularised one).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def tiny_unet(seed: int = 0):
    """A ~0.3 M-parameter UNet2DConditionModel (8×8 latents, 4 channels, cross-attention width 32)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)


@dataclass
class CheckpointScenario:
    """A generated checkpoint sequence and its ground truth.

    Attributes
    ----------
    root : Path
    paths : dict of str to list of Path
        Format (``peft``, ``diffusers``, ``kohya``) -> checkpoint files in step order.
    steps : list of int
    modules : list of str
        PEFT module names (``down_blocks.0.….to_q``).
    event : str or None
        ``explosion``, ``nonfinite``, ``collapse``, ``blowup_decay`` or None (healthy).
    event_index : int or None
        Index of the first checkpoint that shows the event.
    event_modules : list of str
        PEFT names of the modules it hits.
    rank, alpha : int
    """

    root: Path
    paths: dict[str, list[Path]]
    steps: list[int]
    modules: list[str]
    event: str | None = None
    event_index: int | None = None
    event_modules: list[str] = field(default_factory=list)
    rank: int = 4
    alpha: int = 8

    def module_name(self, peft_module: str, fmt: str) -> str:
        """The module's name as diffdiag reports it for files in format ``fmt``."""
        if fmt == "kohya":
            return "lora_unet_" + peft_module.replace(".", "_")
        return peft_module

    def checkpoint_name(self, fmt: str, index: int) -> str:
        """The checkpoint's display name as diffdiag reports it."""
        p = self.paths[fmt][index]
        return p.name if fmt != "peft" else f"{p.parent.name}/{p.name}"


def _peft_module(key: str) -> str:
    return key.rsplit(".lora_", 1)[0]


def train_lora_checkpoints(root: str | Path, *, seed: int = 0, n_checkpoints: int = 6, steps_per: int = 6,
                           rank: int = 4, alpha: int = 8, lr: float = 2e-3, event: str | None = None,
                           event_index: int = 3, n_event_modules: int = 2, explosion_lr_factor: float = 300.0,
                           formats: tuple[str, ...] = ("peft", "diffusers", "kohya"),
                           first_step: int | None = None) -> CheckpointScenario:
    """Train a tiny UNet's LoRA and save a checkpoint sequence (see the module docstring).

    Parameters
    ----------
    root : path
        Output folder (one sub-folder per format).
    seed : int
        Seeds the model, the data and the choice of event modules.
    n_checkpoints : int
        Checkpoints saved (the ``nonfinite`` event ends the sequence at ``event_index``).
    steps_per : int
        Optimiser steps between checkpoints; the first checkpoint is at ``first_step``
        (default ``steps_per``).
    event : {None, "explosion", "nonfinite", "collapse", "blowup_decay"}
    event_index : int
        The first checkpoint that shows the event (≥ 1).

    Returns
    -------
    CheckpointScenario
    """
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    root = Path(root)
    rng = np.random.default_rng(seed)
    unet = tiny_unet(seed)
    unet.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TARGETS)
    unet.add_adapter(cfg)
    named = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    modules = sorted({_peft_module(n.replace(".default", "")) for n in named})
    ev_mods: list[str] = []
    if event is not None:
        ev_mods = sorted(rng.choice(modules, size=n_event_modules, replace=False).tolist())
    ev_params = [p for n, p in named.items() if _peft_module(n.replace(".default", "")) in ev_mods]
    rest = [p for n, p in named.items() if _peft_module(n.replace(".default", "")) not in ev_mods]
    groups = [{"params": rest, "lr": lr, "weight_decay": 1e-2}]
    if ev_params:
        groups.append({"params": ev_params, "lr": lr, "weight_decay": 1e-2})
    opt = torch.optim.AdamW(groups, foreach=False)
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(8, 4, 8, 8, generator=g)
    text = torch.randn(8, 4, 32, generator=g)
    betas = torch.linspace(1e-4, 0.02, 1000)
    acp = torch.cumprod(1 - betas, 0)
    first = steps_per if first_step is None else first_step
    steps = [first + i * steps_per for i in range(n_checkpoints)]
    if event == "nonfinite":
        steps = steps[: event_index + 1]
    paths: dict[str, list[Path]] = {f: [] for f in formats}
    step = 0
    for k, target in enumerate(steps):
        while step < target:
            step += 1
            if ev_params:
                grp = opt.param_groups[1]
                grp["lr"], grp["weight_decay"] = lr, 1e-2
                if event == "explosion" and k == event_index:
                    grp["lr"] = lr * explosion_lr_factor
                elif event == "collapse" and k >= event_index:
                    grp["weight_decay"] = 0.3 / lr
                elif event == "nonfinite" and k == event_index and step == target:
                    grp["lr"] = math.inf
                elif event == "blowup_decay" and k == 0:
                    grp["lr"] = lr * explosion_lr_factor
                elif event == "blowup_decay" and k >= event_index:
                    grp["weight_decay"] = 0.3 / lr
            idx = torch.randint(0, 8, (2,), generator=g)
            x0, cond = data[idx], text[idx]
            t = torch.randint(0, 1000, (2,), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            a = acp[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            pred = unet(xt, t, encoder_hidden_states=cond).sample
            loss = torch.nn.functional.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                opt.step()
        sd = {k2: v.detach().clone().contiguous() for k2, v in get_peft_model_state_dict(unet).items()}
        if "peft" in formats:
            d = root / "peft" / f"checkpoint-{target}"
            d.mkdir(parents=True, exist_ok=True)
            save_file(sd, str(d / "adapter_model.safetensors"))
            (d / "adapter_config.json").write_text(json.dumps(
                {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": TARGETS,
                 "use_rslora": False}, indent=2))
            paths["peft"].append(d / "adapter_model.safetensors")
        if "diffusers" in formats:
            d = root / "diffusers"
            d.mkdir(parents=True, exist_ok=True)
            dsd = convert_state_dict_to_diffusers(dict(sd))
            dsd = {k2: (v * (alpha / rank) if ".up." in k2 else v).contiguous() for k2, v in dsd.items()}
            p = d / f"pytorch_lora_weights_{target}.safetensors"
            save_file(dsd, str(p))
            paths["diffusers"].append(p)
        if "kohya" in formats:
            d = root / "kohya"
            d.mkdir(parents=True, exist_ok=True)
            ksd = convert_state_dict_to_kohya({f"unet.{k2}": v for k2, v in sd.items()})
            ksd = {k2: (torch.tensor(float(alpha)) if k2.endswith(".alpha") else v).to(torch.float16).contiguous()
                   for k2, v in ksd.items()}
            p = d / f"mylora-step{target:08d}.safetensors"
            meta = {"ss_steps": str(target), "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                    "ss_network_module": "networks.lora",
                    "ss_optimizer": "torch.optim.adamw.AdamW(weight_decay=0.01,betas=(0.9, 0.999))"}
            save_file(ksd, str(p), metadata=meta)
            paths["kohya"].append(p)
    return CheckpointScenario(root, paths, steps, modules, event, event_index if event else None, ev_mods,
                              rank, alpha)


def dense_reference(up: np.ndarray, down: np.ndarray, scale: float) -> dict[str, Any]:
    """Dense ΔW statistics by full SVD (float64): the reference for the factor-based ones."""
    dw = scale * np.asarray(up, np.float64) @ np.asarray(down, np.float64)
    sv = np.linalg.svd(dw, compute_uv=False)
    fro = float(np.linalg.norm(dw))
    p = sv / sv.sum()
    p = p[p > 0]
    return {"delta": dw, "fro": fro, "spectral": float(sv[0]), "stable_rank": fro ** 2 / float(sv[0]) ** 2,
            "effective_rank": float(np.exp(-np.sum(p * np.log(p))))}
