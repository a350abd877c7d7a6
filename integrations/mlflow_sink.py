"""Write a diagnosis back into the analysed MLflow run (``--push``, docs/CONTRACT.md §4).

Everything goes into the run itself through ``MlflowClient`` with the run's
id — never ``mlflow.start_run(run_id=…)``, which would reopen a finished run.
The run's status and end time stay as they were; nothing the training wrote
is changed.

What is written
---------------
* artifacts ``diffdiag/diagnosis.json``, ``diffdiag/report.html``,
  ``diffdiag/report.pdf``, ``diffdiag/figures/*.png``;
* tables ``diffdiag/findings.json`` and ``diffdiag/causes.json`` in MLflow's
  table format (registered in the ``mlflow.loggedArtifacts`` tag, as
  ``log_table`` does, so the experiment's artifact-evaluation view shows them);
* anomaly images as step images, the finding drawn on them (its box, stripe
  period marks; ``images/diffdiag~<finding>~<image>+step+…``, the files
  ``log_image(key="diffdiag/<finding>/<image>", step=…)`` writes; ``<image>`` is
  the image's file or sample name, without folders);
* tags ``diffdiag.verdict`` (``ok``/``info``/``warning``/``critical``),
  ``diffdiag.top_cause``, ``diffdiag.version``, ``diffdiag.findings``,
  ``diffdiag.created``;
* a markdown summary appended to the run's note (``mlflow.note.content``, the
  run's *Description*), below whatever the user wrote: its first line is the
  answer (``**diffdiag**: <verdict> — <symptom>: most probable cause <cause>``),
  then, between the markdown comments ``[//]: # "diffdiag:begin"`` and
  ``[//]: # "diffdiag:end"`` (rendered as nothing), what to try first, the
  findings table and the ranked causes.

Idempotent: file names are deterministic (same analysis → same paths,
overwritten), tables are rewritten rather than appended to (``log_table``
appends), earlier diffdiag files that the new analysis no longer produces are
deleted (only under ``diffdiag/`` and ``images/diffdiag~``), and the note's
diffdiag section is replaced, never duplicated.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from diffdiag.errors import TrackerError
from diffdiag.model import SEVERITY_RANK, Diagnosis, ImageInput, RunData

from diffdiag.deadline import Deadline, retry

from .mlflow_source import _is_rest, _retry_settings, _transient, connect, http_bounds

NOTE_TAG = "mlflow.note.content"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
LOGGED_IMAGES_TAG = "mlflow.loggedImages"
#: markdown comments (empty link definitions): invisible in any CommonMark renderer, raw HTML or not
NOTE_BEGIN = '[//]: # "diffdiag:begin"'
NOTE_END = '[//]: # "diffdiag:end"'
#: the note section's first line (the answer) starts with this
NOTE_LEAD = "**diffdiag**: "
MAX_TAG_VALUE = 8000
TABLES = ("diffdiag/findings.json", "diffdiag/causes.json")
_NAMESPACE = uuid.UUID("6f1c2b9e-5d0a-4c1e-9a57-2f4d8e0b7c31")
# the section: its answer line (absent in notes written before it had one), the markers and what lies between
_NOTE_RE = re.compile(r"(?:^" + re.escape(NOTE_LEAD) + r"[^\n]*\n\n)?" + re.escape(NOTE_BEGIN) + r".*?"
                      + re.escape(NOTE_END), re.S | re.M)


# --------------------------------------------------------------------------- content

def verdict(diagnosis: Diagnosis) -> str:
    """The verdict's id (:class:`diffdiag.model.Verdict`): ``ok`` when nothing was found, else the worst severity."""
    return diagnosis.verdict().id


