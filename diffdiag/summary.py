"""The short human summary ``diffdiag analyze`` and ``diffdiag demo`` print (verdict, findings, top causes)."""

from __future__ import annotations

import sys
from pathlib import Path

from ._version import __version__
from .causes.titles import headline
from .findings.words import finding_order, finding_title, message, where
from .model import Diagnosis


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
        order = finding_order(diagnosis.findings)   # most severe first, then by step (as the report)
        shown = [diagnosis.findings[i] for i in order[:20]]
        for f in shown:
            color = {"critical": "red", "warning": "yellow", "info": "cyan"}[f.severity]
            table.add_row(f"[{color}]{f.severity}[/]", f"{finding_title(f.id)} [dim]({f.id})[/]",
                          where(f.location), message(f))
        console.print(table)
        if len(diagnosis.findings) > len(shown):
            console.print(f"… and {len(diagnosis.findings) - len(shown)} more in diagnosis.json")
    for h in headline(diagnosis):
        console.print(f"[bold]{h.symptom_title}[/]: most probable cause [bold]{h.cause_title}[/] "
                      f"[dim]({h.cause_id}, score {h.score:.2f})[/] — first try: {h.advice}")
    for w in diagnosis.warnings:
        console.print(f"[yellow]note:[/] {w}")
    if diagnosis.outputs.get("html"):
        console.print(f"report: {diagnosis.outputs['html']}")
