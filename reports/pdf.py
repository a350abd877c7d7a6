"""The PDF report: a summary page (verdict, causes, findings) followed by every figure."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.backends.backend_pdf import PdfPages

from diffdiag._version import __version__
from diffdiag.model import SEVERITY_RANK, Diagnosis, RunData

from .figures import Figure


def _summary_lines(run: RunData, diagnosis: Diagnosis) -> list[str]:
    lines = [f"diffdiag {__version__} report — {run.name}", diagnosis.created, ""]
    worst = diagnosis.worst_severity() or "none"
    lines.append(f"Verdict: {diagnosis.verdict().words}.")
    lines.append(f"Worst severity: {worst}; {len(diagnosis.findings)} findings; {len(diagnosis.causes)} causes.")
    lines.append("")
    if diagnosis.causes:
        lines.append("Probable causes (ranked within each symptom):")
        for c in diagnosis.causes:
            lines.append(f"  [{c.symptom}] {c.id}  score {c.score:.2f}")
            for ev in c.evidence[:3]:
                lines.extend(textwrap.wrap(ev, 100, initial_indent="      - ", subsequent_indent="        "))
            lines.extend(textwrap.wrap("advice: " + c.advice, 100, initial_indent="      ",
                                       subsequent_indent="      "))
        lines.append("")
    lines.append("Findings:")
    order = sorted(diagnosis.findings, key=lambda f: (-SEVERITY_RANK[f.severity], -f.score))
    for f in order[:40]:
        lines.extend(textwrap.wrap(f"{f.severity:8s} {f.id}: {f.message}", 110, subsequent_indent=" " * 9))
    if len(order) > 40:
        lines.append(f"… and {len(order) - 40} more (see diagnosis.json)")
    return lines


def write_pdf(run: RunData, diagnosis: Diagnosis, figures: list[Figure], path: str | Path) -> Path:
    """Write the PDF report to ``path`` with matplotlib's PdfPages."""
    path = Path(path)
    lines = _summary_lines(run, diagnosis)
    per_page = 60
    with PdfPages(path) as pdf:
        for start in range(0, max(len(lines), 1), per_page):
            fig = plt.figure(figsize=(8.27, 11.69))
            fig.text(0.05, 0.97, "\n".join(lines[start:start + per_page]), va="top", ha="left",
                     family="monospace", fontsize=7.5)
            pdf.savefig(fig)
            plt.close(fig)
        for f in figures:
            f.fig.suptitle(f.title, fontsize=10, y=1.0)
            pdf.savefig(f.fig, bbox_inches="tight")
        info = pdf.infodict()
        info["Title"] = f"diffdiag report — {run.name}"
        info["Creator"] = f"diffdiag {__version__}"
    return path
