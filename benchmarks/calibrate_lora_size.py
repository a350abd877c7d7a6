"""Calibration of the LoRA size thresholds (``diffdiag.analyzers.checkpoints.OVERSIZE_*``) on real trainings.

Trains the project's tiny diffusers UNet LoRA (:func:`diffdiag.integrations.tiny_lora.train_lora`:
PEFT, AdamW with weight decay 1e-2, alpha = rank) at several ranks, learning rates and lengths,
healthy and with the LR warmed up to 100x (``lr_too_high``), and records at a few steps the
relative size of every module's update, ``ρ = ‖ΔW‖_F / ‖W₀‖_F`` against the real base layer it
adapts (dense ΔW = scale · B·A), with its spectrum (effective rank, top-1 energy share).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.calibrate_lora_size [--quick] [--out FILE.md]``
(full: 8 runs, about 15 min on one busy CPU core; ``--quick``: 3 runs of 60 steps).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

FULL = [dict(lr=1e-4, rank=4, steps=400), dict(lr=1e-3, rank=4, steps=200), dict(lr=3e-3, rank=4, steps=400),
        dict(lr=1e-3, rank=16, steps=400), dict(lr=1e-3, rank=32, steps=400), dict(lr=2e-3, rank=8, steps=400, seed=1),
        dict(lr=1e-3, rank=4, steps=1000, seed=2), dict(lr=1e-3, rank=4, steps=200, fault="lr_too_high"),
        dict(lr=1e-3, rank=16, steps=200, fault="lr_too_high")]
QUICK = [dict(lr=1e-3, rank=4, steps=60), dict(lr=3e-3, rank=16, steps=60),
         dict(lr=1e-3, rank=4, steps=60, fault="lr_too_high")]
SNAPSHOTS = (10, 25, 50, 100, 200, 400, 1000)


def module_sizes(unet) -> dict[str, tuple[float, float, float]]:
    """``{module: (ρ, effective rank, top-1 energy)}`` of a PEFT-adapted UNet (adapter ``default``)."""
    from diffdiag.analyzers.checkpoints import lora_stats

    out = {}
    for name, mod in unet.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            a = mod.lora_A["default"].weight.detach().double().numpy()
            b = mod.lora_B["default"].weight.detach().double().numpy()
            st = lora_stats(b, a, mod.scaling["default"])
            w0 = float(np.linalg.norm(mod.base_layer.weight.detach().double().numpy()))
            top1 = st.spectral ** 2 / st.fro ** 2 if st.fro > 0 else float("nan")
            out[name] = (st.fro / w0, st.effective_rank, top1)
    return out


class _Snapshots:
    def __init__(self, at: set[int]) -> None:
        self.at, self.rows = at, {}

    def log_step(self, step, loss, ema, model=None, batch=None, **kw) -> None:
        if step + 1 in self.at:
            self.rows[step + 1] = module_sizes(model)


def calibrate(configs: list[dict], workdir: Path, say=print) -> list[dict]:
    from diffdiag.integrations.tiny_lora import LoraConfig, load_or_build_base, train_lora

    base, _ = load_or_build_base()
    results = []
    for c in configs:
        t0 = time.perf_counter()
        snap = _Snapshots({s for s in SNAPSHOTS if s <= c["steps"]} | {c["steps"]})
        cfg = LoraConfig(workdir=workdir, steps=c["steps"], lr=c["lr"], rank=c["rank"], fault=c.get("fault"),
                         seed=c.get("seed", 0), tensorboard=False, jsonl=False, save_lora=False)
        res = train_lora(cfg, base=base, hook=snap)
        results.append({"config": c, "snapshots": snap.rows, "final_loss": float(np.nanmedian(res.losses[-20:]))})
        say(f"  {c}: {time.perf_counter() - t0:.0f} s")
    return results


def table(results: list[dict]) -> str:
    lines = ["| run | final loss | step | median ρ | max ρ | max/median | median eff. rank | median top-1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        c = r["config"]
        label = f"{c.get('fault') or 'healthy'} lr={c['lr']:g} r={c['rank']} seed={c.get('seed', 0)}"
        for step, mods in sorted(r["snapshots"].items()):
            rho = np.array([m[0] for m in mods.values()])
            lines.append(f"| {label} | {r['final_loss']:.3f} | {step} | {np.median(rho):.3g} | {rho.max():.3g} | "
                         f"{rho.max() / np.median(rho):.1f} | {np.median([m[1] for m in mods.values()]):.2f} | "
                         f"{np.median([m[2] for m in mods.values()]):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 runs of 60 steps")
    ap.add_argument("--out", help="write the table (markdown) here too")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = calibrate(QUICK if a.quick else FULL, Path(tmp) / "run", say=lambda s: print(s, file=sys.stderr))
    text = table(results)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
