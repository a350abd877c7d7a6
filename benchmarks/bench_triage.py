"""Triage throughput on both engines, beside a plain sequential loop, and driver memory of a dataset scan.

    python benchmarks/bench_triage.py [--runs 50] [--steps 800] [--images 2000] [--memory-images 20000]
                                      [--skip-ray] [--out benchmarks/results/bench_triage.json]

Builds, in a temporary folder:

* ``--runs`` training-log folders from the labelled generators of
  ``benchmarks/scenarios/loss_logs.py`` (healthy, spikes, NaN, LR too high; ``--steps``
  logged steps each);
* a dataset of ``--images`` images (photo crops, PNG and JPEG, ``--size`` px, default 128)
  and, for the memory figure, ``--images`` images of 64 px and ``--memory-images`` images
  made of hard links to them (in sub-folders): the driver keeps a few numbers per
  image whatever its size, so small images keep that part short.

Then, each measurement in a fresh process so its numbers are its own:

1. **runs/s** — a plain sequential loop over the runs in one process
  (:func:`diffdiag.triage.worker.analyse_run`, what every engine runs), then
  ``diffdiag triage`` with the local engine on 1 and 2 workers and with Ray (a local Ray
  of 1 and 2 CPUs; the Ray start is timed apart);
2. **images/s** — the dataset scan in one process (the sequential loop), the local
  engine on 2 workers, Ray Data on 1 and 2 CPUs (after a small warm-up scan: Ray Data
  starts its executor once per job);
3. **peak driver memory** — the scan of ``--memory-images`` images and of ``--images``
  images on the local engine and on Ray, sampled every 50 ms: the driver holds only
  the scan's numbers (about a hundred bytes per image), so its memory stays flat.

Every figure is printed beside the sequential loop's as a ratio, and the CPU time is
reported too: on a shared machine the wall clock depends on the load, CPU seconds per
run/image do not. Results go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ----------------------------------------------------------------------------- measuring
class Monitor:
    """Peak RSS of this process (the driver) and CPU time of its whole tree, sampled every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.base = self.me.memory_info().rss
        self.peak = self.base
        self.cpu: dict[int, float] = {}
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _sample(self) -> None:
        import psutil

        self.peak = max(self.peak, self.me.memory_info().rss)
        for p in [self.me] + self.me.children(recursive=True):
            try:
                ct = p.cpu_times()
                self.cpu[p.pid] = ct.user + ct.system
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self.stop:
            self._sample()
            time.sleep(0.05)

    def done(self) -> dict:
        self._sample()
        self.stop = True
        self.t.join()
        return {"driver_peak_mb": round(self.peak / 2**20, 1),
                "driver_growth_mb": round((self.peak - self.base) / 2**20, 1),
                "cpu_seconds_local_tree": round(sum(self.cpu.values()), 2)}


def _start_ray(cpus: int) -> float:
    import logging

    import ray

    t = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- jobs (each in its own process)
def job_runs(cfg: dict) -> dict:
    from diffdiag.model import Settings
    from diffdiag.triage import TriageOptions, triage
    from diffdiag.triage.engines import LocalEngine, RayEngine
    from diffdiag.triage.refs import classify
    from diffdiag.triage.worker import Task, analyse_run

    runs, out = cfg["runs"], Path(cfg["out"])
    out_info: dict = {}
    if cfg["engine"] == "ray":
        out_info["ray_start_s"] = round(_start_ray(cfg["workers"]), 2)
    mon = Monitor()
    t = time.perf_counter()
    if cfg["engine"] == "sequential":
        rows = []
        for i, ref in enumerate(runs):
            entry = analyse_run(Task(classify(ref), None, str(out), f"runs/{i}", Settings()))
            rows.append(entry["row"])
    else:
        engine = LocalEngine(cfg["workers"]) if cfg["engine"] == "local" else RayEngine(cfg["workers"])
        with engine:
            rows = triage(TriageOptions(runs=runs, report_dir=out, progress=False), engine=engine).rows
    wall = time.perf_counter() - t
    m = mon.done()
    cpu = m["cpu_seconds_local_tree"]  # a local Ray's raylet and workers are in the driver's process tree
    verdicts: dict[str, int] = {}
    for r in rows:
        verdicts[str(r["verdict"])] = verdicts.get(str(r["verdict"]), 0) + 1
    return {**out_info, "n": len(rows), "wall_s": round(wall, 2), "per_s": round(len(rows) / wall, 3),
            "cpu_s": round(cpu, 1), "cpu_s_per_item": round(cpu / max(1, len(rows)), 3), "verdicts": verdicts,
            "driver_peak_mb": m["driver_peak_mb"]}


