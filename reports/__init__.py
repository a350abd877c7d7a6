"""Reports: figures, a self-contained HTML page and a PDF (installed as ``diffdiag.reports``)."""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffdiag.model import Diagnosis, RunData, Settings

if TYPE_CHECKING:
    from .figures import Figure

#: topic modules that register figures (imported by :func:`make_figures`)
TOPIC_MODULES = ["diffdiag.reports.fig_loss", "diffdiag.reports.fig_checkpoints", "diffdiag.reports.fig_images",
                 "diffdiag.reports.fig_latents", "diffdiag.reports.fig_dataset"]


def make_figures(run: RunData, diagnosis: Diagnosis, settings: Settings,
                 warnings: list[str] | None = None) -> list[Figure]:
    """Draw every registered figure (:mod:`.figures`); a maker that fails adds a warning instead."""
    from .figures import registered

    for mod in TOPIC_MODULES:
        try:
            import_module(mod)
        except ModuleNotFoundError:
            continue
    out: list[Figure] = []
    for section, func in registered():
        try:
            out.extend(func(run, diagnosis, settings))
        except Exception as exc:  # noqa: BLE001 - a figure must never sink the report
            if os.environ.get("DIFFDIAG_STRICT"):
                raise
            if warnings is not None:
                warnings.append(f"figure '{section}' could not be drawn ({type(exc).__name__}: {exc})")
    return out


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