def top_cause(diagnosis: Diagnosis) -> str:
    """The most probable cause of the most severe symptom (``none`` without causes)."""
    if not diagnosis.causes:
        return "none"

    def rank(c) -> tuple:
        sev = max((SEVERITY_RANK[diagnosis.findings[i].severity] for i in c.findings
                   if 0 <= i < len(diagnosis.findings)), default=0)
        return (sev, c.score)

    return max(diagnosis.causes, key=rank).id


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def note_section(diagnosis: Diagnosis, max_rows: int = 10, short: bool = False) -> str:
    """The markdown diffdiag puts into the run's note.

    Its first line is the answer (:data:`NOTE_LEAD`, the verdict, per symptom the most
    probable cause); below it, between the begin/end markers, what to try first, the
    findings (most severe first, then by step) and the causes with their advice.
    """
    from diffdiag._version import __version__
    from diffdiag.causes.titles import answer_parts, cause_title, headline, symptom_title
    from diffdiag.findings.words import count_words, finding_order, finding_title, message, where

    parts = answer_parts(diagnosis)
    lines = [NOTE_LEAD + _md_cell(diagnosis.verdict().words + (" — " + "; ".join(parts) if parts else "")), "",
             NOTE_BEGIN, ""]
    lines += [f"- First try ({h.symptom_title.lower()}): {_md_cell(h.advice)}" for h in headline(diagnosis)]
    n = len(diagnosis.findings)
    lines += ["", f"{count_words(diagnosis.findings)}, {len(diagnosis.causes)} cause"
                  f"{'s' if len(diagnosis.causes) != 1 else ''} ranked (diffdiag {__version__}, "
                  f"{diagnosis.created or 'now'})."]
    if not short and diagnosis.findings:
        lines += ["", "| severity | finding | where | message |", "| --- | --- | --- | --- |"]
        shown = [diagnosis.findings[i] for i in finding_order(diagnosis.findings)[:max_rows]]
        for f in shown:
            lines.append(f"| {f.severity} | {finding_title(f.id)} `{f.id}` | {_md_cell(where(f.location))} | "
                         f"{_md_cell(message(f))} |")
        if n > len(shown):
            lines.append(f"\n… and {n - len(shown)} more in the `diffdiag/findings.json` table.")
    if not short and diagnosis.causes:
        lines += ["", "**Most probable causes**", ""]
        seen: set[str] = set()
        for c in diagnosis.causes:
            if c.symptom in seen:
                continue
            seen.add(c.symptom)
            lines.append(f"- {symptom_title(c.symptom)}: **{cause_title(c.id)}** (`{c.id}`, score {c.score:.2f}) "
                         f"— {_md_cell(c.advice)}")
    lines += ["", "Full report: artifact `diffdiag/report.html`; tables `diffdiag/findings.json`, "
                  "`diffdiag/causes.json`.", "", NOTE_END]
    return "\n".join(lines)


def merge_note(existing: str | None, section: str) -> str:
    """The user's note with diffdiag's section replaced (or appended below it; with no note, it is the note)."""
    text = existing or ""
    if _NOTE_RE.search(text):
        return _NOTE_RE.sub(lambda m: section, text, count=1)
    return (text.rstrip() + "\n\n" + section) if text.strip() else section


def fit_note(existing: str | None, diagnosis: Diagnosis) -> str | None:
    """The merged note within MLflow's tag limit (fewer rows, then a short section); None if it cannot fit."""
    for rows, short in ((10, False), (5, False), (2, False), (0, True)):
        merged = merge_note(existing, note_section(diagnosis, rows, short))
        if len(merged) <= MAX_TAG_VALUE:
            return merged
    return None


def findings_table(diagnosis: Diagnosis):
    """Findings as a DataFrame (one row each; location and evidence as JSON text, ``where`` in words)."""
    import pandas as pd

    from diffdiag.findings.words import first_step, where

    rows = []
    for i, f in enumerate(diagnosis.findings):
        d = f.to_dict()
        loc = d["location"]
        rows.append({"index": i, "id": f.id, "severity": f.severity, "score": d["score"],
                     "message": f.message,
                     "step": first_step(loc),
                     "where": where(loc),
                     "location": json.dumps(loc, sort_keys=True),
                     "evidence": json.dumps(d["evidence"], sort_keys=True)})
    cols = ["index", "id", "severity", "score", "message", "step", "where", "location", "evidence"]
    return pd.DataFrame(rows, columns=cols)


def causes_table(diagnosis: Diagnosis):
    """Causes as a DataFrame (rank within the symptom, evidence sentences joined)."""
    import pandas as pd

    rows = []
    rank: dict[str, int] = {}
    for c in diagnosis.causes:
        rank[c.symptom] = rank.get(c.symptom, 0) + 1
        d = c.to_dict()
        rows.append({"symptom": c.symptom, "rank": rank[c.symptom], "id": c.id, "score": d["score"],
                     "advice": c.advice, "evidence": " ".join(c.evidence),
                     "findings": json.dumps(d["findings"])})
    cols = ["symptom", "rank", "id", "score", "advice", "evidence", "findings"]
    return pd.DataFrame(rows, columns=cols)


