"""``diffdiag triage --push``: the triage table into the trackers the runs came from.

* **W&B** — a run ``diffdiag-triage`` (``job_type="diffdiag-triage"``) in the project:
  the ``diffdiag/triage`` ``wandb.Table`` (one row per run, the ``triage.json`` row's
  fields), ``diffdiag/triage/*`` summary counts and an artifact with ``triage.json`` and
  ``triage.html``; and a W&B Report over that table (``DIR/wandb_report.json``, schema
  ``diffdiag.wandb_report/1``: published at once online, ``diffdiag publish-report DIR``
  later for an offline project). Offline (local run folders, ``WANDB_MODE=offline``) the
  run is written into the runs' ``wandb/`` folder, replacing an earlier one, as the
  companion runs are.
* **MLflow** — a run ``diffdiag-triage`` (tag ``diffdiag.kind=triage``) in the experiment,
  found again on the next push: ``diffdiag/triage.json`` and ``diffdiag/triage.html`` as
  artifacts, and tags ``diffdiag.triage.runs``, ``diffdiag.triage.problems``,
  ``diffdiag.triage.critical``, ``diffdiag.triage.errors``, ``diffdiag.version``.

Each analysed run was already pushed by its worker, as ``diffdiag analyze --push`` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import DiffdiagError, TrackerError
from .refs import RunItem

TRIAGE_RUN = "diffdiag-triage"
TABLE_KEY = "diffdiag/triage"
#: MLflow tags of the triage run: ``diffdiag.triage.runs``, ``.problems``, ``.critical``, ``.errors``
COUNT_TAG = "diffdiag.triage."
COLUMNS = ["run", "name", "verdict", "worst_severity", "findings", "top_causes", "first_bad_step", "report", "error"]


def table_rows(doc: dict[str, Any]) -> list[list[Any]]:
    """The W&B table's rows: the ``triage.json`` rows, dicts as JSON text."""
    return [[json.dumps(r[c], sort_keys=True) if isinstance(r[c], dict) else r[c] for c in COLUMNS]
            for r in doc["runs"]]


def counts(doc: dict[str, Any]) -> dict[str, int]:
    rows = doc["runs"]
    return {"runs": len(rows),
            "problems": sum(1 for r in rows if r["verdict"] in ("warning", "critical")),
            "critical": sum(1 for r in rows if r["verdict"] == "critical"),
            "errors": sum(1 for r in rows if r["error"])}


# ----------------------------------------------------------------------------- W&B
def _wandb_where(items: list[RunItem], projects: list[str]) -> dict[str, Any] | None:
    """Project, entity, offline folder of the W&B triage run (None when no W&B run was triaged)."""
    from ..integrations.wandb_source import tracker_record

    for p in projects:
        d = Path(p).expanduser()
        if d.is_dir():
            local = next((i for i in items if i.kind == "wandb" and Path(i.spec.wandb_run or "").exists()), None)
            rec = tracker_record(str(local.spec.wandb_run)) if local else {}
            wdir = d / "wandb" if (d / "wandb").is_dir() and not any(d.glob("*run-*")) else d
            return {"project": rec.get("project"), "entity": rec.get("entity"), "offline": True, "dir": wdir}
        entity, _, project = p.strip("/").partition("/")
        return {"project": project, "entity": entity, "offline": os.environ.get("WANDB_MODE") == "offline",
                "dir": None}
    for i in items:
        if i.kind != "wandb":
            continue
        rec = tracker_record(str(i.spec.wandb_run))
        return {"project": rec.get("project"), "entity": rec.get("entity"), "offline": bool(rec.get("offline")),
                "dir": Path(rec["dir"]).parent if rec.get("dir") else None, "base_url": rec.get("base_url")}
    return None


def report_spec(doc: dict[str, Any], where: dict[str, Any]) -> dict[str, Any]:
    """The W&B Report over the triage table (the spec :mod:`diffdiag.reports.wandb_report` publishes)."""
    from ..model import VERDICTS
    from ..reports.wandb_report import SPEC_SCHEMA

    c = counts(doc)
    lines = [f"**diffdiag triage of {c['runs']} runs**: {c['problems']} with problems ({c['critical']} critical), "
             f"{c['errors']} with errors.", "", "| run | verdict | first bad step | top causes |", "| --- | --- | --- | --- |"]
    for r in doc["runs"][:200]:
        words = VERDICTS[r["verdict"]].words if r["verdict"] in VERDICTS else "not analysed"
        causes = ", ".join(f"`{v}`" for v in r["top_causes"].values()) or "–"
        step = "–" if r["first_bad_step"] is None else r["first_bad_step"]
        lines.append(f"| {r['name']} | {words} | {step} | {causes} |")
    return {"schema": SPEC_SCHEMA, "entity": where.get("entity") or None, "project": where.get("project") or None,
            "run_id": TRIAGE_RUN, "companion_run": TRIAGE_RUN, "offline": bool(where.get("offline")),
            "title": f"diffdiag triage: {where.get('project') or 'runs'}"[:128],
            "description": f"diffdiag triage of {c['runs']} runs", "markdown": "\n".join(lines) + "\n",
            "line_plots": [], "spike_steps": [], "sample_keys": [], "tables": [TABLE_KEY], "figure_keys": [],
            "url": None}


