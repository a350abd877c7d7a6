"""Cost of the in-training hook: the same real LoRA training loop with and without it, in one run.

Reports, side by side:

* ms per training step without the hook and with ``LossDiagnostics`` at the
  default interval (``DiagConfig().diag_interval``: latents, batch statistics
  and cross-attention maps every interval, the loss every step), interleaved
  A/B/A/B to share the machine's drift, and the overhead as a ratio;
* the time spent inside the hook's own calls as a share of the loop (a
  low-noise estimate of the same overhead);
* the scalar-only ``log_step`` (float loss, and 0-d tensor loss) in µs per call.

Targets (issue 7): overhead <= 1 % of step time; scalar ``log_step`` <= 20 µs.

Run: ``python benchmarks/bench_hook.py [--steps 300] [--repeats 2] [--threads 2]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=100_000)
    a = ap.parse_args(argv)

    import torch

    from diffdiag.integrations import tiny_lora as T
    from diffdiag.integrations.hook import DiagConfig, DiagnosticWarning, LossDiagnostics

    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore", DiagnosticWarning)
    base, info = T.load_or_build_base(threads=a.threads, log=lambda s: print(s, flush=True))
    interval = DiagConfig().diag_interval
    tmp = Path(tempfile.mkdtemp(prefix="bench-hook-"))

    class Timed(LossDiagnostics):
        """LossDiagnostics that adds up the time spent in its own log_step calls."""

        spent = 0.0

        def log_step(self, *args, **kw):
            t = time.perf_counter()
            super().log_step(*args, **kw)
            self.spent += time.perf_counter() - t

    plain, hooked, shares = [], [], []
    for r in range(a.repeats):
        for with_hook in (False, True):
            hook = Timed(DiagConfig(report_dir=tmp / f"rep{r}", trackers=(), warn=False)) if with_hook else None
            cfg = T.LoraConfig(workdir=tmp / "run", steps=a.steps, tensorboard=False, jsonl=False, save_lora=False,
                               threads=a.threads, seed=r)
            res = T.train_lora(cfg, base=base, hook=hook)
            ms = res.seconds / a.steps * 1000
            (hooked if with_hook else plain).append(ms)
            if hook is not None:
                shares.append(hook.spent / res.seconds)
                hook.close()
            print(f"  repeat {r}: {'with' if with_hook else 'without'} hook {ms:.2f} ms/step", flush=True)

    # scalar-only log_step
    d = LossDiagnostics(DiagConfig(report_dir=tmp / "scalar", trackers=(), warn=False))
    rng = __import__("random").Random(0)
    vals = [0.1 * (1 + rng.random()) for _ in range(1000)]
    t = time.perf_counter()
    for i in range(a.calls):
        d.log_step(i, vals[i % 1000], 0.12)
    us_float = (time.perf_counter() - t) / a.calls * 1e6
    tens = [torch.tensor(v) for v in vals]
    ema = torch.tensor(0.12)
    t = time.perf_counter()
    for i in range(a.calls):
        d.log_step(a.calls + i, tens[i % 1000], ema)
    us_tensor = (time.perf_counter() - t) / a.calls * 1e6

    p, h = statistics.median(plain), statistics.median(hooked)
    over = h / p - 1
    share = statistics.median(shares)
    print()
    print(f"bench_hook: tiny UNet LoRA loop, batch 2, {a.steps} steps x {a.repeats} repeats, "
          f"{a.threads} torch threads, diag_interval={interval}")
    print(f"  step time without hook : {p:.2f} ms")
    print(f"  step time with hook    : {h:.2f} ms   (ratio {h / p:.4f}, overhead {over * 100:+.2f} %)")
    print(f"  time inside log_step   : {share * 100:.3f} % of the loop (target <= 1 %: "
          f"{'OK' if share <= 0.01 else 'OVER'})")
    print(f"  scalar log_step (float)      : {us_float:.2f} us/call (target <= 20 us: "
          f"{'OK' if us_float <= 20 else 'OVER'})")
    print(f"  scalar log_step (0-d tensor) : {us_tensor:.2f} us/call (target <= 20 us: "
          f"{'OK' if us_tensor <= 20 else 'OVER'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
