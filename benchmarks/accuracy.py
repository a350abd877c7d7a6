"""Diagnostic accuracy over the labelled scenarios: ``diffdiag analyze`` on every case, a confusion table.

Usage::

    python -m benchmarks.accuracy            # every scenario
    python -m benchmarks.accuracy --fast     # the fast subset (the one tests/test_scenarios.py runs)
    python -m benchmarks.accuracy --only stripes --keep /tmp/acc   # a subset; keep inputs and reports
    python -m benchmarks.accuracy --list
    python -m benchmarks.accuracy --no-report   # same diagnoses, without rendering report.html/pdf
    python -m benchmarks.accuracy --sweep 5 --no-report   # 5 random unseen variants per cause and healthy input
    python -m benchmarks.accuracy --only competing/         # the competing-evidence scenarios alone
    python -m benchmarks.accuracy --holdout 4 --no-report # cause weights: the scenarios that set them vs unseen ones

Each scenario (``benchmarks/scenarios``) writes its inputs into a folder and
is analysed by the real command line (``diffdiag.cli.main``, in-process), which
writes ``diagnosis.json`` and the report like a user's run. The judgement:

- **finding recall**: per finding id, the share of scenarios that expect it at
  warning or above and got it;
- **false alarms**: a finding id at warning or above that the scenario neither
  expects nor allows (per id, and the share of scenarios with any);
- **top-cause accuracy**: per symptom, the share of scenarios whose expected
  cause ranks first (a missing symptom counts as wrong); reported apart for the
  *single-cause* scenarios (one cause's evidence is present) and the
  *competing-evidence* ones (two or three causes have evidence, and only one
  explains the symptom's own measurements — the evidence, not the priors, must
  decide);
- **healthy**: the share of healthy scenarios (runs, photos, latents,
  datasets) with any finding at warning or above or any cause.

``--sweep N`` draws N random variants of every cause scenario (single-cause
and competing) and of every healthy input kind, with parameters no registered
scenario uses, and judges them the same way: findings, false alarms (the
healthy variants included) and causes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.scenarios import Scenario, all_scenarios, fast_scenarios  # noqa: E402

ALARM = ("warning", "critical")


@dataclass
class Result:
    """The judgement of one scenario."""

    name: str
    exit_code: int
    seconds: float
    reported: set[str] = field(default_factory=set)    # ids at warning+
    missed: set[str] = field(default_factory=set)      # expected, not reported
    false_alarms: set[str] = field(default_factory=set)
    causes: dict[str, str] = field(default_factory=dict)  # symptom -> top cause reported
    cause_ok: dict[str, bool] = field(default_factory=dict)  # expected symptom -> right top cause
    healthy_ok: bool | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return (not self.error and not self.missed and not self.false_alarms and all(self.cause_ok.values())
                and self.healthy_ok is not False)


def top_causes(diag: dict[str, Any]) -> dict[str, str]:
    """Symptom -> the highest-scored cause id in a diagnosis document."""
    best: dict[str, tuple[float, str]] = {}
    for c in diag.get("causes", []):
        s = c["symptom"]
        if s not in best or c["score"] > best[s][0]:
            best[s] = (c["score"], c["id"])
    return {s: cid for s, (_, cid) in best.items()}


def judge(sc: Scenario, diag: dict[str, Any] | None, exit_code: int = 0, seconds: float = 0.0,
          error: str = "") -> Result:
    """Compare one diagnosis document with a scenario's ground truth."""
    r = Result(sc.name, exit_code, seconds, error=error)
    if diag is None:
        r.error = r.error or f"no diagnosis.json (exit {exit_code})"
        r.missed = set(sc.expect)
        r.cause_ok = {s: False for s in sc.causes}
        r.healthy_ok = False if sc.healthy else None
        return r
    r.reported = {f["id"] for f in diag["findings"] if f["severity"] in ALARM}
    r.missed = set(sc.expect) - r.reported
    r.false_alarms = r.reported - set(sc.expect) - set(sc.allow)
    r.causes = top_causes(diag)
    r.cause_ok = {s: r.causes.get(s) == cid for s, cid in sc.causes.items()}
    if sc.healthy:
        r.healthy_ok = not r.reported and not diag.get("causes")
    return r


def analyze_without_report(args: list[str]) -> dict[str, Any]:
    """``diffdiag analyze`` minus the HTML/PDF report: the CLI's own parser, sources, checks and causes.

    The same path as :func:`diffdiag.cli.run_analyze` up to the diagnosis document (which is
    validated against the schema); rendering figures and the PDF is skipped, since it costs more
    than the analysis and the accuracy does not depend on it.
    """
    import diffdiag
    from diffdiag.cli import analyze_parser, settings_from_args, spec_from_args
    from diffdiag.diagnosis_io import validate

    ns = analyze_parser("diffdiag analyze").parse_args(args)
    settings = settings_from_args(ns)
    run = diffdiag.load(spec_from_args(ns), settings=settings)
    doc = diffdiag.analyze(run, settings).to_dict()
    validate(doc)
    return doc


