"""``diffdiag triage``: analyse many runs, one row each (docs/CONTRACT.md §5).

:func:`triage` gathers the runs (RUN arguments, then each tracker listing, de-duplicated),
skips those its folder's journal already holds (:mod:`.journal`), hands the rest to an
engine (:mod:`.engines`) and, as each run comes back, appends it to the journal. At the
end it writes ``triage.json`` (one row per run, in input order), ``triage.html`` and, with
``push``, the triage table into the trackers (:mod:`.push`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from .._version import __version__
from ..errors import InputError, TrackerError
from ..model import SEVERITY_RANK, Settings
from .engines import Engine, WorkerLost, make_engine
from .journal import JOURNAL, Journal
from .listing import PAGE_SIZE, Filters, ListingError, list_mlflow_experiment, list_wandb_project
from .refs import RunItem, classify, run_key
from .rows import SCHEMA, error_row
from .worker import Task, analyse_run, tracker_env

TRIAGE_JSON, TRIAGE_HTML = "triage.json", "triage.html"
RUNS_DIR = "runs"


@dataclass
class TriageOptions:
    """What ``diffdiag triage`` was asked (its flags).

    Attributes
    ----------
    runs : list of str
        RUN arguments (:func:`diffdiag.triage.refs.classify`).
    report_dir : path
        Where ``triage.json``, ``triage.html``, ``triage.jsonl`` and ``runs/<run>/`` go.
    wandb_projects, mlflow_experiments : list of str
        Listings to triage (``ENTITY/PROJECT`` or a local ``wandb/`` folder; an experiment name or id).
    mlflow_tracking_uri : str, optional
    filters : Filters
        Applied to the listings (not to RUN arguments).
    engine, workers, ray_address :
        :func:`diffdiag.triage.engines.make_engine`.
    settings : Settings
    push : bool
        Push each run (as ``analyze --push``) and the triage table.
    page_size : int
        Runs per listing page.
    progress : bool
        A progress bar on stderr (when it is a terminal).
    """

    runs: list[str] = field(default_factory=list)
    report_dir: str | Path = "diffdiag-triage"
    wandb_projects: list[str] = field(default_factory=list)
    mlflow_experiments: list[str] = field(default_factory=list)
    mlflow_tracking_uri: str | None = None
    filters: Filters = field(default_factory=Filters)
    engine: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    settings: Settings = field(default_factory=Settings)
    push: bool = False
    page_size: int = PAGE_SIZE
    progress: bool = True


@dataclass
class TriageResult:
    """What a triage wrote and found.

    Attributes
    ----------
    doc : dict
        The ``triage.json`` document.
    errors : list of str
        Listings that failed, one line each (also in ``doc["errors"]``).
    analysed, skipped : int
        Runs analysed now, and runs the journal already held.
    tracker_failed : bool
        A tracker listing stopped before its end, or the push failed (exit 3).
    outputs : dict
        Paths written, and what the push wrote.
    """

    doc: dict[str, Any]
    errors: list[str]
    analysed: int
    skipped: int
    tracker_failed: bool
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.doc["runs"]

    def exit_code(self, fail_on: str | None = None) -> int:
        """3 a listing (or the push) failed; 2 a run (or a listing's target) could not be read; 1 a run reached
        ``fail_on``; else 0."""
        if self.tracker_failed:
            return 3
        if self.errors or any(r["error"] for r in self.rows):
            return 2
        if fail_on and any(r["worst_severity"] and SEVERITY_RANK[r["worst_severity"]] >= SEVERITY_RANK[fail_on]
                           for r in self.rows):
            return 1
        return 0


def _slug(item: RunItem) -> str:
    base = item.name or Path(item.ref.rstrip("/")).name or item.ref
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")[:40] or "run"
    return f"{base}-{hashlib.blake2b(item.identity.encode(), digest_size=4).hexdigest()}"


def _salt(settings: Settings, push: bool) -> str:
    return json.dumps([__version__, settings.to_dict(), bool(push)], sort_keys=True, default=str)


@dataclass
class _Slot:
    """One row of the output, in input order: a run to analyse or a RUN that could not be named."""

    ref: str
    item: RunItem | None = None
    entry: dict[str, Any] | None = None


def gather(options: TriageOptions, errors: list[str]) -> tuple[list[_Slot], bool]:
    """The runs to triage, in input order, de-duplicated; listing failures appended to ``errors``."""
    slots: list[_Slot] = []
    seen: set[str] = set()
    failed = False

    def add(item: RunItem) -> None:
        if item.identity not in seen:
            seen.add(item.identity)
            slots.append(_Slot(item.ref, item))

    for ref in options.runs:
        try:
            add(classify(ref, mlflow_tracking_uri=options.mlflow_tracking_uri))
        except InputError as exc:
            slots.append(_Slot(ref, entry={"key": None, "row": error_row(ref, None, str(exc)), "curve": None}))
    listings: list[tuple[str, Callable[[], Iterator[RunItem]]]] = []
    for project in options.wandb_projects:
        listings.append((f"W&B project {project}", lambda p=project: list_wandb_project(
            p, options.filters, page_size=options.page_size)))
    for exp in options.mlflow_experiments:
        listings.append((f"MLflow experiment {exp}", lambda e=exp: list_mlflow_experiment(
            e, options.filters, tracking_uri=options.mlflow_tracking_uri, page_size=options.page_size)))
    for what, listing in listings:
        try:
            for item in listing():
                add(item)
        except ListingError as exc:
            errors.append(str(exc))
            failed = True
        except TrackerError as exc:
            errors.append(f"listing {what}: {exc}")
            failed = True
        except InputError as exc:
            errors.append(f"listing {what}: {exc}")
    return slots, failed


class _Progress:
    """A rich progress bar over the runs (stderr, only when it is a terminal)."""

    def __init__(self, enabled: bool, total: int, engine: Engine) -> None:
        self.bar = None
        self.errors = 0
        self.engine = engine
        if not enabled or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("diffdiag: triage"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("runs", total=total, status="")
        self.total, self.done = total, 0
        self.bar.start()

    def advance(self, row: dict[str, Any], skipped: bool = False) -> None:
        if self.bar is None:
            return
        self.done += 1
        self.errors += bool(row.get("error"))
        running = min(self.engine.workers, self.total - self.done)
        self.bar.update(self.task, advance=1, status=f"{running} running on {self.engine.workers} "
                        f"{self.engine.name} workers · {self.errors} with errors")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _write_shipped(root: Path, rel: str, files: dict[str, bytes]) -> None:
    """Write a report a remote worker returned (only diffdiag's own files are replaced)."""
    from ..reports.folder import MANIFEST, ReportFolder

    folder = ReportFolder(root / rel)
    wanted = [r for r in files if r != MANIFEST]
    folder.claim(wanted)
    for r in wanted:
        folder.write(r, lambda tmp, data=files[r]: tmp.write_bytes(data))


def triage(options: TriageOptions, *, engine: Engine | None = None,
           on_entry: Callable[[dict[str, Any]], None] | None = None) -> TriageResult:
    """Triage every run ``options`` names; write the triage folder.

    Parameters
    ----------
    options : TriageOptions
    engine : Engine, optional
        Use this engine (kept open); else one is made from ``options`` and closed after.
    on_entry : callable, optional
        Called with each journal entry as it is written (tests, progress hooks).

    Returns
    -------
    TriageResult

    Raises
    ------
    InputError
        The triage folder cannot be written, or nothing was named to triage.
    """
    from ..redact import redact_obj
    from ..reports.folder import ReportFolder

    root = Path(options.report_dir).expanduser().resolve()
    folder = ReportFolder(root)
    folder.claim([TRIAGE_JSON, TRIAGE_HTML, JOURNAL])
    if not (options.runs or options.wandb_projects or options.mlflow_experiments):
        raise InputError("nothing to triage: name RUNs, --wandb-project or --mlflow-experiment")
    errors: list[str] = []
    slots, tracker_failed = gather(options, errors)
    journal = Journal(root)
    done = journal.done()
    salt = _salt(options.settings, options.push)
    env = tracker_env()
    todo: list[Task] = []
    skipped = 0
    for slot in slots:
        if slot.item is None:
            continue
        key = run_key(slot.item, salt)
        prior = done.get(key) if key else None
        if prior is not None and (root / prior["row"]["report"]).is_file():
            slot.entry = {**prior, "row": {**prior["row"], "run": slot.item.ref}}  # as named this time
            skipped += 1
            continue
        todo.append(Task(slot.item, key, str(root), f"{RUNS_DIR}/{_slug(slot.item)}", options.settings,
                         options.push, False, env))
    by_identity = {s.item.identity: s for s in slots if s.item is not None}
    own = engine is None
    analysed = 0
    if todo:
        eng = engine or make_engine(options.engine, workers=options.workers, address=options.ray_address)
        progress = _Progress(options.progress, len(todo), eng)
        try:
            if eng.ship_reports:
                todo = [Task(t.item, t.key, t.report_root, t.rel, t.settings, t.push, True, t.env) for t in todo]
            for task, result in eng.map(analyse_run, todo):
                if isinstance(result, WorkerLost):
                    result = {"key": task.key, "identity": task.item.identity, "curve": None,
                              "row": error_row(task.item.ref, task.item.name, str(result))}
                files = result.pop("files", None)
                if files:
                    _write_shipped(root, task.rel, files)
                result["row"] = redact_obj(result["row"])
                journal.append(result)
                by_identity[task.item.identity].entry = result
                analysed += 1
                progress.advance(result["row"])
                if on_entry is not None:
                    on_entry(result)
        finally:
            progress.close()
            if own:
                eng.close()
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "tool": {"name": "diffdiag", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": [redact_obj(s.entry["row"]) for s in slots if s.entry is not None],
    }
    if errors:
        doc["errors"] = [redact_obj(e) for e in errors]
    folder.write(TRIAGE_JSON, lambda tmp: tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8"))
    from .html import render_triage_html

    extras = {s.entry["row"]["run"]: s.entry for s in slots if s.entry is not None}
    page = render_triage_html(doc, extras)
    folder.write(TRIAGE_HTML, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    result = TriageResult(doc, errors, analysed, skipped, tracker_failed,
                          {"json": str(root / TRIAGE_JSON), "html": str(root / TRIAGE_HTML),
                           "journal": str(root / JOURNAL)})
    if options.push:
        from .push import push_triage

        result.outputs.update(push_triage(result, root, [s.item for s in slots if s.item is not None], options))
    return result


__all__ = ["TriageOptions", "TriageResult", "triage", "gather", "TRIAGE_JSON", "TRIAGE_HTML"]