def _image_key(finding_id: str, label: str) -> str:
    """``diffdiag/<finding>/<image>``: the image's name without folders or extension.

    A tracker sample keeps its key and, after the first, its index (``"wandb:samples/grid@500#1"`` ->
    ``samples_grid_1``); a file its name (``"/data/run/samples/step_000150_0.png"`` -> ``step_000150_0``).
    """
    m = re.search(r"@(-?\d+|\?)(?:#(\d+))?$", str(label))  # a sample label's "@<step>#<index>"
    name = str(label)[:m.start()] if m else str(label)
    if m and m.group(2) and int(m.group(2)) > 0:
        name += f"_{int(m.group(2))}"  # the step's second, third ... image
    head, sep, rest = name.partition(":")
    if sep and "/" not in head and len(head) > 1:  # a tracker label: "<source>:<key>"
        name = rest
    elif "/" in name or "\\" in name:
        name = re.split(r"[/\\]", name)[-1]
    name = re.sub(r"\.(png|jpe?g|webp|bmp|tiff?)$", "", name, flags=re.I)
    clean = re.sub(r"[^A-Za-z0-9_\-.]+", "_", name).strip("._ ")[-80:] or "image"
    return f"diffdiag/{finding_id}/{clean}"


def anomaly_images(run: RunData, diagnosis: Diagnosis, limit: int) -> list[tuple[str, int, np.ndarray]]:
    """(key, step, image) for findings located in an image the run holds; at most ``limit``.

    The image is an RGB uint8 array with the finding drawn on it
    (:func:`diffdiag.reports.fig_images.annotate`).
    """
    from diffdiag.reports.fig_images import annotate

    by_label: dict[str, ImageInput] = {}
    for item in list(run.images) + list(run.samples):
        by_label.setdefault(item.path, item)
        if item.step is not None:
            by_label.setdefault(f"{item.path}@{item.step}", item)
    out: list[tuple[str, int, np.ndarray]] = []
    seen: set[tuple[str, int]] = set()
    ordered = sorted(diagnosis.findings, key=lambda f: (-SEVERITY_RANK[f.severity], -f.score))
    for f in ordered:
        label = f.location.get("image")
        if not isinstance(label, str):
            continue
        step = f.location.get("step")
        item = by_label.get(f"{label}@{step}") or by_label.get(label)
        if item is None:
            continue
        s = int(step if isinstance(step, (int, np.integer)) else (item.step or 0))
        key = _image_key(f.id, label)
        if (key, s) in seen:
            continue
        seen.add((key, s))
        out.append((key, s, annotate(item.image, [f])))
        if len(out) >= limit:
            break
    return out


def _to_pil(img: np.ndarray):
    from PIL import Image

    a = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(a)


def _write_step_image(stage: Path, key: str, step: int, timestamp: int, image: np.ndarray) -> list[str]:
    """Write the files ``log_image(key=key, step=step)`` would, under deterministic names."""
    from mlflow.tracking.multimedia import compress_image_size

    sanitized = key.replace("/", "~")
    uid = uuid.uuid5(_NAMESPACE, f"{key}|{step}")
    base = f"images/{sanitized}+step+{step}+timestamp+{timestamp}+{uid}"
    pil = _to_pil(image)
    (stage / "images").mkdir(parents=True, exist_ok=True)
    pil.save(stage / f"{base}.png")
    compress_image_size(pil).save(stage / f"{base}+compressed.webp")
    return [f"{base}.png", f"{base}+compressed.webp"]


def _table_json(df, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_json(path, orient="split", index=False, date_format="iso")


# --------------------------------------------------------------------------- push

def _own_files(client, run_id: str, deadline: Deadline | None = None) -> list[str]:
    """diffdiag's earlier files in the run: below ``diffdiag/`` and ``images/diffdiag~…``, plain relative
    paths only (a listed path that climbs with ``..`` or is absolute is never deleted)."""
    from diffdiag.confine import Escape, relative_part

    from .mlflow_source import walk_artifacts

    own = [fi.path for fi in walk_artifacts(client, run_id, "diffdiag", deadline=deadline)]
    try:
        own += [fi.path for fi in client.list_artifacts(run_id, "images")
                if not fi.is_dir and fi.path.startswith("images/diffdiag~")]
    except Exception:  # noqa: BLE001 - no images folder
        pass
    safe = []
    for p in own:
        try:
            if str(relative_part(p)) == p and p.startswith(("diffdiag/", "images/diffdiag~")):
                safe.append(p)
        except Escape:
            continue
    return safe


def _delete_stale(client, run_id: str, stale: list[str], tracking_uri: str) -> int:
    """Delete earlier diffdiag files no longer produced; returns how many could not be deleted."""
    if not stale:
        return 0
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri, tracking_uri=tracking_uri)
    except Exception:  # noqa: BLE001 - an artifact store we cannot delete from
        return len(stale)
    failed = 0
    for p in stale:
        try:
            repo.delete_artifacts(p)
        except Exception:  # noqa: BLE001 - stores without deletion: leave it, say so
            failed += 1
    return failed