def run_scenario(sc: Scenario, root: Path, extra_args: list[str] | None = None, report: bool = True
                 ) -> tuple[dict | None, int, str, float]:
    """Build a scenario under ``root/<name>`` and run ``diffdiag analyze`` on it.

    With ``report`` (default) the real command line runs in-process and writes its report and
    ``diagnosis.json``; without, :func:`analyze_without_report` runs.

    Returns (diagnosis document or None, exit code, stderr, seconds for the analysis).
    """
    from diffdiag.cli import main

    folder = root / sc.name.replace("/", "__")
    argv = sc.build(folder / "inputs")
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    if not report:
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                diag = analyze_without_report([*argv, *(extra_args or [])])
            return diag, 0, "", time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - a crash is a result, not the end of the benchmark
            return None, -1, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0
    report_dir = folder / "report"
    args = ["analyze", *argv, "--report", str(report_dir), "--no-progress", *(extra_args or [])]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except Exception as exc:  # noqa: BLE001 - a crash is a result, not the end of the benchmark
            code = -1
            err.write(f"{type(exc).__name__}: {exc}")
    dt = time.perf_counter() - t0
    p = report_dir / "diagnosis.json"
    diag = json.loads(p.read_text()) if p.exists() else None
    return diag, code, err.getvalue().strip(), dt


def evaluate(scenarios: dict[str, Scenario], root: Path, verbose: bool = True, report: bool = True
             ) -> list[Result]:
    results = []
    for i, sc in enumerate(scenarios.values(), 1):
        diag, code, err, dt = run_scenario(sc, root, report=report)
        r = judge(sc, diag, code, dt, err if diag is None else "")
        results.append(r)
        if verbose:
            mark = "ok  " if r.ok else "FAIL"
            detail = []
            if r.missed:
                detail.append(f"missed {sorted(r.missed)}")
            if r.false_alarms:
                detail.append(f"false alarms {sorted(r.false_alarms)}")
            for s, good in r.cause_ok.items():
                if not good:
                    detail.append(f"{s}: top {r.causes.get(s)} (want {sc.causes[s].split('.', 1)[1]})")
            if r.healthy_ok is False:
                detail.append(f"not healthy: {sorted(r.reported)} causes {sorted(r.causes)}")
            if r.error:
                detail.append(r.error.splitlines()[-1][:200] if r.error else "")
            print(f"[{i:3d}/{len(scenarios)}] {mark} {sc.name:55s} {dt:5.1f}s  {'; '.join(detail)}", flush=True)
    return results


def summarize(scenarios: dict[str, Scenario], results: list[Result]) -> dict[str, Any]:
    """The confusion-table numbers."""
    ids = sorted({i for sc in scenarios.values() for i in sc.expect} | {i for r in results for i in r.reported})
    per_id = {}
    for fid in ids:
        exp = [r for r in results if fid in scenarios[r.name].expect]
        per_id[fid] = {"expected": len(exp), "found": sum(fid not in r.missed for r in exp),
                       "false_alarms": sum(fid in r.false_alarms for r in results)}
    per_symptom: dict[str, dict[str, Any]] = {}
    per_cause: dict[str, dict[str, int]] = {}
    per_group = {g: {"cases": 0, "correct": 0, "per_symptom": {}} for g in ("single", "competing")}
    for r in results:
        group = per_group["competing" if scenarios[r.name].competing else "single"]
        for s, good in r.cause_ok.items():
            want = scenarios[r.name].causes[s]
            group["cases"] += 1
            group["correct"] += int(good)
            gs = group["per_symptom"].setdefault(s, {"cases": 0, "correct": 0})
            gs["cases"] += 1
            gs["correct"] += int(good)
            d = per_symptom.setdefault(s, {"cases": 0, "correct": 0})
            d["cases"] += 1
            d["correct"] += int(good)
            c = per_cause.setdefault(want, {"cases": 0, "correct": 0})
            c["cases"] += 1
            c["correct"] += int(good)
            got = r.causes.get(s, "(symptom not observed)")
            conf = per_symptom[s].setdefault("confusion", {})
            conf.setdefault(want, {}).setdefault(got, 0)
            conf[want][got] += 1
    healthy = [r for r in results if scenarios[r.name].healthy]
    n_cause = sum(d["cases"] for d in per_symptom.values())
    n_correct = sum(d["correct"] for d in per_symptom.values())
    fa_scen = sum(bool(r.false_alarms) or r.healthy_ok is False for r in results)
    expected_total = sum(d["expected"] for d in per_id.values())
    found_total = sum(d["found"] for d in per_id.values())
    return {
        "scenarios": len(results),
        "errors": [r.name for r in results if r.error],
        "finding_recall": found_total / expected_total if expected_total else None,
        "per_finding": per_id,
        "top_cause_accuracy": n_correct / n_cause if n_cause else None,
        "cause_cases": n_cause,
        "top_cause_by_group": {g: {**d, "accuracy": d["correct"] / d["cases"] if d["cases"] else None}
                               for g, d in per_group.items()},
        "per_symptom": per_symptom,
        "per_cause": per_cause,
        "healthy_cases": len(healthy),
        "healthy_false_alarms": sum(r.healthy_ok is False for r in healthy),
        "false_alarm_rate": fa_scen / len(results) if results else None,
        "scenarios_with_false_alarm": fa_scen,
        "all_ok": sum(r.ok for r in results),
        "seconds": sum(r.seconds for r in results),
    }


