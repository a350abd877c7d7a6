"""Reports: figures, a self-contained HTML page and a PDF (installed as ``diffdiag.reports``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffdiag.model import Diagnosis, RunData, Settings


def write_report(run: RunData, diagnosis: Diagnosis, report_dir: str | Path,
                 settings: Settings | None = None) -> dict[str, Any]:
    """Write ``figures/*.png``, ``report.html`` and ``report.pdf`` into ``report_dir``.

    Parameters
    ----------
    run : RunData
    diagnosis : Diagnosis
    report_dir : str or Path
        Created when missing. Existing files of a previous report are replaced.
    settings : Settings, optional

    Returns
    -------
    dict
        ``{"html": path, "pdf": path, "figures": [paths]}`` for ``diagnosis.outputs``.
    """
    import matplotlib.pyplot as plt

    from .figures import make_figures
    from .html import render_html
    from .pdf import write_pdf

    settings = settings or Settings()
    report_dir = Path(report_dir)
    fig_dir = report_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    figures = make_figures(run, diagnosis, settings, diagnosis.warnings)
    paths = []
    for f in figures:
        p = fig_dir / f"{f.name}.png"
        f.fig.savefig(p, dpi=f.fig.dpi)
        paths.append(p)
    outputs: dict[str, Any] = {
        "html": str(report_dir / "report.html"),
        "pdf": str(report_dir / "report.pdf"),
        "figures": [str(p) for p in paths],
    }
    write_pdf(run, diagnosis, figures, report_dir / "report.pdf")
    (report_dir / "report.html").write_text(render_html(run, diagnosis, figures, paths), encoding="utf-8")
    for f in figures:
        plt.close(f.fig)
    return outputs