def push_mlflow(run: RunData, diagnosis: Diagnosis, report_dir: Path, *, run_id: str,
                tracking_uri: str | None = None, max_images: int = 16) -> dict[str, Any]:
    """Write the diagnosis into an MLflow run (usually the one ``run`` was read from).

    Parameters
    ----------
    run : RunData
        The analysed inputs (e.g. read by :func:`~diffdiag.integrations.mlflow_source.read_mlflow_run`):
        anomaly images are drawn from its images and samples.
    diagnosis : Diagnosis
    report_dir : Path
        Holds ``diagnosis.json``, ``report.html``, ``report.pdf`` and ``figures/``.
    run_id : str
        The MLflow run to write into.
    tracking_uri : str, optional
        Else ``MLFLOW_TRACKING_URI``, else the embedded store.
    max_images : int
        At most this many annotated anomaly images.

    Returns
    -------
    dict
        ``{"mlflow": {"run_id", "tracking_uri", "experiment_id", "artifact_path",
        "tables", "images", "tags", "ui"}}`` for ``diagnosis.outputs``.

    Raises
    ------
    TrackerError
        The tracking server cannot be reached, refuses a write, or does not answer within
        the push's deadline (``$DIFFDIAG_TRACKER_TIMEOUT``, default 60 s) (exit 3).
    """
    if not run_id:
        raise TrackerError("push_mlflow needs an MLflow run id (--mlflow-run)")
    report_dir = Path(report_dir)
    deadline = Deadline(what=f"pushing the diagnosis into MLflow run '{run_id}'")
    loc, client, mrun = connect(tracking_uri, run_id, announce=False, deadline=deadline)
    if _is_rest(loc):  # MLflow's own HTTP client gives up within the push's deadline too
        with http_bounds(deadline):
            return _push(run, diagnosis, report_dir, loc, client, mrun, run_id, max_images, deadline)
    return _push(run, diagnosis, report_dir, loc, client, mrun, run_id, max_images, None)


