"""What ``diffdiag triage`` prints: one line per run, worst first, and where the table is."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ..model import VERDICTS

_ORDER = {None: 0, "critical": 1, "warning": 2, "cannot_judge": 3, "info": 4, "ok": 5}


def print_triage_summary(result: Any, file: TextIO | None = None) -> None:
    """Print the runs, most severe first (errors first of all), then the outputs' paths."""
    from ..redact import redact

    out = file or sys.stdout
    rows = sorted(result.rows, key=lambda r: _ORDER.get(r["verdict"], 9))
    width = min(40, max((len(str(r["name"])) for r in rows), default=4))
    n = len(rows)
    problems = sum(1 for r in rows if r["verdict"] in ("warning", "critical"))
    print(f"diffdiag triage: {n} run{'s' if n != 1 else ''}, {problems} with problems, "
          f"{sum(1 for r in rows if r['verdict'] is None)} not analysed "
          f"({result.analysed} analysed now, {result.skipped} already in the journal)", file=out)
    for r in rows:
        words = VERDICTS[r["verdict"]].words if r["verdict"] in VERDICTS else "not analysed"
        step = "" if r["first_bad_step"] is None else f" from step {r['first_bad_step']}"
        causes = ", ".join(r["top_causes"].values())
        tail = f" — {causes}" if causes else (f" — {r['error']}" if r["verdict"] is None and r["error"] else "")
        print(redact(f"  {str(r['name'])[:width]:<{width}}  {words}{step}{tail}"), file=out)
    print(f"table: {result.outputs.get('html')}", file=out)


__all__ = ["print_triage_summary"]