def print_table(s: dict[str, Any]) -> None:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    print()
    print(f"scenarios: {s['scenarios']}   fully correct: {s['all_ok']}   analysis time: {s['seconds']:.0f} s"
          + (f"   errors: {len(s['errors'])}" if s["errors"] else ""))
    print()
    print(f"{'finding id':28s} {'expected':>8s} {'found':>6s} {'recall':>7s} {'false alarms':>13s}")
    for fid, d in s["per_finding"].items():
        rec = d["found"] / d["expected"] if d["expected"] else None
        print(f"{fid:28s} {d['expected']:8d} {d['found']:6d} {pct(rec):>7s} {d['false_alarms']:13d}")
    print(f"{'all findings':28s} {'':8s} {'':6s} {pct(s['finding_recall']):>7s}")
    print()
    print(f"{'symptom / expected cause':50s} {'cases':>5s} {'top-1':>6s}  confused with")
    for sym, d in s["per_symptom"].items():
        print(f"{sym:50s} {d['cases']:5d} {pct(d['correct'] / d['cases']):>6s}")
        for want, got in d.get("confusion", {}).items():
            c = s["per_cause"][want]
            wrong = {k: v for k, v in got.items() if k != want}
            print(f"  {want:48s} {c['cases']:5d} {pct(c['correct'] / c['cases']):>6s}  "
                  + ", ".join(f"{k} ×{v}" for k, v in wrong.items()))
    print()
    print(f"top-cause accuracy: {pct(s['top_cause_accuracy'])} over {s['cause_cases']} labelled causes")
    for g, words in (("single", "single-cause scenarios (one cause's evidence)"),
                     ("competing", "competing-evidence scenarios (2-3 causes' evidence)")):
        d = s["top_cause_by_group"][g]
        by = ", ".join(f"{sym} {v['correct']}/{v['cases']}" for sym, v in d["per_symptom"].items())
        print(f"  {words}: {pct(d['accuracy'])} ({d['correct']} of {d['cases']}" + (f"; {by})" if by else ")"))
    print(f"healthy inputs with any warning+ finding or cause: {s['healthy_false_alarms']} of {s['healthy_cases']}")
    print(f"false-alarm rate (scenarios with an unexpected warning+ finding): {pct(s['false_alarm_rate'])} "
          f"({s['scenarios_with_false_alarm']} of {s['scenarios']})")


# ------------------------------------------------------------------ held-out check of the cause weights

#: Seed of the held-out cause variants. The cause-ranking weights (``diffdiag/causes/``, docs/CAUSES.md) are
#: hand-set: they were chosen while running the registered cause scenarios (and ``--sweep`` at its default
#: seed). Variants drawn from this seed were never run while a weight was set.
HOLDOUT_SEED = 20261201


def holdout_split(n: int, seed: int = HOLDOUT_SEED) -> dict[str, dict[str, Scenario]]:
    """The cause scenarios, split into the part the weights were set on and a part they never saw.

    Parameters
    ----------
    n : int
        Fresh random variants per cause in the held-out part.
    seed : int
        Seed of the held-out variants (:data:`HOLDOUT_SEED`: never used while setting a weight).

    Returns
    -------
    dict
        ``{"tuning": every registered scenario with an expected cause, "held-out": n variants per cause
        (single-cause and competing-evidence) drawn by benchmarks.scenarios.combos.sweep from seed}``
        (scenarios by name; the sweep's healthy variants, which have no cause, are left out).
    """
    from benchmarks.scenarios.combos import sweep

    return {"tuning": {k: v for k, v in all_scenarios().items() if v.causes},
            "held-out": {k: v for k, v in sweep(n, seed).items() if v.causes}}


