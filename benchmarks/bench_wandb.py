"""Benchmark: reading a 100k-step offline W&B run (``run-<id>.wandb``) — diffdiag's reader vs the naive loop.

What is timed
-------------
* **diffdiag** — :func:`diffdiag.integrations.wandb_records.read_wandb_file` as
  ``diffdiag analyze --wandb-run DIR`` calls it: LevelDB-log framing, records
  routed by their first protobuf tags, history parsed in two batch protobuf
  parses with items as raw bytes, one ``json.loads`` per key, summary merged;
  result: every key's ``(steps, values)`` as numpy columns plus the final summary.
* **naive baseline** — the textbook loop: the same framing, then every record
  through ``Record.ParseFromString``, every history item through ``json.loads``,
  per-key Python lists turned into numpy at the end, summary updates applied in
  order (what wandb's removed ``DataStore`` + ``json.loads`` readers did).

Both read the same file, written once by the real wandb client in offline mode
(``train/loss``, ``lr``, ``grad_norm`` per step; not timed; cached in
``--cache``), from the page cache, in the same process, best of ``--repeat``.
The two results are checked to be identical.

Run: ``python benchmarks/bench_wandb.py`` (``--steps``, ``--repeat``, ``--cache``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def make_run(cache: Path, steps: int) -> Path:
    """Write (once) an offline run of ``steps`` steps with the real wandb client; return its .wandb file."""
    run_id = f"bench{steps}"
    found = sorted(cache.glob(f"wandb/*run-*-{run_id}/run-{run_id}.wandb"))
    if found:
        return found[-1]
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    print(f"writing a {steps}-step offline run with wandb {wandb.__version__} (once; cached in {cache}) ...",
          file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    loss = rng.gamma(2.0, 0.05, steps)
    loss[steps // 3] = np.nan
    run = wandb.init(project="diffdiag-bench", dir=str(cache), id=run_id,
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    for s in range(steps):
        run.log({"train/loss": float(loss[s]), "lr": 1e-4 * (1 - s / steps), "grad_norm": float(1 + loss[s])},
                step=s)
    run.finish()
    wandb.teardown()
    return Path(run.settings.sync_file)


def naive_read(path: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """Every record parsed, every item json.loads'ed, Python lists per key."""
    from wandb.proto import wandb_internal_pb2 as pb

    from diffdiag.integrations.wandb_records import split_records

    raw, _, _ = split_records(path.read_bytes())
    cols: dict[str, tuple[list, list]] = {}
    summary: dict = {}
    for payload in raw:
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in rec.history.item:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                row[key] = json.loads(item.value_json)
            step = row.pop("_step", rec.history.step.num)
            for k, v in row.items():
                if isinstance(v, (int, float)):
                    s, vals = cols.setdefault(k, ([], []))
                    s.append(step)
                    vals.append(v)
        elif kind == "summary":
            for item in rec.summary.update:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                summary[key] = json.loads(item.value_json)
    out = {k: (np.asarray(s, dtype=np.int64), np.asarray(v, dtype=np.float64)) for k, (s, v) in cols.items()}
    return out, summary


def best_of(fn, repeat: int) -> tuple[float, float, object]:
    """Best wall-clock and best CPU (process) time over ``repeat`` calls, and the last result."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "diffdiag-bench-wandb")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)

    from diffdiag.integrations.wandb_records import read_wandb_file

    path = make_run(args.cache, args.steps)
    size = path.stat().st_size
    path.read_bytes()  # warm the page cache
    t_ours, c_ours, ours = best_of(lambda: read_wandb_file(path), args.repeat)
    t_naive, c_naive, (naive_cols, naive_summary) = best_of(lambda: naive_read(path), args.repeat)
    for key in ("train/loss", "lr", "grad_norm"):
        np.testing.assert_array_equal(ours.scalars[key][0], naive_cols[key][0])
        np.testing.assert_array_equal(ours.scalars[key][1], naive_cols[key][1])
    assert ours.summary["train/loss"] == naive_summary["train/loss"]
    n_rows = len(ours.scalars["train/loss"][0])
    ratio, ratio_cpu = t_naive / t_ours, c_naive / c_ours
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"file: {path} ({size / 1e6:.1f} MB, {ours.n_records} records, {n_rows} history rows); "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"diffdiag reader : {t_ours:7.3f} s wall, {c_ours:7.3f} s CPU  (best of {args.repeat})")
    print(f"naive protobuf  : {t_naive:7.3f} s wall, {c_naive:7.3f} s CPU  (best of {args.repeat})")
    print(f"speed-up        : {ratio:7.1f}x wall, {ratio_cpu:.1f}x CPU  (naive / diffdiag); "
          f"target {args.steps} steps in <= 3 s: {'met' if t_ours <= 3.0 else 'NOT met'} ({t_ours:.2f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"steps": args.steps, "bytes": size, "records": ours.n_records,
                                         "diffdiag_s": t_ours, "naive_s": t_naive, "ratio": ratio,
                                         "diffdiag_cpu_s": c_ours, "naive_cpu_s": c_naive, "ratio_cpu": ratio_cpu,
                                         "load_average": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