def _push(run: RunData, diagnosis: Diagnosis, report_dir: Path, loc, client, mrun, run_id: str,
          max_images: int, deadline: Deadline | None) -> dict[str, Any]:
    """:func:`push_mlflow` once connected; ``deadline`` bounds each call to a tracking server (with retries).

    Crash-safe: every write is idempotent and the run's own data is never rewritten, so a push
    killed at any step (``diffdiag.killpoint``: ``mlflow:after_stale``, ``mlflow:after_upload``,
    ``mlflow:after_images``, ``mlflow:after_tags``) leaves the training's metrics, params, tags,
    status and end time as they were, and the next push converges to one clean push.
    """
    from mlflow.exceptions import MlflowException

    from diffdiag._version import __version__
    from diffdiag.diagnosis_io import write_diagnosis
    from diffdiag.killpoint import kill_point
    from diffdiag.redact import redact_diagnosis

    def call(fn, doing: str):
        if deadline is None:
            return fn()
        return retry(fn, doing=f"{doing} (MLflow run '{run_id}' at {loc.tracking_uri})", transient=_transient,
                     deadline=deadline, attempts=_retry_settings()[0], backoff=_retry_settings()[1])

    shown = redact_diagnosis(diagnosis)  # what goes into the run (tables, note, tags) holds no secret
    status0, end0 = mrun.info.status, mrun.info.end_time
    limit = int(max_images or 16)

    tags = {"diffdiag.verdict": verdict(shown), "diffdiag.top_cause": top_cause(shown),
            "diffdiag.version": __version__, "diffdiag.findings": str(len(shown.findings)),
            "diffdiag.created": shown.created or ""}
    exp_id = mrun.info.experiment_id
    ui = (f"{loc.tracking_uri}/#/experiments/{exp_id}/runs/{run_id}" if _is_rest(loc) else None)
    outputs = {"mlflow": {"run_id": run_id, "tracking_uri": loc.tracking_uri, "experiment_id": exp_id,
                          "artifact_path": "diffdiag", "tables": list(TABLES), "images": 0,
                          "tags": dict(tags), "ui": ui}}
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="diffdiag-mlflow-") as tmp:
        stage = Path(tmp)
        own = stage / "diffdiag"
        own.mkdir()
        # the report files
        for name in ("report.html", "report.pdf"):
            if (report_dir / name).is_file():
                shutil.copyfile(report_dir / name, own / name)
        figs = sorted((report_dir / "figures").glob("*.png")) if (report_dir / "figures").is_dir() else []
        if figs:
            (own / "figures").mkdir()
            for p in figs:
                shutil.copyfile(p, own / "figures" / p.name)
        _table_json(findings_table(shown), stage / TABLES[0])
        _table_json(causes_table(shown), stage / TABLES[1])
        # anomaly images, as step images under deterministic names
        stamp = int(mrun.info.start_time or 0)
        image_files: list[str] = []
        for key, step, img in anomaly_images(run, diagnosis, limit):
            image_files += _write_step_image(stage, key, step, stamp, img)
        outputs["mlflow"]["images"] = len(image_files) // 2
        # diagnosis.json as it will read after this push
        merged = dict(diagnosis.outputs)
        merged.update(outputs)
        saved = diagnosis.outputs
        diagnosis.outputs = merged
        try:
            write_diagnosis(diagnosis, own / "diagnosis.json")
        finally:
            diagnosis.outputs = saved
        new_paths = {str(p.relative_to(stage)).replace("\\", "/") for p in stage.rglob("*") if p.is_file()}
        try:
            stale = [p for p in call(lambda: _own_files(client, run_id, deadline), "listing diffdiag's files")
                     if p not in new_paths]
            failed = _delete_stale(client, run_id, stale, loc.tracking_uri)
            if failed:
                warnings.append(f"{failed} earlier diffdiag file(s) in the MLflow run could not be deleted")
            kill_point("mlflow:after_stale")
            call(lambda: client.log_artifacts(run_id, str(own), "diffdiag"), "uploading the report")
            kill_point("mlflow:after_upload")
            if image_files:
                call(lambda: client.log_artifacts(run_id, str(stage / "images"), "images"), "uploading images")
            kill_point("mlflow:after_images")
            # tags, note, table registry: re-read right before writing
            current = call(lambda: client.get_run(run_id), "reading the run's tags").data.tags
            logged = json.loads(current.get(LOGGED_ARTIFACTS_TAG, "[]") or "[]")
            for t in TABLES:
                entry = {"path": t, "type": "table"}
                if entry not in logged:
                    logged.append(entry)
            batch = dict(tags)
            batch[LOGGED_ARTIFACTS_TAG] = json.dumps(logged)
            if image_files and LOGGED_IMAGES_TAG not in current:  # never rewrite a tag the training set
                batch[LOGGED_IMAGES_TAG] = "True"
            note = fit_note(current.get(NOTE_TAG), shown)
            if note is None:
                warnings.append("the run's note is too long for MLflow's limit; diffdiag's summary was not added")
            elif note != current.get(NOTE_TAG):
                batch[NOTE_TAG] = note
            from mlflow.entities import RunTag

            call(lambda: client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in batch.items()]),
                 "writing tags")
            kill_point("mlflow:after_tags")
            after = call(lambda: client.get_run(run_id), "reading the run back").info
        except MlflowException as exc:
            raise TrackerError(f"writing the diagnosis into MLflow run '{run_id}' at {loc.tracking_uri} "
                               f"failed: {str(exc).splitlines()[0][:200]}") from None
    if (after.status, after.end_time) != (status0, end0):  # pragma: no cover - MlflowClient never does this
        warnings.append(f"MLflow run {run_id} changed status/end time during the push")
    if loc.embedded:
        import sys

        from .mlflow_store import ui_command

        outputs["mlflow"]["ui"] = ui_command(loc)
        print(f"diffdiag: wrote into MLflow run {run_id}; review it with: {outputs['mlflow']['ui']}",
              file=sys.stderr)
    if warnings:
        outputs["mlflow"]["warnings"] = warnings
        diagnosis.warnings.extend(warnings)
    return outputs
