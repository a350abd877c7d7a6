"""A self-contained HTML report: causes first, then findings, then figures (embedded as PNG data)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from diffdiag._version import __version__
from diffdiag.model import SEVERITY_RANK, Diagnosis, RunData

from .figures import Figure

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;margin:28px 0 10px;border-bottom:1px solid #dde;padding-bottom:4px}
.meta{color:#667;font-size:13px}
.verdict{padding:12px 16px;border-radius:8px;margin:16px 0;font-weight:600}
.v-ok{background:#e3f6e8;color:#17612e}.v-warning{background:#fff4d6;color:#7a5200}.v-critical{background:#fde2e1;color:#8b1a15}
.cause{background:#fff;border:1px solid #dde;border-radius:8px;padding:12px 16px;margin:10px 0}
.cause h3{margin:0 0 6px;font-size:16px}.score{font-variant-numeric:tabular-nums;color:#445}
.bar{display:inline-block;height:8px;background:#2d6cdf;border-radius:4px;vertical-align:middle;margin-left:8px}
.advice{background:#eef4ff;border-radius:6px;padding:8px 10px;margin-top:8px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #dde;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4}
.sev-critical{color:#b3261e;font-weight:700}.sev-warning{color:#946200;font-weight:700}.sev-info{color:#2b6b9e}
figure{background:#fff;border:1px solid #dde;border-radius:8px;padding:10px;margin:12px 0}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:13px;color:#445;margin-top:6px}
code{background:#eef0f4;padding:1px 4px;border-radius:3px}
.small{font-size:12px;color:#667}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _loc(loc: dict) -> str:
    parts = []
    for k, v in loc.items():
        if isinstance(v, list) and len(v) > 8:
            v = f"{v[:8]}… ({len(v)})"
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def _verdict(diagnosis: Diagnosis) -> tuple[str, str]:
    v = diagnosis.verdict()
    cls = {"critical": "v-critical", "warning": "v-warning", "cannot_judge": "v-warning"}.get(v.id, "v-ok")
    return cls, v.title


def render_html(run: RunData, diagnosis: Diagnosis, figures: list[Figure], paths: list[Path]) -> str:
    """Render the report page; every figure is embedded as a ``data:`` PNG so it opens from disk."""
    cls, verdict = _verdict(diagnosis)
    imgs = {}
    for f, p in zip(figures, paths):
        imgs[f.name] = base64.b64encode(Path(p).read_bytes()).decode("ascii")
    fig_by_finding: dict[int, list[Figure]] = {}
    for f in figures:
        for i in f.findings:
            fig_by_finding.setdefault(i, []).append(f)
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width,initial-scale=1'>",
           f"<title>diffdiag report — {_e(run.name)}</title><style>{_CSS}</style></head><body><main>",
           f"<h1>diffdiag report — {_e(run.name)}</h1>",
           f"<div class='meta'>diffdiag {__version__} · {_e(diagnosis.created)} · "
           f"{len(diagnosis.findings)} findings · {len(diagnosis.causes)} causes</div>",
           f"<div class='verdict {cls}' id='verdict'>{_e(verdict)}</div>"]
    # causes first
    out.append("<h2 id='causes'>Probable causes</h2>")
    if not diagnosis.causes:
        out.append("<p>No symptom with a section-7 cause (loss spikes, stripes, doubled tiling) was observed.</p>")
    by_symptom: dict[str, list] = {}
    for c in diagnosis.causes:
        by_symptom.setdefault(c.symptom, []).append(c)
    for symptom, causes in by_symptom.items():
        out.append(f"<h3>Symptom: {_e(symptom.replace('_', ' '))}</h3>")
        for rank, c in enumerate(causes, 1):
            out.append(f"<div class='cause' data-cause='{_e(c.id)}'><h3>{rank}. {_e(c.id)} "
                       f"<span class='score'>score {c.score:.2f}</span>"
                       f"<span class='bar' style='width:{int(120 * c.score)}px'></span></h3><ul>")
            out.extend(f"<li>{_e(ev)}</li>" for ev in c.evidence)
            out.append("</ul>")
            if c.findings:
                out.append("<div class='small'>findings: " + ", ".join(
                    f"<a href='#finding-{i}'>#{i}</a>" for i in c.findings) + "</div>")
            out.append(f"<div class='advice'><b>What to try:</b> {_e(c.advice)}</div>")
            shown = []
            for i in c.findings:
                for fig in fig_by_finding.get(i, []):
                    if fig.name not in shown:
                        shown.append(fig.name)
            if shown:
                out.append("<div class='small'>supporting figures: " + ", ".join(
                    f"<a href='#fig-{_e(n)}'>{_e(n)}</a>" for n in shown) + "</div>")
            out.append("</div>")
    # findings table
    out.append("<h2 id='findings'>Findings</h2>")
    if diagnosis.findings:
        out.append("<table id='findings-table'><thead><tr><th>#</th><th>severity</th><th>finding</th>"
                   "<th>score</th><th>where</th><th>message</th></tr></thead><tbody>")
        order = sorted(range(len(diagnosis.findings)),
                       key=lambda i: (-SEVERITY_RANK[diagnosis.findings[i].severity], i))
        for i in order:
            f = diagnosis.findings[i]
            out.append(f"<tr id='finding-{i}'><td>{i}</td><td class='sev-{f.severity}'>{f.severity}</td>"
                       f"<td><code>{_e(f.id)}</code></td><td>{f.score:.2f}</td><td>{_e(_loc(f.location))}</td>"
                       f"<td>{_e(f.message)}</td></tr>")
        out.append("</tbody></table>")
    else:
        out.append("<table id='findings-table'><tbody><tr><td>No findings.</td></tr></tbody></table>")
    # figures by section
    sections: dict[str, list[Figure]] = {}
    for f in figures:
        sections.setdefault(f.section, []).append(f)
    if sections:
        out.append("<h2 id='figures'>Figures</h2>")
    for section, figs in sections.items():
        out.append(f"<h3>{_e(section.capitalize())}</h3>")
        for f in figs:
            out.append(f"<figure id='fig-{_e(f.name)}'><img alt='{_e(f.title)}' "
                       f"src='data:image/png;base64,{imgs[f.name]}'>"
                       f"<figcaption><b>{_e(f.title)}.</b> {_e(f.caption)}</figcaption></figure>")
    if diagnosis.warnings:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(w)}</li>" for w in diagnosis.warnings) + "</ul>")
    out.append("<h2>Inputs and settings</h2><pre class='small'>"
               + _e(json.dumps({"inputs": diagnosis.inputs, "settings": diagnosis.settings}, indent=2, default=str))
               + "</pre>")
    out.append("</main></body></html>")
    return "\n".join(out)
