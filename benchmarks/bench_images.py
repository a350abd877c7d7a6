"""Image-analysis speed, side by side with a plain numpy.fft baseline, in one run.

    python benchmarks/bench_images.py [--reps 5] [--no-dataset]

Times one reference/output pair through EVERY image analyzer (degenerate test,
crop offset by phase correlation, tile periods of both images, period-doubling
test, stripes with the content check, noisy patches, heatmap and anomaly
boxes — nothing short-circuited) at 512² and at 2048², next to the plain
baseline ``numpy.fft.fft2`` of the same two images (float64, no analysis).
Targets (issue 3): 512² pair ≤ 150 ms, 2048² pair ≤ 2 s. Best of ``--reps``,
as wall time and as CPU time of this process (all threads): on a shared,
loaded machine the wall time inflates, the CPU time much less.

At the end it runs ``benchmarks/bench_dataset.py``'s ``main()`` when that
module exists, so one run reports both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scenarios.images import _crop, photo, rerender, stripe_pattern  # noqa: E402
from diffdiag.analyzers import pixel, stripes, tiling  # noqa: E402

TARGETS = {512: 0.150, 2048: 2.0}


def make_pair(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A real-photo pair of ``size``² (RGB): reference, and a JPEG'd output with a band of vertical stripes."""
    rng = np.random.default_rng(seed)
    ref = _crop(photo("retina" if size > 1024 else "astronaut"), size, size, rng)
    out = rerender(ref, "jpeg", rng)
    x0, x1, y0, y1 = size // 5, size // 2, size // 4, 3 * size // 4
    out[y0:y1, x0:x1] = np.clip(out[y0:y1, x0:x1] + stripe_pattern(x1 - x0, True, 9, 0.05, rng)[None, :, None], 0, 1)
    return ref.astype(np.float32), out.astype(np.float32)


def every_analyzer(ref: np.ndarray, out: np.ndarray) -> dict:
    """Run every image analyzer on the pair (no early exits); return a small summary."""
    from scipy.ndimage import laplace

    from diffdiag.analyzers.spectral import to_gray

    pixel.degenerate_problem(out)
    pixel.degenerate_problem(ref)
    boxes = pixel.anomaly_boxes(pixel.error_map(out, ref))
    pixel.heatmap(out, ref, scale=4.0)
    out, ref = to_gray(out), to_gray(ref)  # as the check does: luma once
    off = pixel.crop_offset(out, ref)
    rp = tiling.periodicity(ref)
    op = tiling.periodicity(out)
    dbl = tiling.period_doubling(out, ref, ref_period=rp) if rp.found else None
    g = ref
    bands = stripes.find_stripes(out - g, stripes.edge_weights(ref), noise_floor=stripes.IMAGE_NOISE_FLOOR,
                                 min_amplitude=stripes.IMAGE_MIN_AMPLITUDE, explain=[-laplace(g), g, g * g])
    patches = pixel.noise_patches(out, ref)
    return {"shift": off.shift_px, "ref_period": rp.period_px, "out_period": op.period_px,
            "doubled": None if dbl is None else dbl.axes,
            "stripes": [(s.axis, s.period_px) for s in bands], "patches": len(patches), "boxes": len(boxes)}


def baseline(ref: np.ndarray, out: np.ndarray) -> None:
    """Plain numpy.fft: the 2-D FFT magnitude of both (grey) images."""
    for a in (ref, out):
        np.abs(np.fft.fft2(a.mean(axis=2)))


def best(f, *a, reps: int = 5) -> tuple[float, float, object]:
    """Best wall time and best CPU time (all threads of this process) over ``reps`` runs."""
    times, cpus, res = [], [], None
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        res = f(*a)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(times), min(cpus), res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-dataset", action="store_true", help="do not run bench_dataset.main() afterwards")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    rows = {}
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"image benchmark: {os.cpu_count()} CPUs, load average {load:.1f} (wall times inflate with load; "
          f"CPU times much less)")
    print(f"{'pair':>10} {'diffdiag wall':>14} {'numpy.fft wall':>15} {'ratio':>6} {'diffdiag CPU':>13} "
          f"{'numpy CPU':>10} {'ratio':>6} {'target':>7}  wall / CPU")
    for size in (512, 2048):
        ref, out = make_pair(size)
        every_analyzer(ref, out)  # warm-up (imports, caches)
        t_ours, c_ours, summary = best(every_analyzer, ref, out,
                                       reps=args.reps if size == 512 else max(2, args.reps // 2))
        t_base, c_base, _ = best(baseline, ref, out, reps=args.reps)
        ok, ok_cpu = t_ours <= TARGETS[size], c_ours <= TARGETS[size]
        rows[size] = {"diffdiag_s": t_ours, "numpy_fft_s": t_base, "ratio": t_ours / t_base,
                      "diffdiag_cpu_s": c_ours, "numpy_fft_cpu_s": c_base, "cpu_ratio": c_ours / max(c_base, 1e-9),
                      "target_s": TARGETS[size], "meets_target": ok, "meets_target_cpu": ok_cpu,
                      "load_average": load, "summary": summary}
        print(f"{size:>6}²px {t_ours * 1000:>11.0f} ms {t_base * 1000:>12.0f} ms {t_ours / t_base:>5.1f}x "
              f"{c_ours * 1000:>10.0f} ms {c_base * 1000:>7.0f} ms {c_ours / max(c_base, 1e-9):>5.1f}x "
              f"{TARGETS[size] * 1000:>5.0f}ms  {'OK' if ok else 'SLOW'} / {'OK' if ok_cpu else 'SLOW'}")
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in rows.items()}, indent=2, default=str))
    if not args.no_dataset:
        try:
            from benchmarks import bench_dataset  # written by the dataset-health owner
        except ImportError:
            print("(benchmarks/bench_dataset.py not present: dataset-health figures skipped)")
        else:
            print()
            bench_dataset.main()
    return rows


if __name__ == "__main__":
    main()
