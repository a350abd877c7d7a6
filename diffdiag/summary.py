"""The short human summary ``diffdiag analyze`` and ``diffdiag demo`` print (verdict, findings, top causes)."""

from __future__ import annotations

import sys
from pathlib import Path

from ._version import __version__
from .model import SEVERITY_RANK, Diagnosis


def print_summary(diagnosis: Diagnosis, report_dir: Path, out=None) -> None:
    """A short human summary: verdict, findings table, top causes, where the report is."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out or sys.stdout, highlight=False, soft_wrap=True)
    v = diagnosis.verdict()
    n = len(diagnosis.findings)
    color = {"warning": "yellow", "critical": "red", "cannot_judge": "magenta"}.get(v.id, "green")
    console.print(f"diffdiag {__version__}: [{color}]{v.words}[/] — {n} finding{'s' if n != 1 else ''}, "
                  f"{len(diagnosis.causes)} cause{'s' if len(diagnosis.causes) != 1 else ''} ranked")
    if diagnosis.findings:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("severity")
        table.add_column("finding")
        table.add_column("where")
        table.add_column("message", overflow="fold")
        shown = sorted(diagnosis.findings, key=lambda f: (-SEVERITY_RANK[f.severity], -f.score))[:20]
        for f in shown:
            where = ", ".join(f"{k}={v}" for k, v in f.location.items() if not isinstance(v, (list, dict)))
            color = {"critical": "red", "warning": "yellow", "info": "cyan"}[f.severity]
            table.add_row(f"[{color}]{f.severity}[/]", f.id, where, f.message)
        console.print(table)
        if len(diagnosis.findings) > len(shown):
            console.print(f"… and {len(diagnosis.findings) - len(shown)} more in diagnosis.json")
    seen: set[str] = set()
    for c in diagnosis.causes:
        if c.symptom in seen:
            continue
        seen.add(c.symptom)
        console.print(f"[bold]{c.symptom}[/]: most probable cause [bold]{c.id}[/] (score {c.score:.2f}) — {c.advice}")
    for w in diagnosis.warnings:
        console.print(f"[yellow]note:[/] {w}")
    if diagnosis.outputs.get("html"):
        console.print(f"report: {diagnosis.outputs['html']}")
