"""``triage.html``: one page over every triaged run (self-contained, opens from disk).

* a sortable table (click a column heading): one row per run, one column per symptom
  group with findings in any run — its cell coloured by the worst severity there, with
  the number of findings and, for symptoms with ranked causes, the top cause — then the
  verdict, the first bad step and a link to the run's own report;
* small multiples: each run's loss curve (median per step bucket, min–max band, log
  scale) with its findings marked at their steps in their severity's colour.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

from .._version import __version__
from ..model import SEVERITY_RANK, VERDICTS

#: symptom group -> (heading, finding ids, the cause symptom whose top cause the cell names)
SYMPTOM_GROUPS: list[tuple[str, str, tuple[str, ...], str | None]] = [
    ("loss", "loss", ("loss_spike", "loss_divergence", "ema_divergence", "loss_nonfinite", "loss_plateau",
                      "loss_sample_correlation", "grad_norm_spike"), "loss_spikes"),
    ("stripes", "stripes", ("stripes",), "stripes"),
    ("tiling", "tiling", ("tiling_period_doubling",), "tiling_doubling"),
    ("images", "images", ("periodic_pattern", "hf_noise_patch", "image_degenerate", "crop_offset"), None),
    ("latents", "latents", ("latent_batch_shift", "latent_periodicity", "latent_stats_drift"), None),
    ("dataset", "dataset", ("dataset_tiled_source", "dataset_invalid_mask", "dataset_brightness_skew",
                            "dataset_contrast_skew"), None),
    ("checkpoints", "checkpoints", ("checkpoint_nonfinite", "checkpoint_norm_explosion",
                                    "checkpoint_norm_collapse"), None),
    ("onset", "artifact onset", ("artifact_onset",), None),
    ("attention", "attention", ("attention_collapse",), None),
]
_COLOR = {"critical": "#c62a22", "warning": "#d99a00", "info": "#2b6b9e"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1400px;margin:0 auto;padding:24px}h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:28px 0 10px;border-bottom:1px solid #dde;padding-bottom:4px}
.meta{color:#667;font-size:13px}table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #dde;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4;cursor:pointer;user-select:none;white-space:nowrap}th:after{content:" \\2195";color:#99a}
td.num{font-variant-numeric:tabular-nums;text-align:right}
.c-critical{background:#fde2e1;color:#7d1510;font-weight:600}.c-warning{background:#fff4d6;color:#6b4800;font-weight:600}
.c-info{background:#e6f1fb;color:#1c4f7a}.c-none{color:#aab}
.v-ok{color:#17612e}.v-info{color:#1c4f7a}.v-warning{color:#946200;font-weight:700}
.v-critical{color:#b3261e;font-weight:700}.v-cannot_judge{color:#45306e}.v-error{color:#b3261e}
.cause{display:block;font-size:11px;font-weight:400;font-family:ui-monospace,Menlo,Consolas,monospace}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #dde;border-radius:8px;padding:8px;width:262px}
.card h3{font-size:13px;margin:0 0 4px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.card .small,.small{font-size:11px;color:#667}.err{font-size:12px;color:#b3261e;overflow-wrap:anywhere}
"""

_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows);
    var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
      var nx = parseFloat(x), ny = parseFloat(y), c;
      if (!isNaN(nx) && !isNaN(ny)) c = nx - ny; else c = String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    rows.forEach(function(r){ tb.appendChild(r); });
  });
});
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def group_of(finding_id: str) -> str:
    """The symptom group a finding id belongs to (``other`` when none)."""
    for key, _title, ids, _symptom in SYMPTOM_GROUPS:
        if finding_id in ids:
            return key
    return "other"


def _cell(row: dict[str, Any], severities: dict[str, str], key: str, ids: Iterable[str] | None,
          symptom: str | None) -> str:
    found = {i: n for i, n in row["findings"].items() if (group_of(i) == key if ids is None else i in ids)}
    if not found:
        return "<td class='c-none' data-sort='0'>–</td>"
    worst = max((severities.get(i, "info") for i in found), key=SEVERITY_RANK.__getitem__)
    n = sum(found.values())
    title = ", ".join(f"{i} × {c}" for i, c in found.items())
    cause = row["top_causes"].get(symptom) if symptom else None
    text = f"{n} {worst}" + (f"<span class='cause'>{_e(cause)}</span>" if cause else "")
    return (f"<td class='c-{worst}' data-sort='{(SEVERITY_RANK[worst] + 1) * 100000 + n}' title='{_e(title)}'>"
            f"{text}</td>")


