"""Image-analyzer accuracy on labelled cases drawn from ``benchmarks.scenarios.images.all_cases``.

    python benchmarks/accuracy_images.py [--seeds 0-19]

Each seed draws fresh photos, periods, positions, axes and re-renderings (29
cases: 10 clean pairs, 5 tiling pairs, 1 tiled lone image, 4 stripe pairs,
2 noisy patches, 3 shifted crops, 4 degenerate samples). A case passes when
every expected finding is reported with the right location (periods and
shifts exact; stripes bbox IoU ≥ 0.5, noise-patch bbox IoU ≥ 0.3) and no
forbidden id appears at warning or above. Prints per-kind pass rates and the
failures.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scenarios.images import ImageCase, all_cases, bbox_iou  # noqa: E402
from diffdiag.checks.images import image_findings  # noqa: E402
from diffdiag.model import ImageInput  # noqa: E402


def judge(case: ImageCase) -> list[str]:
    """Problems with the analysis of one case (empty = pass)."""
    found = image_findings(ImageInput(case.image, case.name, case.reference,
                                      "ref" if case.reference is not None else None))
    problems = []
    for t in case.truth:
        cands = [f for f in found if f.id == t["id"]]
        if not cands:
            problems.append(f"missing {t}")
            continue
        ok = False
        for f in cands:
            good = True
            for k, v in t.items():
                if k == "id":
                    continue
                if k == "bbox":
                    good &= bbox_iou(f.location[k], v) >= (0.5 if t["id"] == "stripes" else 0.3)
                else:
                    good &= f.location.get(k) == v
            ok |= good
        if not ok:
            problems.append(f"wrong {t} got {[f.location for f in cands]}")
    for f in found:
        if f.severity != "info" and f.id in case.forbidden:
            problems.append(f"false {f.id} ({f.severity}) {f.location}")
    return problems


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-9", help="seed range a-b (inclusive) or comma list")
    args = ap.parse_args(argv)
    if "-" in args.seeds:
        a, b = args.seeds.split("-")
        seeds = list(range(int(a), int(b) + 1))
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
    total, passed = Counter(), Counter()
    for seed in seeds:
        for case in all_cases(seed):
            kind = case.name.split(":")[0]
            total[kind] += 1
            problems = judge(case)
            if problems:
                print(f"FAIL {case.name}: {'; '.join(problems)}")
            else:
                passed[kind] += 1
    print(f"\n{'kind':<12} {'passed':>8} {'cases':>6}")
    for kind in sorted(total):
        print(f"{kind:<12} {passed[kind]:>8} {total[kind]:>6}")
    print(f"{'all':<12} {sum(passed.values()):>8} {sum(total.values()):>6}")
    return {"passed": dict(passed), "total": dict(total)}


if __name__ == "__main__":
    main()
