"""Small real LoRA files for tests: kohya naming, float16 factors, steps in the names and ``ss_steps`` metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def kohya_lora_files(out: Path, steps: list[int], seed: int) -> list[Path]:
    """Write ``out/mylora-step<step:08d>.safetensors`` per step (a healthy trajectory: B grows from 0, A drifts).

    Three rank-4 modules of shape (64, 64) with alpha 4; returns the paths in step order.
    """
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    a = {m: rng.normal(0, 0.1, (4, 64)).astype(np.float32) for m in ("to_q", "to_k", "to_v")}
    b = {m: np.zeros((64, 4), np.float32) for m in a}
    paths = []
    for st in steps:
        t = {}
        for m in a:
            a[m] = a[m] + rng.normal(0, 0.01, a[m].shape).astype(np.float32)
            b[m] = b[m] + rng.normal(0, 0.01, b[m].shape).astype(np.float32)
            t[f"lora_unet_mid_block_attn1_{m}.lora_down.weight"] = a[m].astype(np.float16)
            t[f"lora_unet_mid_block_attn1_{m}.lora_up.weight"] = b[m].astype(np.float16)
            t[f"lora_unet_mid_block_attn1_{m}.alpha"] = np.array(4.0, np.float16)
        p = out / f"mylora-step{st:08d}.safetensors"
        save_file(t, str(p), metadata={"ss_steps": str(st)})
        paths.append(p)
    return paths