def _svg(curve: dict[str, Any] | None, width: int = 246, height: int = 74) -> str:
    if not curve or not any(v is not None for v in curve["mid"]):
        return "<div class='small'>no loss logged</div>"
    steps = curve["steps"]
    vals = [v for v in curve["lo"] + curve["hi"] if v is not None and v > 0]
    if not vals:
        return "<div class='small'>no positive loss to draw</div>"
    y0, y1 = math.log10(min(vals)), math.log10(max(vals))
    y1 = y1 if y1 > y0 else y0 + 1
    s0, s1 = steps[0], max(steps[-1], steps[0] + 1)
    marks = curve.get("marks") or []
    if marks:
        s1 = max(s1, max(m[0] for m in marks))

    def x(s: float) -> float:
        return 3 + (width - 6) * (s - s0) / (s1 - s0)

    def y(v: float | None) -> float | None:
        if v is None or v <= 0:
            return None
        return 3 + (height - 6) * (1 - (math.log10(v) - y0) / (y1 - y0))

    band_top = [(x(s), y(h)) for s, h in zip(steps, curve["hi"]) if y(h) is not None]
    band_bot = [(x(s), y(lo)) for s, lo in zip(steps, curve["lo"]) if y(lo) is not None]
    line = [(x(s), y(m)) for s, m in zip(steps, curve["mid"]) if y(m) is not None]
    pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in line)
    band = " ".join(f"{a:.1f},{b:.1f}" for a, b in band_top + band_bot[::-1])
    parts = [f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img'>",
             f"<rect width='{width}' height='{height}' fill='#fbfbfd'/>",
             f"<polygon points='{band}' fill='#c9d6ee' stroke='none'/>" if band else "",
             f"<polyline points='{pts}' fill='none' stroke='#2d4f8f' stroke-width='1.2'/>"]
    for step, sev, fid in marks:
        xs = x(step)
        parts.append(f"<line x1='{xs:.1f}' x2='{xs:.1f}' y1='0' y2='{height}' stroke='{_COLOR.get(sev, '#888')}' "
                     f"stroke-width='1.3' opacity='0.85'><title>{_e(fid)} ({_e(sev)}) at step {step}</title></line>")
    parts.append("</svg>")
    return "".join(parts)


def render_triage_html(doc: dict[str, Any], extras: dict[str, dict[str, Any]]) -> str:
    """The page for a ``triage.json`` document.

    Parameters
    ----------
    doc : dict
        The ``triage.json`` document (``runs`` in input order).
    extras : dict
        ``run`` ref -> ``{"curve": ..., "severities": {finding id: worst severity}}`` from the journal.
    """
    rows = doc["runs"]
    used = {group_of(i) for r in rows for i in r["findings"]}
    groups = [(k, t, ids, s) for k, t, ids, s in SYMPTOM_GROUPS if k in used]
    if "other" in used:
        groups.append(("other", "other", (), None))
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
    n_err = sum(1 for r in rows if r["verdict"] is None)
    head = ["run", "verdict"] + [t for _k, t, _i, _s in groups] + ["first bad step", "report"]
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>diffdiag triage</title>",
           f"<style>{_CSS}</style></head><body><main>",
           f"<h1>diffdiag triage: {len(rows)} runs</h1>",
           "<p class='meta'>" + " · ".join(
               [f"{counts[v]} {VERDICTS[v].words}" for v in VERDICTS if counts[v]]
               + ([f"{n_err} could not be analysed"] if n_err else [])) + f" — diffdiag {_e(__version__)}</p>"]
    for line in doc.get("errors") or []:
        out.append(f"<p class='err'>{_e(line)}</p>")
    out.append("<h2>Runs</h2><table class='sortable' id='triage-table'><thead><tr>"
               + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for r in rows:
        ex = extras.get(r["run"], {})
        sev = ex.get("severities") or {}
        v = r["verdict"] or "error"
        words = VERDICTS[v].words if v in VERDICTS else "not analysed"
        rank = {"error": 5, "critical": 4, "warning": 3, "cannot_judge": 2, "info": 1, "ok": 0}.get(v, 0)
        name = _e(r["name"])
        link = f"<a href='{_e(r['report'])}'>{name}</a>" if r["report"] else name
        cells = [f"<td data-sort='{name}'>{link}<div class='small'>{_e(r['run'])}</div>"
                 + (f"<div class='err'>{_e(r['error'])}</div>" if r["error"] else "") + "</td>",
                 f"<td class='v-{v}' data-sort='{rank}'>{_e(words)}</td>"]
        cells += [_cell(r, sev, k, ids or None, s) for k, _t, ids, s in groups]
        step = r["first_bad_step"]
        cells.append(f"<td class='num' data-sort='{'' if step is None else step}'>{'–' if step is None else step}</td>")
        cells.append(f"<td data-sort='{_e(r['report'] or '')}'>"
                     + (f"<a href='{_e(r['report'])}'>report</a>" if r["report"] else "–") + "</td>")
        out.append(f"<tr data-verdict='{v}'>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    out.append("<h2>Loss curves</h2><div class='grid'>")
    for r in rows:
        ex = extras.get(r["run"], {})
        v = r["verdict"] or "error"
        title = f"<a href='{_e(r['report'])}'>{_e(r['name'])}</a>" if r["report"] else _e(r["name"])
        out.append(f"<div class='card'><h3>{title}</h3><div class='small v-{v}'>"
                   f"{_e(VERDICTS[v].words if v in VERDICTS else 'not analysed')}"
                   + (f" · first bad step {r['first_bad_step']}" if r["first_bad_step"] is not None else "")
                   + f"</div>{_svg(ex.get('curve'))}</div>")
    out.append("</div><p class='small'>Marks: <span style='color:#c62a22'>critical</span>, "
               "<span style='color:#d99a00'>warning</span>, <span style='color:#2b6b9e'>info</span> findings at "
               "their steps; the band is the min–max of the loss per step bucket (log scale).</p>")
    out.append(f"<script>{_JS}</script></main></body></html>")
    return "\n".join(out)


__all__ = ["render_triage_html", "SYMPTOM_GROUPS", "group_of"]
