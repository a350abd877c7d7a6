"""W&B Reports for a diagnosis (``--wandb-report``, ``diffdiag publish-report``).

A Report per run, built with ``wandb_workspaces.reports.v2``:

* H1 with the run's name, a MarkdownBlock that leads with the answer (the verdict,
  per symptom the most probable cause and what to try first), then the ranked causes
  with their evidence and advice, and the findings;
* a PanelGrid over the training run (a Runset filtered to it): LinePlots of the loss
  and its EMA, the learning rate and the gradient norm, and a MediaBrowser of the
  logged sample images;
* a PanelGrid over the companion run ``diffdiag-<run id>``: the ``diffdiag/findings``
  and ``diffdiag/causes`` tables and the report figures.

The Report is first described by a small JSON spec (``REPORT/wandb_report.json``,
schema ``diffdiag.wandb_report/1``) and built from it: online runs publish it at once
with ``Report.save()``; for offline runs the spec is kept so ``diffdiag publish-report
REPORT`` can publish it once the runs are synced.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from diffdiag.errors import InputError, TrackerError
from diffdiag.model import Diagnosis, RunData

SPEC_NAME = "wandb_report.json"
SPEC_SCHEMA = "diffdiag.wandb_report/1"


def _markdown(run: RunData, diagnosis: Diagnosis, max_findings: int = 15) -> str:
    """The Report's text: the answer first (verdict, per symptom the most probable cause and what to
    try first), then the ranked causes with their evidence, then the findings (most severe first)."""
    from diffdiag.causes.titles import answer_parts, cause_title, headline, symptom_title
    from diffdiag.findings.words import count_words, finding_order, finding_title, message, where

    parts = answer_parts(diagnosis)
    lines = [f"**Verdict: {diagnosis.verdict().words}**" + (" — " + "; ".join(parts) if parts else ""), ""]
    lines += [f"- *First try ({h.symptom_title.lower()}):* {h.advice}" for h in headline(diagnosis)]
    lines += ["", f"{count_words(diagnosis.findings)}.", ""]
    if diagnosis.causes:
        lines.append("### Probable causes (ranked within each symptom)")
        lines.append("")
        by_symptom: dict[str, list[Any]] = {}
        for c in diagnosis.causes:
            by_symptom.setdefault(c.symptom, []).append(c)
        for symptom, causes in by_symptom.items():
            lines.append(f"**{symptom_title(symptom)}**")
            lines.append("")
            for rank, c in enumerate(sorted(causes, key=lambda c: -c.score), 1):
                ev = " ".join(c.evidence[:3])
                lines.append(f"{rank}. **{cause_title(c.id)}** (`{c.id}`) — score {c.score:.2f}. {ev}")
            top = max(causes, key=lambda c: c.score)
            lines.append("")
            lines.append(f"*Advice:* {top.advice}")
            lines.append("")
    if diagnosis.findings:
        lines.append("### Findings")
        lines.append("")
        order = finding_order(diagnosis.findings)
        for i in order[:max_findings]:
            f = diagnosis.findings[i]
            loc = where(f.location)
            lines.append(f"- **{f.severity}** {finding_title(f.id)} (`{f.id}`{'; ' + loc if loc else ''}): "
                         f"{message(f)}")
        if len(order) > max_findings:
            lines.append(f"- … and {len(order) - max_findings} more in the `diffdiag/findings` table")
    return "\n".join(lines).strip() + "\n"


def build_spec(run: RunData, diagnosis: Diagnosis, tracker: dict[str, Any],
               companion: str | None = None) -> dict[str, Any]:
    """The Report as plain JSON (what :func:`report_from_spec` builds and ``publish-report`` saves)."""
    run_id = tracker.get("run_id") or run.name
    companion = companion or f"diffdiag-{run_id}"
    log = run.log
    line_plots = []
    if log is not None:
        if log.loss_key:
            line_plots.append({"title": "loss", "y": [k for k in (log.loss_key, log.ema_key) if k]})
        if log.lr_key:
            line_plots.append({"title": "learning rate", "y": [log.lr_key]})
        if log.grad_norm_key:
            line_plots.append({"title": "gradient norm", "y": [log.grad_norm_key]})
    spike_steps = sorted({int(f.location["step"]) for f in diagnosis.findings
                          if f.id in ("loss_spike", "loss_nonfinite", "loss_divergence") and "step" in f.location})
    sample_keys = sorted({s.path[len("wandb:"):].rsplit("@", 1)[0] for s in run.samples
                          if s.path.startswith("wandb:")})
    figure_keys = [f"diffdiag/figures/{Path(p).stem}" for p in diagnosis.outputs.get("figures", [])]
    return {
        "schema": SPEC_SCHEMA,
        "entity": tracker.get("entity") or None,
        "project": tracker.get("project") or None,
        "run_id": run_id,
        "companion_run": companion,
        "offline": bool(tracker.get("offline")),
        "title": f"diffdiag: {run.name}"[:128],
        "description": f"Diagnosis of run {run_id} by diffdiag",
        "markdown": _markdown(run, diagnosis),
        "line_plots": line_plots,
        "spike_steps": spike_steps[:50],
        "sample_keys": sample_keys,
        "tables": ["diffdiag/findings", "diffdiag/causes"],
        "figure_keys": figure_keys,
        "url": None,
    }


def report_from_spec(spec: dict[str, Any], entity: str | None = None) -> Any:
    """Build the ``wandb_workspaces`` Report object from a spec (nothing is sent)."""
    import wandb_workspaces.reports.v2 as wr

    if spec.get("schema") != SPEC_SCHEMA:
        raise InputError(f"is not a diffdiag W&B report spec (schema {spec.get('schema')!r}, expected {SPEC_SCHEMA})")
    entity = entity or spec.get("entity")
    project = spec.get("project")
    if not project:
        raise InputError("the report spec names no W&B project")
    run_id, companion = spec["run_id"], spec["companion_run"]
    train_rs = wr.Runset(entity=entity, project=project, name="training run",
                         filters=f"Metric('ID') in ['{run_id}']")
    diag_rs = wr.Runset(entity=entity, project=project, name="diffdiag",
                        filters=f"Metric('ID') in ['{companion}']")
    train_panels: list[Any] = []
    for lp in spec.get("line_plots", []):
        title = lp["title"]
        if title == "loss" and spec.get("spike_steps"):
            shown = ", ".join(str(s) for s in spec["spike_steps"][:10])
            title = f"loss (diffdiag flagged steps {shown})"
        train_panels.append(wr.LinePlot(title=title[:120], x="Step", y=list(lp["y"]),
                                        smoothing_show_original=True))
    if spec.get("sample_keys"):
        train_panels.append(wr.MediaBrowser(title="sample images", media_keys=list(spec["sample_keys"]),
                                            num_columns=4, gallery_axis="step"))
    diag_panels: list[Any] = [wr.WeavePanelSummaryTable(table_name=t) for t in spec.get("tables", [])]
    if spec.get("figure_keys"):
        diag_panels.append(wr.MediaBrowser(title="diffdiag figures", media_keys=list(spec["figure_keys"]),
                                           num_columns=2))
    blocks: list[Any] = [
        wr.H1(text=spec["title"]),
        wr.MarkdownBlock(text=spec["markdown"]),
    ]
    if train_panels:
        blocks.append(wr.PanelGrid(runsets=[train_rs], panels=train_panels))
    blocks.append(wr.H2(text="diffdiag results"))
    blocks.append(wr.PanelGrid(runsets=[diag_rs], panels=diag_panels))
    return wr.Report(project=project, entity=entity or "", title=spec["title"], description=spec["description"],
                     blocks=blocks)


@contextmanager
def _base_url(url: str | None) -> Iterator[None]:
    old = os.environ.get("WANDB_BASE_URL")
    if url:
        os.environ["WANDB_BASE_URL"] = url
    try:
        yield
    finally:
        if url:
            if old is None:
                os.environ.pop("WANDB_BASE_URL", None)
            else:
                os.environ["WANDB_BASE_URL"] = old


def publish_spec(spec: dict[str, Any], entity: str | None = None, base_url: str | None = None) -> str:
    """Save the Report on W&B (``upsertView``); return its URL. Errors raise TrackerError."""
    from diffdiag.integrations.wandb_source import make_api, retry, tracker_error

    with _base_url(base_url):
        api = make_api(base_url)
        if not (entity or spec.get("entity")):
            entity = retry(lambda: api.default_entity, "the default entity")
        report = report_from_spec(spec, entity=entity)

        def _save() -> str:
            try:
                report.save()
            except ValueError as exc:  # wandb_workspaces: the runset's project does not exist there
                raise TrackerError(
                    f"cannot publish the report: {str(exc).splitlines()[0][:200]} — sync the offline runs first "
                    f"(`wandb sync <run dir>`, the companion run diffdiag-{spec.get('run_id')} too)") from None
            return str(report.url)

        try:
            return retry(_save, f"publishing the report to {entity or spec.get('entity')}/{spec.get('project')}")
        except TrackerError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise tracker_error(exc, "publishing the report") from None


def build_wandb_report(run: RunData, diagnosis: Diagnosis, report_dir: Path, tracker: dict[str, Any],
                       companion: str | None = None) -> dict[str, Any]:
    """``--wandb-report``: write the spec; publish it now when the run is online.

    Returns
    -------
    dict
        ``{"spec": path, "published": bool, "url": str | None}``.
    """
    from diffdiag.redact import redact_obj

    from .folder import ReportFolder

    spec = redact_obj(build_spec(run, diagnosis, tracker, companion))  # no secret in a spec that is shared
    folder = ReportFolder(report_dir)
    folder.claim([SPEC_NAME])
    path = Path(report_dir) / SPEC_NAME
    out: dict[str, Any] = {"spec": str(path), "published": False, "url": None}
    if not spec["offline"]:
        spec["url"] = publish_spec(spec, base_url=tracker.get("base_url"))
        out.update(published=True, url=spec["url"])
    folder.write(SPEC_NAME, lambda tmp: tmp.write_text(json.dumps(spec, indent=2), encoding="utf-8"))
    return out


def publish_report_dir(report_dir: str | Path, entity: str | None = None, project: str | None = None,
                       base_url: str | None = None) -> str:
    """``diffdiag publish-report REPORT_DIR``: publish a spec written for an offline run."""
    report_dir = Path(report_dir)
    path = report_dir / SPEC_NAME if report_dir.is_dir() else report_dir
    if not path.exists():
        raise InputError(f"has no {SPEC_NAME} (run `diffdiag analyze ... --wandb-report` first)", report_dir)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"is not valid JSON ({exc})", path) from None
    if project:
        spec["project"] = project
    url = publish_spec(spec, entity=entity, base_url=base_url)
    spec["url"] = url
    if entity:
        spec["entity"] = entity
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return url