def job_images(cfg: dict) -> dict:
    from diffdiag.sources.dataset import load_dataset
    from diffdiag.triage.ray_dataset import scan_dataset_ray

    folder = cfg["folder"]
    info: dict = {}
    if cfg["engine"] == "ray":
        info["ray_start_s"] = round(_start_ray(cfg["workers"]), 2)
        t = time.perf_counter()
        scan_dataset_ray(cfg["warmup"], workers=cfg["workers"])  # Ray Data starts its executor once per job
        info["ray_data_warmup_s"] = round(time.perf_counter() - t, 2)
    mon = Monitor()
    t = time.perf_counter()
    if cfg["engine"] == "ray":
        scan = scan_dataset_ray(folder, workers=cfg["workers"])
    else:  # workers=1: the scan runs in this process (the plain sequential loop over analyze_image)
        scan = load_dataset(folder, progress=False, workers=cfg["workers"])
    wall = time.perf_counter() - t
    m = mon.done()
    n = len(scan.files) + len(scan.unreadable)
    cpu = m["cpu_seconds_local_tree"]
    return {**info, "n": n, "wall_s": round(wall, 2), "per_s": round(n / wall, 1), "cpu_s": round(cpu, 1),
            "cpu_ms_per_image": round(1000 * cpu / max(1, n), 2), **m}


def _child(job: str, cfg: dict, timeout: float = 7200) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DIFFDIAG_STRICT="")
    code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); "
            f"from benchmarks.bench_triage import {job}; print('RESULT', json.dumps({job}(json.loads(sys.argv[1]))))")
    p = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, env=env,
                       timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{job} {cfg.get('engine')} failed:\n{p.stderr[-3000:]}")


# ----------------------------------------------------------------------------- inputs
def make_runs(root: Path, n: int, steps: int) -> list[str]:
    from benchmarks.scenarios import loss_logs as L

    kinds = [("healthy", L.healthy), ("healthy", L.healthy), ("spikes", L.injected_spikes),
             ("nan", L.nonfinite), ("lr", L.lr_too_high)]
    out = []
    for i in range(n):
        name, gen = kinds[i % len(kinds)]
        d = root / f"run{i:03d}-{name}"
        d.mkdir(parents=True)
        L.write_csv(gen(n_steps=steps, seed=i), d / "train.csv")
        out.append(str(d))
    return out


