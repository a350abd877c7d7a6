"""What one ``RUN`` of ``diffdiag triage`` names, as the sources of one ``diffdiag analyze``.

A RUN is anything ``diffdiag analyze`` reads as one run:

* a log folder or file (``--logdir``; checkpoint files inside the folder are read too,
  as ``--checkpoints``, and sample folders inside it as ``analyze`` does);
* a local W&B run folder, a ``run-<id>.wandb`` file or a ``wandb/`` folder (its latest run);
* a W&B run ref ``entity/project/run_id`` or a run URL;
* an MLflow run id (32 hex digits; the tracking URI is ``--mlflow-tracking-uri``, else
  ``MLFLOW_TRACKING_URI``, else the embedded store).

A prefix says it explicitly: ``logs:PATH``, ``wandb:REF``, ``mlflow:RUN_ID``.

:func:`classify` turns the text into a :class:`RunItem` (its :class:`~diffdiag.sources.spec.SourceSpec`
and an identity for de-duplication); :func:`run_key` fingerprints what the run holds now, so a
rerun skips a run whose key it has already analysed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..sources.spec import SourceSpec

#: files up to this size are hashed by content for the run key; larger ones (checkpoints) by size and mtime
HASH_CONTENT_BYTES = 16 * 2 ** 20
#: checkpoint suffixes that make a log folder's checkpoints part of its analysis
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".ckpt")
_MLFLOW_ID = re.compile(r"[0-9a-f]{32}")
_PREFIXES = ("logs:", "wandb:", "mlflow:")


@dataclass(frozen=True)
class RunItem:
    """One run to triage.

    Attributes
    ----------
    ref : str
        The run as the user (or a tracker listing) named it: the ``run`` of its triage row.
    kind : {"logs", "wandb", "mlflow"}
    spec : SourceSpec
        What ``diffdiag analyze`` reads for it (absolute paths, resolved tracking URI).
    identity : str
        The same run however it was named (resolved path, ``entity/project/id``, tracking URI + id).
    name : str, optional
        The run's name when a listing gave it.
    meta : dict
        What a listing knew (``state``, ``last_step``, ``updated``, ...): part of the run key.
    """

    ref: str
    kind: str
    spec: SourceSpec
    identity: str
    name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _is_wandb_dir(p: Path) -> bool:
    if any(p.glob("run-*.wandb")):
        return True
    return p.name == "wandb" or (p / "latest-run").exists() or (p / "wandb" / "latest-run").exists()


def _has_checkpoints(folder: Path) -> bool:
    for _root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(f.lower().endswith(CHECKPOINT_SUFFIXES) for f in files):
            return True
    return False


def logs_item(path: Path, ref: str | None = None) -> RunItem:
    """A log folder or file: ``--logdir`` (and ``--checkpoints`` when the folder holds checkpoint files)."""
    p = path.expanduser().resolve()
    ckpts = (str(p),) if p.is_dir() and _has_checkpoints(p) else ()
    return RunItem(ref or str(path), "logs", SourceSpec(logdir=str(p), checkpoints=ckpts), f"logs:{p}",
                   name=p.stem if p.is_file() else p.name)


def wandb_item(ref: str, *, name: str | None = None, meta: dict[str, Any] | None = None) -> RunItem:
    """A W&B run: a local run folder / ``.wandb`` file / ``wandb/`` folder, or an online ref."""
    p = Path(ref).expanduser()
    if p.exists():
        from ..integrations.wandb_source import find_local_run

        run_dir, _ = find_local_run(p.resolve())
        return RunItem(ref, "wandb", SourceSpec(wandb_run=str(run_dir)), f"wandb:{run_dir}", name=name,
                       meta=dict(meta or {}))
    from ..integrations.wandb_source import parse_ref

    info = parse_ref(ref)
    ident = f"wandb:{info.get('base_url') or ''}/{info['entity']}/{info['project']}/{info['run_id']}"
    return RunItem(ref, "wandb", SourceSpec(wandb_run=ref), ident, name=name, meta=dict(meta or {}))


def mlflow_item(run_id: str, tracking_uri: str | None, *, ref: str | None = None, name: str | None = None,
                meta: dict[str, Any] | None = None) -> RunItem:
    """An MLflow run in the store at ``tracking_uri`` (resolved by the caller: workers may run elsewhere)."""
    return RunItem(ref or run_id, "mlflow", SourceSpec(mlflow_run=run_id, mlflow_tracking_uri=tracking_uri),
                   f"mlflow:{tracking_uri or ''}#{run_id}", name=name, meta=dict(meta or {}))


def resolved_mlflow_uri(tracking_uri: str | None) -> str:
    """The tracking URI a worker must use (the flag, else ``MLFLOW_TRACKING_URI``, else the embedded store)."""
    from ..integrations.mlflow_store import resolve_tracking_uri

    return resolve_tracking_uri(tracking_uri, announce=False).tracking_uri


def classify(text: str, *, mlflow_tracking_uri: str | None = None) -> RunItem:
    """The :class:`RunItem` of one ``RUN`` argument.

    Raises
    ------
    InputError
        When it is neither an existing path, a W&B ref, nor an MLflow run id (the run's row
        carries this line; the other runs are still triaged).
    """
    raw = str(text).strip()
    kind = next((p[:-1] for p in _PREFIXES if raw.startswith(p)), None)
    body = raw[len(kind) + 1:] if kind else raw
    if not body:
        raise InputError("is an empty run reference", raw)
    if kind == "mlflow" or (kind is None and _MLFLOW_ID.fullmatch(body) and not Path(body).exists()):
        return mlflow_item(body, resolved_mlflow_uri(mlflow_tracking_uri), ref=raw)
    p = Path(body).expanduser()
    if kind == "logs":
        if not p.exists():
            raise InputError("log path does not exist", p)
        return logs_item(p, raw)
    if kind == "wandb":
        return wandb_item(body)
    if p.exists():
        if p.is_file():
            return wandb_item(body) if p.suffix == ".wandb" else logs_item(p, raw)
        return wandb_item(body) if _is_wandb_dir(p) else logs_item(p, raw)
    if "://" in body or body.count("/") in (2, 3):
        return wandb_item(body)
    raise InputError("does not exist and is neither a W&B run (entity/project/run_id, a run URL) "
                     "nor an MLflow run id (32 hex digits)", raw)


# ----------------------------------------------------------------------------- keys
def _fingerprint_files(root: Path) -> str:
    """Hash of a folder's (or file's) files: names, sizes, and content (or mtime for big files)."""
    h = hashlib.blake2b(digest_size=16)
    files = [root] if root.is_file() else sorted(q for q in root.rglob("*") if q.is_file() and not q.is_symlink())
    for q in files:
        try:
            st = q.stat()
        except OSError:
            continue
        rel = q.name if q == root else q.relative_to(root).as_posix()
        h.update(f"{rel}\0{st.st_size}\0".encode())
        if st.st_size <= HASH_CONTENT_BYTES:
            try:
                with open(q, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            except OSError:
                h.update(b"unreadable")
        else:
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()


def wandb_state_key(ref: str) -> str:
    """Id + state + heartbeat + logged rows of an online W&B run (they change while it trains)."""
    from ..integrations.wandb_source import make_api, parse_ref, retry

    info = parse_ref(ref)
    api = make_api(info.get("base_url"))
    path = f"{info['entity']}/{info['project']}/{info['run_id']}"
    r = retry(lambda: api.run(path), f"run {path}")
    attrs = getattr(r, "_attrs", {}) or {}
    return json.dumps([r.id, r.state, attrs.get("heartbeatAt"), attrs.get("historyLineCount")])


def mlflow_state(mrun: Any) -> str:
    """Status, end time and a hash of the latest metric values of an MLflow run (``mlflow.entities.Run``)."""
    metrics = hashlib.blake2b(json.dumps(sorted(mrun.data.metrics.items())).encode(), digest_size=8).hexdigest()
    return json.dumps([mrun.info.run_id, mrun.info.status, mrun.info.end_time, metrics])


def _tracker_state(item: RunItem) -> str:
    """What an online W&B or MLflow run holds now: its state and last step/end time."""
    if item.meta.get("state_key"):
        return str(item.meta["state_key"])
    if item.kind == "mlflow":
        from ..integrations.mlflow_source import connect

        _loc, _client, mrun = connect(item.spec.mlflow_tracking_uri, item.spec.mlflow_run, announce=False)
        return mlflow_state(mrun)
    return wandb_state_key(str(item.spec.wandb_run))


def run_key(item: RunItem, salt: str) -> str | None:
    """The key under which a finished analysis of ``item`` is journalled.

    ``salt`` holds what else changes the result (settings, diffdiag version, push). Local
    runs are keyed by a content hash of their files, tracker runs by id + state + last
    step. None when the run cannot be looked at now (it is analysed, not skipped).
    """
    try:
        if item.kind == "logs" or (item.kind == "wandb" and item.identity.startswith("wandb:/")
                                   and Path(item.spec.wandb_run or "").exists()):
            path = Path(item.spec.logdir or item.spec.wandb_run or "")
            state = _fingerprint_files(path)
        else:
            state = _tracker_state(item)
    except Exception:  # noqa: BLE001 - unreachable tracker, unreadable folder: analysed again (and the row says why)
        return None
    return hashlib.blake2b(json.dumps([item.identity, state, salt]).encode(), digest_size=16).hexdigest()


__all__ = ["RunItem", "classify", "logs_item", "wandb_item", "mlflow_item", "run_key", "resolved_mlflow_uri",
           "mlflow_state", "wandb_state_key"]
