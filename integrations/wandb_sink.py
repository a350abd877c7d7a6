"""Write a diagnosis back to W&B (docs/CONTRACT.md §4): a companion run, and online a tag + summary keys.

The companion run ``diffdiag-<run id>`` lives in the source run's project and group,
``job_type="diffdiag"``, ``config.source_run=<run id>``. It holds

* ``diffdiag/findings`` and ``diffdiag/causes`` — ``wandb.Table``s;
* ``diffdiag/figures/<name>`` — the report's figures as ``wandb.Image``;
* ``diffdiag/annotated/<n>`` — analysed images with anomaly boxes as W&B bounding boxes
  and, for reference/output pairs, the error heatmap as a mask;
* the HTML report, figures and ``diagnosis.json`` as an artifact ``diffdiag-report-<run id>``.

Offline source runs cannot be appended to, so the companion run is written offline
beside the source run (same ``wandb/`` folder); a previous companion of the same run is
replaced, so pushing twice leaves one copy. Online, the companion run is resumed by
its deterministic id and its summary (which holds the tables and images) is rewritten;
the source run gets ``diffdiag/*`` summary keys and a ``diffdiag`` tag through the
public API — its history is never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from diffdiag.deadline import Deadline
from diffdiag.errors import TrackerError
from diffdiag.model import Diagnosis, ImageInput, RunData

from .wandb_source import make_api, redact, retry, tracker_error

SEVERITY_CLASS = {"info": 1, "warning": 2, "critical": 3}


def companion_id(run_id: str) -> str:
    """The companion run's id (deterministic: pushing again targets the same run)."""
    return f"diffdiag-{run_id}"


def findings_table_rows(diagnosis: Diagnosis) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of ``diffdiag/findings``."""
    import json

    cols = ["index", "id", "severity", "score", "message", "location", "evidence"]
    rows = []
    for i, f in enumerate(diagnosis.findings):
        d = f.to_dict()
        rows.append([i, d["id"], d["severity"], d["score"], d["message"],
                     json.dumps(d["location"], sort_keys=True), json.dumps(d["evidence"], sort_keys=True)[:4000]])
    return cols, rows


def causes_table_rows(diagnosis: Diagnosis) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of ``diffdiag/causes`` (ranked within each symptom)."""
    cols = ["rank", "symptom", "id", "score", "evidence", "findings", "advice"]
    rows = []
    rank: dict[str, int] = {}
    for c in diagnosis.causes:
        rank[c.symptom] = rank.get(c.symptom, 0) + 1
        rows.append([rank[c.symptom], c.symptom, c.id, round(float(c.score), 4), " ".join(c.evidence),
                     ",".join(str(i) for i in c.findings), c.advice])
    return cols, rows


def summary_keys(diagnosis: Diagnosis, companion: str | None = None) -> dict[str, Any]:
    """``diffdiag/*`` summary values: verdict, counts, top causes."""
    worst = diagnosis.worst_severity()
    out: dict[str, Any] = {
        "diffdiag/verdict": diagnosis.verdict().words,
        "diffdiag/worst_severity": worst or "none",
        "diffdiag/n_findings": len(diagnosis.findings),
        "diffdiag/n_critical": sum(f.severity == "critical" for f in diagnosis.findings),
        "diffdiag/n_warning": sum(f.severity == "warning" for f in diagnosis.findings),
        "diffdiag/finding_ids": sorted({f.id for f in diagnosis.findings}),
    }
    seen: set[str] = set()
    for c in diagnosis.causes:
        if c.symptom not in seen:
            seen.add(c.symptom)
            out[f"diffdiag/top_cause/{c.symptom}"] = c.id
            out[f"diffdiag/top_cause_score/{c.symptom}"] = round(float(c.score), 4)
    if companion:
        out["diffdiag/companion_run"] = companion
    return out


# ----------------------------------------------------------------------------- images
def _image_lookup(run: RunData) -> dict[str, ImageInput]:
    out: dict[str, ImageInput] = {}
    for item in list(run.images) + list(run.samples):
        out[item.path] = item
        if item.reference_path:
            out.setdefault(item.reference_path, item)
    return out