def holdout_table(parts: dict[str, dict[str, Any]]) -> str:
    """Top-cause accuracy per symptom and cause, one column per part (``parts``: part -> :func:`summarize`)."""
    names = list(parts)

    def cell(d: dict[str, int] | None) -> str:
        if not d or not d["cases"]:
            return "-"
        return f"{100 * d['correct'] / d['cases']:.0f}% ({d['correct']}/{d['cases']})"

    rows = []
    for sym in sorted({k for s in parts.values() for k in s["per_symptom"]}):
        rows.append([sym] + [cell(parts[p]["per_symptom"].get(sym)) for p in names])
        for cause in sorted({c for s in parts.values() for c in s["per_cause"] if c.startswith(sym + ".")}):
            rows.append(["  " + cause.split(".", 1)[1]] + [cell(parts[p]["per_cause"].get(cause)) for p in names])
    rows.append(["all causes"] + [cell({"cases": parts[p]["cause_cases"],
                                        "correct": sum(d["correct"] for d in parts[p]["per_symptom"].values())})
                                  for p in names])
    for group, words in (("single", "single-cause scenarios"), ("competing", "competing-evidence scenarios")):
        rows.append(["  " + words] + [cell(parts[p].get("top_cause_by_group", {}).get(group)) for p in names])
    # a miss because the symptom itself went unseen is the detector's, not the weights'
    unseen = [sum(n for d in parts[p]["per_symptom"].values() for got in d.get("confusion", {}).values()
                  for k, n in got.items() if k == "(symptom not observed)") for p in names]
    rows.append(["  misses: symptom not observed"] + [str(n) for n in unseen])
    head = ["top-cause accuracy"] + names
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w[i]) for i, v in enumerate(r)) for r in [head, [""] * len(head), *rows])


def run_holdout(n: int, seed: int, root: Path, *, only: list[str] | None = None, report: bool = False,
                verbose: bool = True) -> dict[str, Any]:
    """Judge the causes of both parts of :func:`holdout_split`; returns part -> :func:`summarize` numbers."""
    out = {}
    for part, scen in holdout_split(n, seed).items():
        if only:
            scen = {k: v for k, v in scen.items() if any(t in k for t in only)}
        if verbose:
            print(f"--- {part}: {len(scen)} cause scenarios", flush=True)
        out[part] = summarize(scen, evaluate(scen, root / part, verbose=verbose, report=report))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="only the fast subset")
    p.add_argument("--only", metavar="TEXT", action="append", help="only scenarios whose name contains TEXT")
    p.add_argument("--keep", metavar="DIR", help="build inputs and reports here (kept) instead of a temp dir")
    p.add_argument("--json", metavar="PATH", help="also write the numbers (and per-scenario results) as JSON")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--sweep", type=int, metavar="N",
                   help="instead: N random variants of every cause scenario (single-cause and competing) and of "
                        "every healthy input kind (unseen parameters), findings, false alarms and causes judged")
    p.add_argument("--sweep-seed", type=int, default=12345, metavar="S")
    p.add_argument("--holdout", type=int, metavar="N",
                   help="instead: check the hand-set cause weights - top-cause accuracy on the registered cause "
                        "scenarios (the weights were set on them) beside N fresh variants per cause never run "
                        "while setting them")
    p.add_argument("--holdout-seed", type=int, default=HOLDOUT_SEED, metavar="S")
    p.add_argument("--no-report", action="store_true",
                   help="skip rendering report.html/pdf (same analysis and diagnosis, faster)")
    args = p.parse_args(argv)
    scen = fast_scenarios() if args.fast else all_scenarios()
    if args.sweep:
        from benchmarks.scenarios.combos import sweep

        scen = sweep(args.sweep, args.sweep_seed)
    if args.only:
        scen = {k: v for k, v in scen.items() if any(t in k for t in args.only)}
    if args.list:
        from benchmarks.scenarios.combos import describe

        print(describe())
        return 0
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
    if args.holdout:
        with contextlib.ExitStack() as stack:
            root = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
            parts = run_holdout(args.holdout, args.holdout_seed, root, only=args.only, report=not args.no_report)
        print()
        print(holdout_table(parts))
        if args.json:
            doc = {"holdout_seed": args.holdout_seed, "variants_per_cause": args.holdout, **parts}
            Path(args.json).write_text(json.dumps(doc, indent=2))
        return 0
    with contextlib.ExitStack() as stack:
        root = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        results = evaluate(scen, root, report=not args.no_report)
    s = summarize(scen, results)
    print_table(s)
    if args.json:
        s["results"] = [{"name": r.name, "ok": r.ok, "reported": sorted(r.reported), "missed": sorted(r.missed),
                         "false_alarms": sorted(r.false_alarms), "causes": r.causes, "error": r.error,
                         "seconds": round(r.seconds, 2)} for r in results]
        Path(args.json).write_text(json.dumps(s, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
