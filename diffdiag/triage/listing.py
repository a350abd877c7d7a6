"""The runs of a W&B project or an MLflow experiment, filtered (``--wandb-project``, ``--mlflow-experiment``).

Filters (``--filter KEY=VALUE``, repeatable; all must hold):

* ``tag=NAME`` — the run carries this tag (repeat for several: all of them);
* ``state=S[,S...]`` — its state is one of these (``finished``, ``running``, ``crashed``,
  ``failed``, ``killed``, ...; W&B's and MLflow's words, lower case);
* ``created_after=DATE`` / ``created_before=DATE`` — ISO-8601 date or date-time (UTC when
  no zone is given), on the run's creation (start) time;
* ``name=PATTERN`` — a shell pattern (``sweep-*``) on the run's name (or id).

A listing streams page by page. When it fails midway (the tracker stops answering, a page
is refused), the runs listed until then are still triaged: the listing raises
:class:`ListingError` after yielding them, and the caller records one line for it.
diffdiag's own runs (companions ``diffdiag-*``, the triage run) are never listed.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import InputError, TrackerError
from .refs import RunItem, mlflow_item, mlflow_state, wandb_item

#: runs per listing page
PAGE_SIZE = 100
FILTER_KEYS = ("tag", "state", "created_after", "created_before", "name")


class ListingError(TrackerError):
    """A tracker listing that stopped before its end (the runs listed before were yielded)."""


def _parse_time(text: str, key: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--filter {key}={text}: expected an ISO-8601 date or date-time (2026-11-30, "
                         f"2026-11-30T12:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Filters:
    """What ``--filter`` asks of a listed run (:data:`FILTER_KEYS`)."""

    tags: tuple[str, ...] = ()
    states: frozenset[str] = frozenset()
    created_after: datetime | None = None
    created_before: datetime | None = None
    name: str | None = None

    @staticmethod
    def parse(specs: Iterable[str]) -> "Filters":
        """Parse ``KEY=VALUE`` strings; an unknown key or bad value is an InputError (exit 2)."""
        tags: list[str] = []
        states: set[str] = set()
        after = before = None
        name = None
        for spec in specs:
            key, sep, value = str(spec).partition("=")
            key = key.strip().lower().replace("-", "_")
            if not sep or key not in FILTER_KEYS or not value.strip():
                raise InputError(f"--filter {spec!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
            value = value.strip()
            if key == "tag":
                tags.append(value)
            elif key == "state":
                states.update(s.strip().lower() for s in value.split(",") if s.strip())
            elif key == "created_after":
                after = _parse_time(value, key)
            elif key == "created_before":
                before = _parse_time(value, key)
            else:
                name = value
        return Filters(tuple(tags), frozenset(states), after, before, name)

    def match(self, *, name: str, tags: Iterable[str], state: str | None, created: datetime | None) -> bool:
        """True when a run with these attributes passes every filter (an unknown value fails a filter on it)."""
        tagset = set(tags)
        if any(t not in tagset for t in self.tags):
            return False
        if self.states and (state or "").lower() not in self.states:
            return False
        if (self.created_after or self.created_before) and created is None:
            return False
        if self.created_after and created is not None and not created > self.created_after:
            return False
        if self.created_before and created is not None and not created < self.created_before:
            return False
        return self.name is None or fnmatch.fnmatchcase(name, self.name)


def _own(run_id: str, job_type: str | None = None) -> bool:
    return run_id.startswith("diffdiag-") or (job_type or "").startswith("diffdiag")


def _from_epoch(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(float(seconds), tz=timezone.utc)


# ----------------------------------------------------------------------------- W&B
def _local_state(exit_code: int | None) -> str:
    return "running" if exit_code is None else ("finished" if exit_code == 0 else "failed")


def list_wandb_local(folder: Path, filters: Filters) -> Iterator[RunItem]:
    """Every run in a local ``wandb/`` folder (offline runs included), oldest first."""
    from ..integrations.wandb_records import read_wandb_file

    base = folder / "wandb" if (folder / "wandb").is_dir() and not any(folder.glob("*run-*")) else folder
    dirs = sorted((d for d in base.glob("*run-*") if d.is_dir() and not d.is_symlink()),
                  key=lambda d: (d.name.split("-", 2)[-1], d.name))
    for d in dirs:
        files = sorted(d.glob("run-*.wandb"))
        if not files:
            continue
        run_id = files[0].stem[len("run-"):]
        if _own(run_id):
            continue
        try:
            rec = read_wandb_file(files[0], summary=False)
        except InputError:  # unreadable: listed all the same, its row says why
            yield wandb_item(str(d), name=run_id)
            continue
        info = rec.run or {}
        if _own(run_id, info.get("job_type")):
            continue
        name = info.get("display_name") or run_id
        if filters.match(name=name, tags=info.get("tags") or (), state=_local_state(rec.exit_code),
                         created=_from_epoch(info.get("start_time"))):
            yield wandb_item(str(d), name=name)


def _wandb_time(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        return _parse_time(str(text), "createdAt")
    except InputError:
        return None


def list_wandb_online(project: str, filters: Filters, *, page_size: int = PAGE_SIZE,
                      base_url: str | None = None) -> Iterator[RunItem]:
    """The runs of ``entity/project`` through ``wandb.Api`` (newest first, as W&B lists them)."""
    from ..integrations.wandb_source import make_api, tracker_error

    parts = [p for p in project.strip().strip("/").split("/") if p]
    if len(parts) != 2:
        raise InputError("--wandb-project: expected ENTITY/PROJECT (or a local wandb/ folder)", project)
    entity, name = parts
    api = make_api(base_url)
    listed = 0
    try:
        runs = api.runs(f"{entity}/{name}", per_page=page_size)
        for r in runs:
            attrs = getattr(r, "_attrs", {}) or {}
            if _own(r.id, attrs.get("jobType")):
                continue
            display = attrs.get("displayName") or r.name or r.id
            listed += 1
            if not filters.match(name=display, tags=r.tags or (), state=r.state,
                                 created=_wandb_time(attrs.get("createdAt"))):
                continue
            state = json.dumps([r.id, r.state, attrs.get("heartbeatAt"), attrs.get("historyLineCount")])
            yield wandb_item(f"{entity}/{name}/{r.id}", name=display, meta={"state_key": state})
    except (InputError, TrackerError) as exc:
        raise ListingError(f"listing W&B project {entity}/{name} stopped after {listed} runs: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any client error: the runs listed so far are still triaged
        err = tracker_error(exc, f"the runs of project {entity}/{name}")
        raise ListingError(f"listing W&B project {entity}/{name} stopped after {listed} runs: {err}") from None


def list_wandb_project(project: str, filters: Filters, *, page_size: int = PAGE_SIZE) -> Iterator[RunItem]:
    """``--wandb-project``: a local ``wandb/`` folder, or ``ENTITY/PROJECT`` online."""
    p = Path(project).expanduser()
    if p.is_dir():
        return list_wandb_local(p.resolve(), filters)
    return list_wandb_online(project, filters, page_size=page_size)


# ----------------------------------------------------------------------------- MLflow
def list_mlflow_experiment(experiment: str, filters: Filters, *, tracking_uri: str | None = None,
                           page_size: int = PAGE_SIZE) -> Iterator[RunItem]:
    """The runs of an MLflow experiment (by name, else id), newest first, page by page."""
    from ..integrations.mlflow_source import _retried, connect, http_bounds
    from ..deadline import Deadline

    loc, client, _ = connect(tracking_uri, None, announce=False)
    uri = loc.tracking_uri
    rest = uri.startswith(("http://", "https://"))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            exp = client.get_experiment(experiment)
        except Exception:  # noqa: BLE001 - not an id either
            exp = None
    if exp is None:
        raise InputError(f"MLflow experiment '{experiment}' does not exist", uri)
    listed, token = 0, None
    while True:
        deadline = Deadline(what=f"listing the runs of MLflow experiment '{experiment}'")

        def page(token=token):
            return client.search_runs([exp.experiment_id], max_results=page_size, page_token=token,
                                      order_by=["attributes.start_time DESC"])
        try:
            if rest:
                with http_bounds(deadline):
                    runs = _retried(page, f"listing MLflow experiment '{experiment}'", deadline)
            else:
                runs = page()
        except Exception as exc:  # noqa: BLE001 - mlflow raises many kinds; the runs listed so far are triaged
            line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ListingError(f"listing MLflow experiment '{experiment}' at {uri} stopped after {listed} runs: "
                               f"{line}") from None
        for mrun in runs:
            info = mrun.info
            tags = mrun.data.tags or {}
            if _own(info.run_name or "") or tags.get("diffdiag.kind") == "triage":
                continue
            listed += 1
            name = info.run_name or info.run_id
            user_tags = [k for k in tags if not k.startswith("mlflow.")]
            user_tags += [f"{k}={v}" for k, v in tags.items() if not k.startswith("mlflow.")]
            if filters.match(name=name, tags=user_tags, state=info.status,
                             created=_from_epoch(info.start_time / 1000 if info.start_time else None)):
                yield mlflow_item(info.run_id, uri, name=name, meta={"state_key": mlflow_state(mrun)})
        token = getattr(runs, "token", None)
        if not token:
            return


@dataclass
class Listing:
    """The runs to triage: RUN arguments first, then each listing, de-duplicated; with what went wrong."""

    items: list[RunItem] = field(default_factory=list)
    #: one line per RUN that could not be classified (its row carries it too) and per failed listing
    errors: list[str] = field(default_factory=list)
    #: ref -> the line of a RUN that could not be classified
    bad_refs: dict[str, str] = field(default_factory=dict)
    listing_failed: bool = False

    def add(self, item: RunItem, seen: set[str]) -> None:
        if item.identity not in seen:
            seen.add(item.identity)
            self.items.append(item)


__all__ = ["Filters", "ListingError", "Listing", "list_wandb_project", "list_wandb_local", "list_wandb_online",
           "list_mlflow_experiment", "PAGE_SIZE"]