def push_wandb_triage(doc: dict[str, Any], root: Path, where: dict[str, Any]) -> dict[str, Any]:
    """Write the ``diffdiag-triage`` run (and the Report spec); see the module docstring."""
    import wandb

    from ..integrations.wandb_sink import _COMPANION_SETTINGS, _push_offline, _push_online
    from ..redact import redact_obj
    from ..reports.folder import ReportFolder
    from ..reports.wandb_report import SPEC_NAME, publish_spec

    c = counts(doc)

    def log(wrun: Any) -> None:
        table = wandb.Table(columns=COLUMNS, data=table_rows(doc))
        wrun.log({TABLE_KEY: table}, step=0)
        for k, v in c.items():
            wrun.summary[f"{TABLE_KEY}/{k}"] = v
        art = wandb.Artifact(TRIAGE_RUN, type="diffdiag-triage", description="diffdiag triage: triage.json, html")
        for name in ("triage.json", "triage.html"):
            if (root / name).exists():
                art.add_file(str(root / name), name=name)
        wrun.log_artifact(art, aliases=["latest"])

    init = dict(id=TRIAGE_RUN, name=TRIAGE_RUN, project=where.get("project") or None,
                entity=where.get("entity") or None, job_type="diffdiag-triage", tags=["diffdiag"],
                config={"runs": [r["run"] for r in doc["runs"]][:1000]}, reinit="create_new",
                settings=wandb.Settings(**_COMPANION_SETTINGS))
    had_service = wandb.run is not None
    out: dict[str, Any] = {"run": TRIAGE_RUN, "project": where.get("project"), "entity": where.get("entity"),
                           "offline": bool(where.get("offline"))}
    if where.get("offline"):
        wdir = Path(where["dir"]) if where.get("dir") else root / "wandb"
        wdir.mkdir(parents=True, exist_ok=True)
        out["dir"] = str(_push_offline(wandb, init, wdir, TRIAGE_RUN, had_service, log))
    else:  # on the runs' server, within the push deadline; wandb's local copy goes into a temporary folder
        from ..deadline import Deadline

        out["url"] = _push_online(wandb, init, had_service, log, f"creating the run {TRIAGE_RUN}",
                                  base_url=where.get("base_url"),
                                  deadline=Deadline(what=f"pushing the triage run {TRIAGE_RUN} into W&B"))
    spec = redact_obj(report_spec(doc, where))
    if not spec["offline"]:
        spec["url"] = publish_spec(spec, base_url=where.get("base_url"))
    ReportFolder(root).write(SPEC_NAME, lambda tmp: tmp.write_text(json.dumps(spec, indent=2), encoding="utf-8"))
    out["report"] = {"spec": str(root / SPEC_NAME), "published": not spec["offline"], "url": spec["url"]}
    return out


# ----------------------------------------------------------------------------- MLflow
def _mlflow_experiment(items: list[RunItem], experiments: list[str], tracking_uri: str | None):
    """(client, location, experiment id) of the MLflow triage run, or None."""
    from ..integrations.mlflow_source import connect

    if experiments:
        loc, client, _ = connect(tracking_uri, None, announce=False)
        exp = client.get_experiment_by_name(experiments[0])
        if exp is None:
            exp = client.get_experiment(experiments[0])
        return client, loc, exp.experiment_id
    for i in items:
        if i.kind == "mlflow":
            loc, client, mrun = connect(i.spec.mlflow_tracking_uri, i.spec.mlflow_run, announce=False)
            return client, loc, mrun.info.experiment_id
    return None


def push_mlflow_triage(doc: dict[str, Any], root: Path, client: Any, loc: Any, exp_id: str) -> dict[str, Any]:
    """Write (or update) the ``diffdiag-triage`` run of an experiment; see the module docstring."""
    from mlflow.entities import RunTag

    from .._version import __version__

    found = client.search_runs([exp_id], filter_string="tags.`diffdiag.kind` = 'triage'", max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(exp_id, run_name=TRIAGE_RUN, tags={"diffdiag.kind": "triage"}).info.run_id
    c = counts(doc)
    client.log_batch(run_id, tags=[RunTag("diffdiag.kind", "triage"), RunTag("diffdiag.version", __version__)]
                     + [RunTag(COUNT_TAG + k, str(v)) for k, v in c.items()])
    for name in ("triage.json", "triage.html"):
        if (root / name).exists():
            client.log_artifact(run_id, str(root / name), "diffdiag")
    if found is None or not found or found[0].info.status != "FINISHED":
        client.set_terminated(run_id)
    return {"run_id": run_id, "experiment_id": exp_id, "tracking_uri": loc.tracking_uri, "tags": c}


def push_triage(result: Any, root: Path, items: list[RunItem], options: Any) -> dict[str, Any]:
    """Push the triage table wherever the triaged runs live; a failure is one line in ``result.errors``."""
    out: dict[str, Any] = {}
    doc = result.doc
    try:
        where = _wandb_where(items, list(options.wandb_projects))
        if where is not None:
            out["wandb"] = push_wandb_triage(doc, root, where)
    except DiffdiagError as exc:
        result.errors.append(f"push to W&B: {exc}")
    except Exception as exc:  # noqa: BLE001 - a tracker's own error: said, the triage folder stands
        result.errors.append(f"push to W&B: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    try:
        found = _mlflow_experiment(items, list(options.mlflow_experiments), options.mlflow_tracking_uri)
        if found is not None:
            out["mlflow"] = push_mlflow_triage(doc, root, *found)
    except DiffdiagError as exc:
        result.errors.append(f"push to MLflow: {exc}")
    except Exception as exc:  # noqa: BLE001
        result.errors.append(f"push to MLflow: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if any(e.startswith("push to") for e in result.errors):
        result.tracker_failed = True
    return out


__all__ = ["push_triage", "push_wandb_triage", "push_mlflow_triage", "report_spec", "table_rows", "TRIAGE_RUN"]