def make_images(root: Path, n: int, size: int = 128) -> Path:
    import numpy as np
    from PIL import Image

    from benchmarks.scenarios.datasets import photo_crop

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        img = photo_crop(rng, size)
        fmt = "png" if i % 2 else "jpg"
        Image.fromarray(img).save(root / f"img_{i:05d}.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))
    return root


def link_copies(src: Path, dest: Path, copies: int) -> Path:
    for c in range(copies):
        d = dest / f"part{c:02d}"
        d.mkdir(parents=True)
        for p in sorted(src.iterdir()):
            os.link(p, d / p.name)
    return dest


# ----------------------------------------------------------------------------- main
def _table(title: str, rows: dict[str, dict], unit: str) -> None:
    base = rows.get("sequential")
    print(f"\n{title}")
    print(f"  {'config':<12} {unit:>10} {'x loop':>8} {'CPU s/item':>11} {'wall s':>8}  notes")
    for name, r in rows.items():
        ratio = r["per_s"] / base["per_s"] if base else float("nan")
        per_item = r.get("cpu_s_per_item", r.get("cpu_ms_per_image", 0) / 1000)
        notes = ", ".join(f"{k}={r[k]}" for k in ("ray_start_s", "ray_data_warmup_s", "driver_peak_mb") if k in r)
        print(f"  {name:<12} {r['per_s']:>10} {ratio:>8.2f} {per_item:>11.3f} {r['wall_s']:>8}  {notes}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--memory-images", type=int, default=20000)
    ap.add_argument("--size", type=int, default=128, help="side of the throughput images, px")
    ap.add_argument("--skip-ray", action="store_true", help="local engine only (ray not installed)")
    ap.add_argument("--parts", default="runs,images,memory", help="which measurements (comma-separated)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_triage.json"))
    args = ap.parse_args()
    try:
        import ray  # noqa: F401
        have_ray = not args.skip_ray
    except ModuleNotFoundError:
        have_ray = False
    results: dict = {"config": vars(args), "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-triage-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        parts = set(args.parts.split(","))
        runs = make_runs(root / "runs", args.runs, args.steps) if "runs" in parts else []
        images = make_images(root / "images", args.images, size=args.size) if "images" in parts else None
        warm = make_images(root / "warmup", 64, size=64)
        copies = max(1, -(-args.memory_images // args.images))
        small = big = None
        if "memory" in parts:
            # the driver keeps numbers per image, whatever its size: small images keep the run short
            # (64 px: smaller crops of photos often show a spurious tile period, whose features the scan keeps)
            small = make_images(root / "mem-small", args.images, size=64)
            big = link_copies(small, root / "mem-large", copies)
        print(f"inputs: {len(runs)} runs x {args.steps} steps, {args.images} images, {copies * args.images} "
              f"images (linked) in {time.perf_counter() - t:.0f} s; load average {results['load_avg']:.1f}")
        run_cfgs = [("sequential", "sequential", 1), ("local-1", "local", 1), ("local-2", "local", 2)]
        img_cfgs = [("sequential", "local", 1), ("local-2", "local", 2)]
        if have_ray:
            run_cfgs += [("ray-1", "ray", 1), ("ray-2", "ray", 2)]
            img_cfgs += [("ray-1", "ray", 1), ("ray-2", "ray", 2)]
        rr: dict = {}
        for name, engine, workers in run_cfgs if "runs" in parts else []:
            rr[name] = _child("job_runs", {"engine": engine, "workers": workers, "runs": runs,
                                           "out": str(root / f"triage-{name}")})
            print(f"  runs {name}: {rr[name]}", flush=True)
        verdicts = {json.dumps(r["verdicts"], sort_keys=True) for r in rr.values()}
        assert len(verdicts) <= 1, f"the engines disagree: {verdicts}"
        ri: dict = {}
        for name, engine, workers in img_cfgs if "images" in parts else []:
            ri[name] = _child("job_images", {"engine": engine, "workers": workers, "folder": str(images),
                                             "warmup": str(warm)})
            print(f"  images {name}: {ri[name]}", flush=True)
        mem: dict = {}
        for engine, workers in ([("local", 2)] + ([("ray", 2)] if have_ray else [])) if "memory" in parts else []:
            for label, folder in (("small", small), ("large", big)):
                r = _child("job_images", {"engine": engine, "workers": workers, "folder": str(folder),
                                          "warmup": str(warm)})
                mem[f"{engine}-{label}"] = r
                print(f"  memory {engine} {r['n']} images: {r}", flush=True)
    results.update(runs=rr, images=ri, memory=mem)
    if rr:
        _table(f"runs/s over {args.runs} runs ({args.steps} steps each; load, analyse, report as diffdiag analyze)",
               rr, "runs/s")
    if ri:
        _table(f"images/s over {args.images} images ({args.size} px)", ri, "images/s")
    print("\npeak driver memory of the dataset scan (RSS, MB)")
    per_image = {}
    for engine in ("local", "ray"):
        s, lg = mem.get(f"{engine}-small"), mem.get(f"{engine}-large")
        if s and lg:
            slope = (lg["driver_peak_mb"] - s["driver_peak_mb"]) * 2**20 / max(1, lg["n"] - s["n"])
            per_image[engine] = round(slope, 1)
            print(f"  {engine:<6} {s['n']:>6} images: {s['driver_peak_mb']:>7} MB   {lg['n']:>6} images: "
                  f"{lg['driver_peak_mb']:>7} MB   -> {slope:.0f} bytes per extra image")
    results["driver_bytes_per_image"] = per_image
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
