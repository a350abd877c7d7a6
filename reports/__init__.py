"""Reports: figures, a self-contained HTML page and a PDF (installed as ``diffdiag.reports``)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from diffdiag.model import Diagnosis, RunData, Settings

if TYPE_CHECKING:
    from .figures import Figure

#: topic modules that register figures (imported by :func:`make_figures`)
TOPIC_MODULES = ["diffdiag.reports.fig_loss", "diffdiag.reports.fig_checkpoints", "diffdiag.reports.fig_images",
                 "diffdiag.reports.fig_samples", "diffdiag.reports.fig_latents", "diffdiag.reports.fig_dataset",
                 "diffdiag.reports.fig_attention"]


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

    Only diffdiag's own earlier outputs there are replaced (:mod:`.folder`: a manifest
    of what diffdiag wrote; each file written atomically). Secrets in the run's text
    (URLs with passwords, tokens) are redacted in the report (:mod:`diffdiag.redact`).

    Parameters
    ----------
    run : RunData
    diagnosis : Diagnosis
    report_dir : str or Path
        Created when missing. Files a previous report of diffdiag wrote are replaced;
        other files are left alone.
    settings : Settings, optional

    Returns
    -------
    dict
        ``{"html": path, "pdf": path, "figures": [paths]}`` for ``diagnosis.outputs``.

    Raises
    ------
    InputError
        The folder is a file or cannot be written, or an output's place holds a folder or a
        file diffdiag did not write (exit 2; nothing is replaced).
    """
    from diffdiag.redact import redact_diagnosis, redact_run_text

    from .folder import ReportFolder

    settings = settings or Settings()
    report_dir = Path(report_dir)
    folder = ReportFolder(report_dir)
    folder.claim(["report.html", "report.pdf"])  # before drawing: a conflict costs no figure
    shown_run, shown = redact_run_text(run), redact_diagnosis(diagnosis)
    with _no_glyph_warnings():
        return _write(folder, report_dir, shown_run, shown, diagnosis, settings)


@contextmanager
def _no_glyph_warnings() -> Iterator[None]:
    """A key, file or run name in a script the fonts lack (CJK, emoji) is drawn as boxes, without a warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from (current )?font")
        yield


def _write(folder: Any, report_dir: Path, shown_run: RunData, shown: Diagnosis, diagnosis: Diagnosis,
           settings: Settings) -> dict[str, Any]:
    """Draw from the redacted views (``shown_run``, ``shown``) and write each output through ``folder``."""
    import matplotlib.pyplot as plt

    from diffdiag.redact import redact_diagnosis

    from .html import render_html
    from .pdf import write_pdf

    figures = make_figures(shown_run, shown, settings, diagnosis.warnings)
    shown.warnings = redact_diagnosis(diagnosis).warnings  # with the figure notes just added
    try:
        rels = [f"figures/{f.name}.png" for f in figures]
        folder.claim(rels)
        paths = []
        for f, rel in zip(figures, rels):
            paths.append(folder.write(rel, lambda tmp, f=f: f.fig.savefig(tmp, dpi=f.fig.dpi, format="png")))
        folder.remove_stale(rels, under="figures")
        outputs: dict[str, Any] = {
            "html": str(report_dir / "report.html"),
            "pdf": str(report_dir / "report.pdf"),
            "figures": [str(p) for p in paths],
        }
        folder.write("report.pdf", lambda tmp: write_pdf(shown_run, shown, figures, tmp))
        html = render_html(shown_run, shown, figures, paths)
        folder.write("report.html", lambda tmp: tmp.write_text(html, encoding="utf-8"))
    finally:
        for f in figures:
            plt.close(f.fig)
    return outputs