def _to_uint8(img: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def annotated_images(run: RunData, diagnosis: Diagnosis, limit: int = 16) -> list[dict[str, Any]]:
    """Images with their findings' boxes (pixel ``bbox`` [x0, y0, x1, y1]) and error masks.

    Returns
    -------
    list of dict
        ``{"key", "image" (uint8), "caption", "boxes": [box_data], "mask" (uint8 classes) or None}``.
    """
    lookup = _image_lookup(run)
    per_image: dict[str, list[tuple[int, Any]]] = {}
    for i, f in enumerate(diagnosis.findings):
        name = f.location.get("image")
        if isinstance(name, str) and name in lookup:
            per_image.setdefault(name, []).append((i, f))
    out = []
    for name, items in list(per_image.items())[:limit]:
        inp = lookup[name]
        img = inp.image
        h, w = img.shape[:2]
        boxes = []
        for i, f in items:
            bbox = f.location.get("bbox")
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
                continue
            x0, y0, x1, y1 = (float(v) for v in bbox)
            boxes.append({
                "position": {"minX": max(0.0, x0), "minY": max(0.0, y0), "maxX": min(float(w), x1),
                             "maxY": min(float(h), y1)},
                "domain": "pixel",
                "class_id": SEVERITY_CLASS[f.severity],
                "box_caption": f"#{i} {f.id}",
                "scores": {"score": round(float(f.score), 4)},
            })
        mask = None
        if inp.reference is not None and inp.reference.shape[:2] == img.shape[:2]:
            err = np.abs(np.asarray(img, np.float32) - np.asarray(inp.reference, np.float32))
            if err.ndim == 3:
                err = err.mean(axis=2)
            err = np.nan_to_num(err)
            hi = float(np.percentile(err, 99)) if err.size else 0.0
            if hi > 0:
                mask = np.zeros(err.shape, dtype=np.uint8)
                mask[err > 0.25 * hi] = 1
                mask[err > 0.6 * hi] = 2
        if not boxes and mask is None:
            continue
        caption = "; ".join(f"#{i} {f.id}" for i, f in items)
        out.append({"key": name, "image": _to_uint8(img), "caption": f"{name}: {caption}", "boxes": boxes,
                    "mask": mask})
    return out


def _wandb_image(wandb: Any, item: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {"caption": item["caption"]}
    if item["boxes"]:
        kwargs["boxes"] = {"diffdiag": {"box_data": item["boxes"],
                                        "class_labels": {1: "info", 2: "warning", 3: "critical"}}}
    if item["mask"] is not None:
        kwargs["masks"] = {"error": {"mask_data": item["mask"],
                                     "class_labels": {0: "match", 1: "error", 2: "strong error"}}}
    return wandb.Image(item["image"], **kwargs)


def build_payload(wandb: Any, run: RunData, diagnosis: Diagnosis, report_dir: Path) -> dict[str, Any]:
    """The ``diffdiag/*`` values logged into the companion run."""
    cols, rows = findings_table_rows(diagnosis)
    payload: dict[str, Any] = {"diffdiag/findings": wandb.Table(columns=cols, data=rows)}
    cols, rows = causes_table_rows(diagnosis)
    payload["diffdiag/causes"] = wandb.Table(columns=cols, data=rows)
    fig_dir = Path(report_dir) / "figures"
    for p in sorted(fig_dir.glob("*.png")):
        payload[f"diffdiag/figures/{p.stem}"] = wandb.Image(str(p), caption=p.stem.replace("_", " "))
    annotated = annotated_images(run, diagnosis)
    if annotated:
        payload["diffdiag/annotated"] = [_wandb_image(wandb, a) for a in annotated]
    return payload


# ----------------------------------------------------------------------------- push
#: prefix of the folder (inside the training's ``wandb/``) where an offline companion run is written first
STAGING_PREFIX = ".diffdiag-push-"


def _companion_dirs(wandb_dir: Path, cid: str) -> list[Path]:
    """diffdiag's companion runs of ``cid`` in a ``wandb/`` folder (each holds ``run-<cid>.wandb``)."""
    return sorted(d for d in wandb_dir.glob(f"*run-*-{cid}*")
                  if d.is_dir() and not d.is_symlink() and (d / f"run-{cid}.wandb").is_file())


def _remove_old_companions(wandb_dir: Path, cid: str, keep: Path | None = None) -> int:
    n = 0
    for d in _companion_dirs(wandb_dir, cid):
        if keep is None or d.resolve() != keep.resolve():
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_dead_staging(wandb_dir: Path, cid: str) -> None:
    """Staging folders of earlier pushes of ``cid`` whose process is gone (killed mid-push)."""
    for d in wandb_dir.glob(f"{STAGING_PREFIX}{cid}-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and not d.is_symlink() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _wait_written(wfile: Path, timeout: float = 30.0) -> None:
    """Wait until wandb-core has written the run's exit record (it writes asynchronously after finish)."""
    import time

    from .wandb_records import read_wandb_file

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if wfile.exists() and read_wandb_file(wfile, summary=False).exit_code is not None:
                return
        except Exception:  # noqa: BLE001 - still being written
            pass
        time.sleep(0.05)
    raise TrackerError(f"wandb did not finish writing the companion run {wfile} within {timeout:g} s")


def _push_offline(wandb: Any, init_kwargs: dict[str, Any], wandb_dir: Path, cid: str, had_service: bool,
                  log: Any) -> Path:
    """Write the offline companion run in a staging folder of its own, then move it into ``wandb_dir``.

    ``wandb.init`` runs with ``dir`` = the staging folder, so wandb's ``latest-run`` and
    debug-log links of the training's ``wandb/`` folder are never repointed; the finished
    run folder is renamed into place (atomic) and only then are older companions of the
    same run removed. A push killed at any moment leaves the training's files as they were
    and, at worst, a staging folder (removed by the next push) or two companions (the next
    push keeps one): the next push converges to the state of one clean push.
    """
    from diffdiag.killpoint import kill_point

    _remove_dead_staging(wandb_dir, cid)
    staging = wandb_dir / f"{STAGING_PREFIX}{cid}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        try:
            wrun = wandb.init(dir=str(staging), mode="offline", **init_kwargs)
            kill_point("wandb:after_init")
            try:
                log(wrun)
            finally:
                wrun.finish()
            made = Path(wrun.settings.sync_dir)
            _wait_written(made / f"run-{cid}.wandb")
        finally:
            if not had_service:
                _teardown(wandb)
        kill_point("wandb:after_finish")
        dest = wandb_dir / made.name
        n = 1
        while dest.exists():  # the same second as an earlier push: wandb's own "-1" rule
            dest = wandb_dir / f"{made.name}-{n}"
            n += 1
        os.rename(made, dest)
        kill_point("wandb:after_move")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_old_companions(wandb_dir, cid, keep=dest)
    kill_point("wandb:after_cleanup")
    return dest


def push_wandb(run: RunData, diagnosis: Diagnosis, report_dir: Path, *, tracker: Mapping[str, Any],
               push: bool = True, report: bool = False) -> dict[str, Any]:
    """Push the diagnosis into W&B (the companion run) and/or build the W&B Report.

    Parameters
    ----------
    run : RunData
        The analysed inputs (annotated images are drawn from them).
    diagnosis : Diagnosis
    report_dir : Path
        Holds ``report.html``, ``diagnosis.json``, ``figures/`` (uploaded as an artifact).
    tracker : mapping
        The W&B run's record (``RunData.tracker`` of a W&B source: ``run_id``, ``project``,
        ``entity``, ``group``, ``offline``, ``dir``, ``base_url``).
    push : bool
        Create (or replace) the companion run (``--push``).
    report : bool
        Build the W&B Report (``--wandb-report``).

    Returns
    -------
    dict
        ``{"wandb": {"companion_run", "project", "entity", "group", "offline", "dir"|"url",
        "report"...}}`` for ``diagnosis.outputs``.
    """
    from diffdiag.redact import redact_diagnosis, redact_run_text

    tracker = dict(tracker)
    if not tracker.get("run_id"):
        raise TrackerError("cannot write to W&B: the run that was read has no W&B run id")
    # what is pushed (tables, captions, summary keys, the Report) holds no secret
    run, diagnosis = redact_run_text(run), redact_diagnosis(diagnosis)
    out: dict[str, Any] = {}
    spec: dict[str, Any] | None = None
    if report:
        # first, so that the companion's report artifact carries the spec too
        from diffdiag.reports.wandb_report import build_wandb_report

        spec = build_wandb_report(run, diagnosis, Path(report_dir), tracker, companion=companion_id(tracker["run_id"]))
    if push:
        out.update(push_companion(run, diagnosis, Path(report_dir), tracker))
    if spec is not None:
        out["report"] = spec
    return {"wandb": out} if out else {}


def push_companion(run: RunData, diagnosis: Diagnosis, report_dir: Path, tracker: dict[str, Any]) -> dict[str, Any]:
    """Create (or replace) the companion run; online also tag the source run."""
    import wandb

    run_id = tracker["run_id"]
    cid = companion_id(run_id)
    offline = bool(tracker.get("offline"))
    src_dir = Path(tracker["dir"]) if tracker.get("dir") else None
    init_kwargs: dict[str, Any] = dict(
        id=cid, name=cid, project=tracker.get("project") or None, entity=tracker.get("entity") or None,
        group=tracker.get("group") or None, job_type="diffdiag",
        config={"source_run": run_id, "diffdiag_version": _version()},
        tags=["diffdiag"], reinit="create_new",
        settings=wandb.Settings(**_COMPANION_SETTINGS),
    )
    result: dict[str, Any] = {"companion_run": cid, "project": tracker.get("project"),
                              "entity": tracker.get("entity"), "group": tracker.get("group"), "offline": offline}
    had_service = wandb.run is not None
    if offline:
        if src_dir is None:
            raise TrackerError("cannot push: the W&B source run's directory is unknown")
        new_dir = _push_offline(wandb, init_kwargs, src_dir.parent, cid, had_service,
                                lambda wrun: _log_companion(wandb, wrun, run, diagnosis, report_dir, fresh=True))
        result["dir"] = str(new_dir)
        return result
    # online: tag the source run first (public API), then write the companion run, all within one deadline
    path = f"{tracker.get('entity')}/{tracker.get('project')}/{run_id}"
    dl = Deadline(what=f"pushing the diagnosis into W&B run {path}")
    api = make_api(tracker.get("base_url"), deadline=dl)
    tag_source_run(api, path, diagnosis, cid, deadline=dl)
    result["source_tagged"] = True
    exists = _companion_exists(api, f"{tracker.get('entity')}/{tracker.get('project')}/{cid}")
    result["url"] = _push_online(wandb, init_kwargs, had_service,
                                 lambda wrun: _log_companion(wandb, wrun, run, diagnosis, report_dir,
                                                             fresh=not exists),
                                 f"creating the companion run {cid}", base_url=tracker.get("base_url"), deadline=dl)
    return result


def _push_online(wandb: Any, init_kwargs: dict[str, Any], had_service: bool, log: Any, doing: str, *,
                 base_url: str | None, deadline: Deadline) -> str | None:
    """Create (or resume) an online run on ``base_url`` (else wandb's default server), ``log(run)`` into
    it and finish it, within ``deadline``; returns its URL.

    wandb's own HTTP clients give up within the time left of ``deadline`` too. ``wandb.init`` keeps a
    local copy of the run in ``./wandb`` (or ``$WANDB_DIR``): here it goes into a temporary folder of
    its own, removed once the run is finished, so that nothing is written into the user's working
    directory (diffdiag writes only its own outputs).
    """
    left = deadline.timeout()
    init_kwargs = dict(init_kwargs, settings=wandb.Settings(
        **_COMPANION_SETTINGS, **({"base_url": base_url} if base_url else {}),
        init_timeout=left, finish_timeout=left, x_graphql_timeout_seconds=left,
        x_file_transfer_timeout_seconds=left, x_file_stream_timeout_seconds=left))
    local = Path(tempfile.mkdtemp(prefix="diffdiag-wandb-"))
    try:
        try:
            wrun = wandb.init(mode="online", resume="allow", dir=str(local), **init_kwargs)
        except Exception as exc:  # noqa: BLE001
            raise tracker_error(exc, doing) from None
        try:
            log(wrun)
            return getattr(wrun, "url", None)
        finally:
            wrun.finish()
            if not had_service:
                _teardown(wandb)
    finally:
        shutil.rmtree(local, ignore_errors=True)


#: the companion run's wandb settings: no console capture, system metrics, metadata (it would record
#: the command line, which may hold a URL with a password), git state or code
_COMPANION_SETTINGS = dict(console="off", x_disable_stats=True, silent=True, x_disable_meta=True, disable_git=True,
                           save_code=False, disable_code=True)


_TAG_MUTATION = """
mutation UpsertBucket($id: String!, $tags: [String!]) {
    upsertBucket(input: {id: $id, tags: $tags}) {
        bucket { id tags }
    }
}
"""


def tag_source_run(api: Any, path: str, diagnosis: Diagnosis, companion: str | None = None, *,
                   deadline: Deadline | None = None) -> None:
    """Add ``diffdiag/*`` summary keys and the ``diffdiag`` tag to an online run (public API).

    Only the run's summary and tags change; its history, config and files are left alone.
    Repeating it writes the same keys again (idempotent). ``deadline`` bounds the calls.
    """
    src = retry(lambda: api.run(path), f"run {path}", deadline=deadline)

    def _tag() -> None:
        src.summary.update(summary_keys(diagnosis, companion))  # UpsertBucket(id, summaryMetrics)
        tags = list(src.tags or [])
        if "diffdiag" in tags:
            return
        service = getattr(src, "_service_api", None)
        if service is None:  # pragma: no cover - older wandb: the public update (sends its own fields back)
            src.tags = tags + ["diffdiag"]
            src.update()
            return
        # only the tags: Run.update() would also send config/notes/description back
        service.execute_graphql(_TAG_MUTATION, {"id": src.storage_id, "tags": tags + ["diffdiag"]})
        src.tags = tags + ["diffdiag"]

    retry(_tag, f"tagging run {path}", deadline=deadline)


def _companion_exists(api: Any, path: str) -> bool:
    try:
        api.run(path)
        return True
    except Exception:  # noqa: BLE001 - not found (or not reachable: init will say)
        return False


def _log_companion(wandb: Any, wrun: Any, run: RunData, diagnosis: Diagnosis, report_dir: Path,
                   fresh: bool) -> None:
    payload = build_payload(wandb, run, diagnosis, report_dir)
    if fresh:
        # one history row at step 0; a resumed companion only gets its summary rewritten
        wrun.log(payload, step=0)
    for k, v in payload.items():
        wrun.summary[k] = v
    for k, v in summary_keys(diagnosis).items():
        wrun.summary[k] = v
    art = wandb.Artifact(f"diffdiag-report-{wrun.config.get('source_run')}", type="diffdiag-report",
                         description="diffdiag report: report.html, figures, diagnosis.json",
                         metadata={"n_findings": len(diagnosis.findings)})
    for name in ("report.html", "diagnosis.json", "report.pdf", "wandb_report.json"):
        p = report_dir / name
        if p.exists():
            art.add_file(str(p), name=name)
    for p in sorted((report_dir / "figures").glob("*.png")):
        art.add_file(str(p), name=f"figures/{p.name}")
    wrun.log_artifact(art, aliases=["latest"])


def _teardown(wandb: Any) -> None:
    try:
        wandb.teardown()
    except Exception:  # noqa: BLE001
        pass


def _version() -> str:
    from diffdiag._version import __version__

    return __version__


__all__ = ["push_wandb", "push_companion", "companion_id", "summary_keys", "annotated_images",
           "findings_table_rows", "causes_table_rows", "redact"]
