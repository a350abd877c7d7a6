"""A self-contained HTML report that reads like an answer.

Top to bottom: the verdict banner (per observed symptom, its most probable
cause in words and what to try first), the ranked causes with their evidence,
the findings table (most severe first, then by step; locations in words, each
finding linked to the figure that shows it), the figures (embedded as PNG
data, so the page opens from disk), notes, and the inputs.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from diffdiag._version import __version__
from diffdiag.causes.titles import cause_title, headline, symptom_title, unexplained
from diffdiag.findings.words import count_words, finding_order, finding_title, first_step, gist, message, where
from diffdiag.model import Diagnosis, RunData

from .figures import Figure

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;margin:28px 0 10px;border-bottom:1px solid #dde;padding-bottom:4px}
.meta{color:#667;font-size:13px}
.verdict{padding:14px 18px;border-radius:8px;margin:16px 0;border-left:6px solid}
.verdict-title{font-size:21px;font-weight:700;margin-bottom:2px}
.verdict-sub{font-size:13px;opacity:.85;margin-bottom:6px}
.verdict ul{margin:8px 0 4px;padding-left:20px}.verdict li{margin:5px 0;line-height:1.4}
.v-ok{background:#e3f6e8;color:#17612e;border-color:#2e9d4f}.v-info{background:#e6f1fb;color:#1c4f7a;border-color:#2b6b9e}
.v-warning{background:#fff4d6;color:#6b4800;border-color:#d99a00}
.v-critical{background:#fde2e1;color:#7d1510;border-color:#c62a22}
.v-cannot_judge{background:#eeeaf6;color:#45306e;border-color:#7a5bb5}
.verdict a{color:inherit}
.cause{background:#fff;border:1px solid #dde;border-radius:8px;padding:12px 16px;margin:10px 0}
.cause h4{margin:0 0 6px;font-size:16px}.score{font-variant-numeric:tabular-nums;color:#445;font-weight:400;font-size:13px}
.cid{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;color:#778;font-weight:400;margin-left:6px}
.bar{display:inline-block;height:8px;background:#2d6cdf;border-radius:4px;vertical-align:middle;margin-left:8px}
.advice{background:#eef4ff;border-radius:6px;padding:8px 10px;margin-top:8px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px;table-layout:fixed}
#findings-table col.c-n{width:38px}#findings-table col.c-sev{width:84px}
#findings-table col.c-id{width:170px}#findings-table col.c-step{width:52px}
#findings-table col.c-where{width:24%}#findings-table col.c-fig{width:140px}
th,td{border:1px solid #dde;padding:5px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#eef0f4}td.num{font-variant-numeric:tabular-nums;text-align:right;white-space:nowrap}
.sev-critical{color:#b3261e;font-weight:700}.sev-warning{color:#946200;font-weight:700}.sev-info{color:#2b6b9e}
figure{background:#fff;border:1px solid #dde;border-radius:8px;padding:10px;margin:12px 0}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:13px;color:#445;margin-top:6px}
code{background:#eef0f4;padding:1px 4px;border-radius:3px}
.small{font-size:12px;color:#667}
details pre{white-space:pre-wrap;word-break:break-word}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _verdict(diagnosis: Diagnosis) -> tuple[str, str]:
    """The banner's CSS class and the verdict's title."""
    v = diagnosis.verdict()
    return f"v-{v.id}", v.title


def _banner(diagnosis: Diagnosis) -> list[str]:
    cls, title = _verdict(diagnosis)
    out = [f"<section class='verdict {cls}' id='verdict'>",
           f"<div class='verdict-title'>{_e(title)}</div>",
           f"<div class='verdict-sub'>{_e(count_words(diagnosis.findings))}</div>"]
    items = []
    for h in headline(diagnosis):
        items.append(f"<li class='answer' data-symptom='{_e(h.symptom)}' data-cause='{_e(h.cause_id)}'>"
                     f"<b>{_e(h.symptom_title)}</b>: most probable cause "
                     f"<b class='cause-title'>{_e(h.cause_title)}</b> "
                     f"<span class='score'>(score {h.score:.2f}, <a href='#cause-{_e(h.cause_id)}'>evidence</a>)"
                     f"</span>. <span class='first-advice'>First try: {_e(h.advice)}</span></li>")
    for fid, idx in unexplained(diagnosis).items():
        f = diagnosis.findings[idx[0]]
        more = f" ({len(idx)} findings)" if len(idx) > 1 else ""
        items.append(f"<li class='also' data-finding='{_e(fid)}'><b>{_e(finding_title(fid))}</b>{_e(more)}: "
                     f"{_e(gist(message(f)))} <a href='#finding-{idx[0]}'>details</a></li>")
    if diagnosis.verdict().id == "cannot_judge":
        items.extend(f"<li class='unjudged'>{_e(w)}</li>" for w in diagnosis.unjudged())
    elif not items:
        items.append("<li>No check raised anything at warning level or above.</li>"
                     if diagnosis.findings else "<li>No check found anything wrong in the inputs.</li>")
    out.append("<ul>" + "".join(items) + "</ul></section>")
    return out


def _causes(diagnosis: Diagnosis, fig_by_finding: dict[int, list[Figure]]) -> list[str]:
    out = ["<h2 id='causes'>Probable causes</h2>"]
    if not diagnosis.causes:
        out.append("<p>None of the symptoms with a cause model (loss spikes, stripes, doubled tiling) was "
                   "observed.</p>")
        return out
    by_symptom: dict[str, list] = {}
    for c in diagnosis.causes:
        by_symptom.setdefault(c.symptom, []).append(c)
    for symptom, causes in by_symptom.items():
        out.append(f"<h3 data-symptom='{_e(symptom)}'>{_e(symptom_title(symptom))}</h3>")
        for rank, c in enumerate(sorted(causes, key=lambda c: -c.score), 1):
            out.append(f"<div class='cause' id='cause-{_e(c.id)}' data-cause='{_e(c.id)}'>"
                       f"<h4>{rank}. {_e(cause_title(c.id))}<span class='cid'>{_e(c.id)}</span> "
                       f"<span class='score'>score {c.score:.2f}</span>"
                       f"<span class='bar' style='width:{int(120 * c.score)}px'></span></h4><ul>")
            out.extend(f"<li>{_e(ev)}</li>" for ev in c.evidence)
            out.append("</ul>")
            if c.findings:
                out.append("<div class='small'>findings: " + ", ".join(
                    f"<a href='#finding-{i}'>#{i}</a>" for i in c.findings) + "</div>")
            out.append(f"<div class='advice'><b>What to try:</b> {_e(c.advice)}</div>")
            shown: list[Figure] = []
            for i in c.findings:
                for fig in fig_by_finding.get(i, []):
                    if fig not in shown:
                        shown.append(fig)
            if shown:
                out.append("<div class='small'>figures: " + ", ".join(
                    f"<a href='#fig-{_e(f.name)}'>{_e(f.title)}</a>" for f in shown) + "</div>")
            out.append("</div>")
    return out


def _findings(diagnosis: Diagnosis, fig_by_finding: dict[int, list[Figure]]) -> list[str]:
    out = ["<h2 id='findings'>Findings</h2>"]
    if not diagnosis.findings:
        return out + ["<table id='findings-table'><tbody><tr><td>No findings.</td></tr></tbody></table>"]
    out.append("<p class='small'>Most severe first, then by training step.</p>"
               "<table id='findings-table'><colgroup><col class='c-n'><col class='c-sev'><col class='c-id'>"
               "<col class='c-step'><col class='c-where'><col class='c-msg'><col class='c-fig'></colgroup>"
               "<thead><tr><th>#</th><th>severity</th><th>finding</th><th>step</th>"
               "<th>where</th><th>message</th><th>figure</th></tr></thead><tbody>")
    for i in finding_order(diagnosis.findings):
        f = diagnosis.findings[i]
        step = first_step(f.location)
        figs = fig_by_finding.get(i, [])
        links = ", ".join(f"<a href='#fig-{_e(g.name)}'>{_e(g.title)}</a>" for g in figs) or "—"
        out.append(f"<tr id='finding-{i}' data-severity='{f.severity}' data-step='{'' if step is None else step}'>"
                   f"<td class='num'>{i}</td><td class='sev-{f.severity}'>{f.severity}</td>"
                   f"<td>{_e(finding_title(f.id))}<span class='cid'>{_e(f.id)}</span></td>"
                   f"<td class='num'>{'' if step is None else step}</td>"
                   f"<td>{_e(where(f.location, steps=False))}</td><td>{_e(message(f))}</td>"
                   f"<td class='figlinks'>{links}</td></tr>")
    out.append("</tbody></table>")
    return out


def render_html(run: RunData, diagnosis: Diagnosis, figures: list[Figure], paths: list[Path]) -> str:
    """Render the report page; every figure is embedded as a ``data:`` PNG so it opens from disk."""
    imgs = {f.name: base64.b64encode(Path(p).read_bytes()).decode("ascii") for f, p in zip(figures, paths)}
    fig_by_finding: dict[int, list[Figure]] = {}
    for f in figures:
        for i in f.findings:
            fig_by_finding.setdefault(i, []).append(f)
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width,initial-scale=1'>",
           f"<title>diffdiag report — {_e(run.name)}</title><style>{_CSS}</style></head><body><main>",
           f"<h1>diffdiag report — {_e(run.name)}</h1>",
           f"<div class='meta'>diffdiag {__version__} · {_e(diagnosis.created)} · "
           f"{len(diagnosis.findings)} findings · {len(diagnosis.causes)} causes ranked</div>"]
    out += _banner(diagnosis)
    out += _causes(diagnosis, fig_by_finding)
    out += _findings(diagnosis, fig_by_finding)
    sections: dict[str, list[Figure]] = {}
    for f in figures:
        sections.setdefault(f.section, []).append(f)
    if sections:
        out.append("<h2 id='figures'>Figures</h2>")
    for section, figs in sections.items():
        out.append(f"<h3>{_e(section.capitalize())}</h3>")
        for f in figs:
            back = ""
            if f.findings:
                back = " <span class='small'>Shows findings " + ", ".join(
                    f"<a href='#finding-{i}'>#{i}</a>" for i in sorted(set(f.findings))) + ".</span>"
            out.append(f"<figure id='fig-{_e(f.name)}' data-section='{_e(f.section)}'><img alt='{_e(f.title)}' "
                       f"src='data:image/png;base64,{imgs[f.name]}'>"
                       f"<figcaption><b>{_e(f.title)}.</b> {_e(f.caption)}{back}</figcaption></figure>")
    if diagnosis.warnings:
        out.append("<h2 id='notes'>Notes</h2><ul>" + "".join(f"<li>{_e(w)}</li>" for w in diagnosis.warnings)
                   + "</ul>")
    out.append("<h2 id='inputs'>Inputs and settings</h2><details><summary>What was analysed, with which settings"
               "</summary><pre class='small'>"
               + _e(json.dumps({"inputs": diagnosis.inputs, "settings": diagnosis.settings}, indent=2, default=str))
               + "</pre></details>")
    out.append("</main></body></html>")
    return "\n".join(out)
