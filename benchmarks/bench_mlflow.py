"""Pulling metric histories from MLflow: diffdiag's source vs sequential ``get_metric_history``.

A run with 4 metrics x N steps (default 100,000) is logged into a SQLite
store, a real ``mlflow server`` (127.0.0.1, 1 worker) is started on it, and
both ways of reading every history are timed side by side in one process,
alternating, best of ``--repeat``:

* baseline: ``MlflowClient.get_metric_history(run_id, key)`` for each key in turn
  (what a script would write; MLflow pages internally);
* diffdiag: :func:`diffdiag.integrations.mlflow_source.read_mlflow_run` (probe,
  paged REST ``get-history`` for all keys concurrently, parsed straight into
  arrays; plus params/tags/artifact listing).

The same comparison runs against the embedded SQLite store (no server).
Prints the ratios (baseline time / diffdiag time; > 1 means diffdiag is faster)
and writes ``benchmarks/results/bench_mlflow.json``.

Usage: ``python benchmarks/bench_mlflow.py [--steps 100000] [--repeat 2]``
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

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
KEYS = ("loss", "ema_loss", "lr", "grad_norm")


def log_run(uri: str, n: int, seed: int = 0) -> str:
    """Create a FINISHED run with 4 metrics x n steps in the SQLite store at ``uri``; return its id.

    The points are bulk-inserted through MLflow's own table models (SQLAlchemy
    Core): ``log_batch`` (1,000 points a call) would take minutes for 400k
    points, and how they got there does not change how they are read.
    """
    from mlflow import MlflowClient
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric

    client = MlflowClient(uri)
    exp = client.create_experiment("bench", artifact_location=Path(uri[len("sqlite:///"):]).parent.joinpath(
        "artifacts").as_uri())
    rid = client.create_run(exp).info.run_id
    rng = np.random.default_rng(seed)
    t0 = int(time.time() * 1000)
    store = client._tracking_client.store
    with store.ManagedSessionMaker() as session:
        for k in KEYS:
            vals = rng.random(n)
            session.execute(SqlMetric.__table__.insert(), [
                {"key": k, "value": float(vals[s]), "timestamp": t0 + s, "step": s, "is_nan": False,
                 "run_uuid": rid} for s in range(n)])
            session.execute(SqlLatestMetric.__table__.insert(), [
                {"key": k, "value": float(vals[-1]), "timestamp": t0 + n - 1, "step": n - 1, "is_nan": False,
                 "run_uuid": rid}])
    client.set_terminated(rid)
    return rid


def baseline(uri: str, rid: str) -> dict[str, int]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return {k: len(client.get_metric_history(rid, k)) for k in KEYS}


def diffdiag_source(uri: str, rid: str) -> dict[str, int]:
    from diffdiag.integrations.mlflow_source import read_mlflow_run
    from diffdiag.model import RunData, Settings

    run = RunData()
    read_mlflow_run(rid, run, Settings(), tracking_uri=uri)
    return {k: len(run.log.scalars[k]) for k in KEYS}


def timed(fn, *a) -> tuple[float, dict]:
    t = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t, out


def compare(uri: str, rid: str, n: int, repeat: int) -> dict:
    tb, td = [], []
    for _ in range(repeat):
        t, out = timed(baseline, uri, rid)
        assert out == {k: n for k in KEYS}, out
        tb.append(t)
        t, out = timed(diffdiag_source, uri, rid)
        assert out == {k: n for k in KEYS}, out
        td.append(t)
    return {"baseline_s": min(tb), "diffdiag_s": min(td), "ratio": min(tb) / min(td),
            "baseline_all_s": tb, "diffdiag_all_s": td}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from diffdiag.integrations.mlflow_store import sqlite_uri, start_server

    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp:
        root = Path(tmp)
        os.environ["DIFFDIAG_CACHE"] = str(root / "cache")
        uri = sqlite_uri(root / "mlflow.db")
        t = time.perf_counter()
        rid = log_run(uri, args.steps)
        print(f"logged 4 x {args.steps} points in {time.perf_counter() - t:.1f} s")
        results = {"steps": args.steps, "metrics": len(KEYS), "repeat": args.repeat,
                   "embedded": compare(uri, rid, args.steps, args.repeat)}
        e = results["embedded"]
        print(f"embedded sqlite: get_metric_history x4 {e['baseline_s']:.2f} s, diffdiag {e['diffdiag_s']:.2f} s, "
              f"ratio {e['ratio']:.2f}x")
        with start_server(root, timeout=180) as server:
            s = results["server"] = compare(server.url, rid, args.steps, args.repeat)
        print(f"mlflow server:   get_metric_history x4 {s['baseline_s']:.2f} s, diffdiag {s['diffdiag_s']:.2f} s, "
              f"ratio {s['ratio']:.2f}x")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_mlflow.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
