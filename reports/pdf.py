"""The PDF report: A4 pages, readable when printed.

Page 1 carries the answer — the verdict, per observed symptom its most
probable cause in words and what to try first — then the ranked causes with
their evidence and advice, and the findings table (most severe first, then by
step). The figures follow, each with its title and caption, as many to a page
as fit. Every page is A4 portrait (595 × 842 pt) and carries a footer with the
run's name and the page number.

Drawn with matplotlib's ``PdfPages`` (TrueType fonts, so the text can be
searched and copied); a figure is embedded as its own 200 dpi image, unscaled
by the PDF viewer's resampling.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages

from diffdiag._version import __version__
from diffdiag.causes.titles import cause_title, headline, symptom_title, unexplained
from diffdiag.findings.words import count_words, finding_order, finding_title, first_step, gist, message, where
from diffdiag.model import Diagnosis, RunData

from .figures import Figure

#: A4 portrait, inches
PAGE_W, PAGE_H = 8.27, 11.69
MARGIN = 0.6
#: figures are embedded at this resolution
FIGURE_DPI = 200
#: a figure this wide (inches) fills the page's width; narrower ones are drawn at the same scale
REFERENCE_WIDTH = 11.0
#: average glyph width of DejaVu Sans (regular, bold) as a fraction of the font size (for wrapping)
_GLYPH = {"normal": 0.53, "bold": 0.61}

_VERDICT_COLORS = {"ok": ("#e3f6e8", "#17612e"), "info": ("#e6f1fb", "#1c4f7a"),
                   "warning": ("#fff4d6", "#6b4800"), "critical": ("#fde2e1", "#7d1510"),
                   "cannot_judge": ("#eeeaf6", "#45306e")}
_SEV_COLORS = {"critical": "#b3261e", "warning": "#946200", "info": "#2b6b9e"}


def _chars(width_in: float, size: float, weight: str = "normal") -> int:
    """How many characters of ``size``-point text fit in ``width_in`` inches."""
    return max(8, int(width_in * 72 / (size * _GLYPH.get(weight, _GLYPH["bold"]))))


def _wrap(text: str, width_in: float, size: float, weight: str = "normal") -> list[str]:
    return textwrap.wrap(" ".join(str(text).split()), _chars(width_in, size, weight)) or [""]


class _Pages:
    """A top-down text flow over A4 pages (positions in inches from the page's top-left)."""

    def __init__(self, pdf: PdfPages, footer: str) -> None:
        self.pdf, self.footer = pdf, footer
        self.fig: Any = None
        self.y = 0.0
        self.n = 0

    @property
    def width(self) -> float:
        return PAGE_W - 2 * MARGIN

    def new_page(self) -> None:
        self.close_page()
        self.fig = plt.figure(figsize=(PAGE_W, PAGE_H))
        self.n += 1
        self.y = MARGIN

    def close_page(self) -> None:
        if self.fig is not None:
            self.fig.text(MARGIN / PAGE_W, 0.35 / PAGE_H, self.footer, fontsize=7, color="#778")
            self.fig.text(1 - MARGIN / PAGE_W, 0.35 / PAGE_H, f"page {self.n}", fontsize=7, color="#778",
                          ha="right")
            self.pdf.savefig(self.fig)
            plt.close(self.fig)
            self.fig = None

    def room(self) -> float:
        return PAGE_H - MARGIN - 0.25 - self.y

    def need(self, height: float) -> None:
        """Start a new page unless ``height`` inches are left on this one."""
        if self.fig is None or self.room() < height:
            self.new_page()

    def text(self, x: float, y: float, s: str, **kw: Any) -> None:
        self.fig.text(x / PAGE_W, 1 - y / PAGE_H, s, va="top", ha="left", **kw)

    def para(self, text: str, *, size: float = 9.0, indent: float = 0.0, gap: float = 0.05,
             **kw: Any) -> None:
        """A wrapped paragraph (it may continue on the next page)."""
        line_h = size * 1.35 / 72
        for line in _wrap(text, self.width - indent, size, kw.get("fontweight", "normal")):
            self.need(line_h)
            self.text(MARGIN + indent, self.y, line, fontsize=size, **kw)
            self.y += line_h
        self.y += gap

    def heading(self, text: str, size: float = 13.0) -> None:
        self.need(size / 72 * 1.6 + 0.5)  # never alone at the bottom of a page
        self.y += 0.08
        self.text(MARGIN, self.y, text, fontsize=size, fontweight="bold", color="#1d2330")
        self.y += size * 1.5 / 72
        self.fig.add_artist(plt.Line2D([MARGIN / PAGE_W, 1 - MARGIN / PAGE_W], [1 - self.y / PAGE_H] * 2,
                                       color="#ccd", lw=0.6))
        self.y += 0.08


# --------------------------------------------------------------------------- summary pages

def answer_lines(diagnosis: Diagnosis) -> list[tuple[str, float, str]]:
    """Page 1's answer as ``(text, font size, weight)``: the verdict, the counts, per symptom the
    most probable cause and what to try first (or why the inputs cannot be judged)."""
    v = diagnosis.verdict()
    lines: list[tuple[str, float, str]] = [(v.title, 15.0, "bold"), (count_words(diagnosis.findings), 9.0, "normal")]
    for h in headline(diagnosis):
        lines.append((f"{h.symptom_title}: most probable cause — {h.cause_title} (score {h.score:.2f}).",
                      10.0, "bold"))
        lines.append((f"First try: {h.advice}", 9.0, "normal"))
    for fid, idx in unexplained(diagnosis).items():
        more = f" ({len(idx)} findings)" if len(idx) > 1 else ""
        text = gist(message(diagnosis.findings[idx[0]]), 160)
        lines.append((f"{finding_title(fid)}{more}: {text}", 9.0, "normal"))
    if v.id == "cannot_judge":
        lines += [(w, 9.0, "normal") for w in diagnosis.unjudged()]
    return lines


def _verdict_box(pages: _Pages, diagnosis: Diagnosis) -> None:
    v = diagnosis.verdict()
    bg, fg = _VERDICT_COLORS.get(v.id, _VERDICT_COLORS["warning"])
    lines = answer_lines(diagnosis)
    wrapped = [(ln, size, weight) for text, size, weight in lines
               for ln in _wrap(text, pages.width - 0.3, size, weight)]
    height = sum(size * 1.4 / 72 for _, size, _ in wrapped) + 0.25
    pages.need(height)
    top = pages.y
    pages.fig.add_artist(matplotlib.patches.FancyBboxPatch(
        (MARGIN / PAGE_W, 1 - (top + height) / PAGE_H), pages.width / PAGE_W, height / PAGE_H,
        boxstyle="round,pad=0,rounding_size=0.006", transform=pages.fig.transFigure, fc=bg, ec=fg, lw=0.8))
    pages.y += 0.12
    for text, size, weight in wrapped:
        pages.text(MARGIN + 0.15, pages.y, text, fontsize=size, fontweight=weight, color=fg)
        pages.y += size * 1.4 / 72
    pages.y = top + height + 0.15


def _causes(pages: _Pages, diagnosis: Diagnosis) -> None:
    if not diagnosis.causes:
        return
    pages.heading("Probable causes")
    by_symptom: dict[str, list] = {}
    for c in diagnosis.causes:
        by_symptom.setdefault(c.symptom, []).append(c)
    for symptom, causes in by_symptom.items():
        pages.para(symptom_title(symptom), size=11, fontweight="bold", gap=0.04)
        for rank, c in enumerate(sorted(causes, key=lambda c: -c.score), 1):
            pages.para(f"{rank}. {cause_title(c.id)} — score {c.score:.2f}   ({c.id})", size=9.5,
                       fontweight="bold", indent=0.1, gap=0.02)
            for ev in c.evidence[:4]:
                pages.para(f"• {ev}", size=8.5, indent=0.3, gap=0.0)
            if rank == 1:
                pages.para(f"What to try: {c.advice}", size=8.5, indent=0.3, gap=0.06, color="#1c3f8a")
            pages.y += 0.04


#: findings table columns: (title, width in inches)
_COLUMNS = (("#", 0.3), ("severity", 0.65), ("finding", 1.45), ("step", 0.45), ("where", 1.75), ("message", 2.47))


def _findings(pages: _Pages, diagnosis: Diagnosis, *, max_rows: int = 60) -> None:
    pages.heading("Findings")
    if not diagnosis.findings:
        pages.para("No findings.")
        return
    pages.para("Most severe first, then by training step.", size=8, color="#667")
    size, line_h = 7.5, 7.5 * 1.3 / 72

    def header() -> None:
        x = MARGIN
        for title, w in _COLUMNS:
            pages.text(x, pages.y, title, fontsize=size, fontweight="bold")
            x += w
        pages.y += line_h + 0.04

    pages.need(3 * line_h)
    header()
    order = finding_order(diagnosis.findings)
    for i in order[:max_rows]:
        f = diagnosis.findings[i]
        step = first_step(f.location)
        cells = [str(i), f.severity, finding_title(f.id), "" if step is None else str(step),
                 where(f.location, steps=False), message(f)]
        wrapped = [_wrap(c, w - 0.08, size) for c, (_, w) in zip(cells, _COLUMNS)]
        rows = max(len(w) for w in wrapped)
        if pages.fig is None or pages.room() < rows * line_h + 0.06:
            pages.new_page()
            header()
        x = MARGIN
        for k, (lines, (_, w)) in enumerate(zip(wrapped, _COLUMNS)):
            color = _SEV_COLORS[f.severity] if k == 1 else "#1d2330"
            pages.text(x, pages.y, "\n".join(lines), fontsize=size, color=color, linespacing=1.15,
                       fontweight="bold" if k == 1 and f.severity != "info" else "normal")
            x += w
        pages.y += rows * line_h + 0.05
        pages.fig.add_artist(plt.Line2D([MARGIN / PAGE_W, 1 - MARGIN / PAGE_W], [1 - (pages.y - 0.025) / PAGE_H] * 2,
                                        color="#e3e5ea", lw=0.4))
    if len(order) > max_rows:
        pages.para(f"… and {len(order) - max_rows} more in diagnosis.json.", size=8)


# --------------------------------------------------------------------------- figures

def _raster(fig: Any) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    buf.seek(0)
    return plt.imread(buf)


def _figures(pages: _Pages, figures: list[Figure]) -> None:
    if not figures:
        return
    pages.new_page()
    pages.heading("Figures")
    for k, f in enumerate(figures, 1):
        img = _raster(f.fig)
        h_px, w_px = img.shape[:2]
        # one scale for every figure (an 11-inch-wide figure fills the page), so their fonts match
        width = min(pages.width, f.fig.get_size_inches()[0] * pages.width / REFERENCE_WIDTH)
        height = width * h_px / w_px
        cap = _wrap(f.caption, width, 8.0) if f.caption else []
        cap_h = len(cap) * 8.0 * 1.35 / 72
        max_h = PAGE_H - 2 * MARGIN - 0.9 - cap_h
        if height > max_h:  # a tall figure: scale it to the page
            height = max_h
            width = height * w_px / h_px
        pages.need(0.3 + height + cap_h + 0.2)
        pages.text(MARGIN, pages.y, f"Figure {k}. {f.title}", fontsize=10.5, fontweight="bold")
        pages.y += 0.27
        left = MARGIN + (pages.width - width) / 2
        ax = pages.fig.add_axes((left / PAGE_W, 1 - (pages.y + height) / PAGE_H, width / PAGE_W, height / PAGE_H))
        ax.imshow(img, interpolation="none")
        ax.set_axis_off()
        pages.y += height + 0.08
        for line in cap:
            pages.text(MARGIN, pages.y, line, fontsize=8.0, color="#445")
            pages.y += 8.0 * 1.35 / 72
        pages.y += 0.25


def write_pdf(run: RunData, diagnosis: Diagnosis, figures: list[Figure], path: str | Path) -> Path:
    """Write the PDF report to ``path`` (A4 pages; see the module docstring)."""
    path = Path(path)
    with matplotlib.rc_context({"pdf.fonttype": 42, "font.family": "DejaVu Sans"}):
        with PdfPages(path) as pdf:
            pages = _Pages(pdf, f"diffdiag {__version__} · {run.name} · {diagnosis.created}")
            pages.new_page()
            pages.text(MARGIN, pages.y, f"diffdiag report — {run.name}", fontsize=17, fontweight="bold")
            pages.y += 0.36
            pages.text(MARGIN, pages.y, f"diffdiag {__version__} · {diagnosis.created}", fontsize=8.5,
                       color="#667")
            pages.y += 0.3
            _verdict_box(pages, diagnosis)
            _causes(pages, diagnosis)
            _findings(pages, diagnosis)
            if diagnosis.warnings:
                pages.heading("Notes")
                for w in diagnosis.warnings:
                    pages.para(f"• {w}", size=8.5, gap=0.02)
            _figures(pages, figures)
            pages.close_page()
            info = pdf.infodict()
            info["Title"] = f"diffdiag report — {run.name}"
            info["Creator"] = f"diffdiag {__version__}"
    return path
