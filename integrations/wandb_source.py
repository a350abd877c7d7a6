"""Read a W&B run — a local run directory (offline runs included) or an online run — into RunData.

``--wandb-run REF`` accepts

* a local run directory (``wandb/offline-run-*``, ``wandb/run-*``), the ``wandb/`` folder
  itself (its latest run is read), or a ``run-<id>.wandb`` file;
* ``entity/project/run_id``;
* a run URL (``https://wandb.ai/<entity>/<project>/runs/<run_id>``, query strings ignored).

Local runs are read with :mod:`.wandb_records` (no network, no W&B account); online runs
through ``wandb.Api``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import numpy as np

from diffdiag.confine import Escape, component, inside, is_within, shown
from diffdiag.deadline import Deadline
from diffdiag.errors import InputError, TrackerError
from diffdiag.model import ImageInput, RunData, RunLog, Series, Settings

from .wandb_records import WandbRecords, read_wandb_file

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".pth", ".bin")
IMAGE_TYPES = ("image-file",)
T = TypeVar("T")


# ----------------------------------------------------------------------------- refs
def parse_ref(ref: str) -> dict[str, Any]:
    """Classify ``--wandb-run REF``.

    Returns
    -------
    dict
        ``{"kind": "local", "dir": Path, "file": Path}`` or
        ``{"kind": "online", "entity", "project", "run_id", "base_url" (or None)}``.

    Raises
    ------
    InputError
        When REF is neither an existing path, ``entity/project/run_id`` nor a run URL.
    """
    text = str(ref).strip()
    p = Path(text).expanduser()
    if p.exists():
        run_dir, wfile = find_local_run(p)
        return {"kind": "local", "dir": run_dir, "file": wfile}
    if "://" in text:
        u = urlparse(text)
        parts = [x for x in u.path.split("/") if x]
        if len(parts) >= 4 and parts[2] == "runs":
            base = None
            host = u.netloc
            if host not in ("wandb.ai", "www.wandb.ai", "app.wandb.ai"):
                base = f"{u.scheme}://{host}"
            return {"kind": "online", "entity": parts[0], "project": parts[1], "run_id": parts[3],
                    "base_url": base}
        raise InputError("is not a W&B run URL (expected https://wandb.ai/<entity>/<project>/runs/<run_id>)", text)
    parts = text.split("/")
    if len(parts) == 3 and all(re.fullmatch(r"[\w.\-]+", x) for x in parts):
        return {"kind": "online", "entity": parts[0], "project": parts[1], "run_id": parts[2], "base_url": None}
    if len(parts) == 4 and parts[2] == "runs":
        return {"kind": "online", "entity": parts[0], "project": parts[1], "run_id": parts[3], "base_url": None}
    raise InputError("is neither a local W&B run directory nor entity/project/run_id nor a run URL", text)


def find_local_run(path: Path) -> tuple[Path, Path]:
    """Return ``(run_dir, run-<id>.wandb)`` for a run dir, a ``wandb/`` folder or a ``.wandb`` file."""
    if not path.is_dir():  # a file (a FIFO or device too: the reader refuses those unopened)
        if path.suffix != ".wandb":
            raise InputError("is a file but not a W&B run log (run-<id>.wandb)", path)
        return path.parent, path
    files = sorted(path.glob("run-*.wandb"))
    if files:
        return path, _newest(files)
    # the wandb/ folder (or its parent): take latest-run, else the newest run dir
    for base in (path, path / "wandb"):
        latest = base / "latest-run"
        if latest.exists():
            files = sorted(latest.resolve().glob("run-*.wandb"))
            if files:
                return latest.resolve(), _newest(files)
        dirs = [d for d in base.glob("*run-*") if d.is_dir() and any(d.glob("run-*.wandb"))
                and not any(d.glob("run-diffdiag-*.wandb"))]  # never a diffdiag companion run
        if dirs:
            d = max(dirs, key=lambda d: (d.name.split("-", 2)[-1][:15], d.stat().st_mtime))
            return d, _newest(sorted(d.glob("run-*.wandb")))
    raise InputError("holds no W&B run (no run-<id>.wandb file, no offline-run-*/run-* folder)", path)


def _newest(files: list[Path]) -> Path:
    return max(files, key=lambda f: f.stat().st_mtime)


# ----------------------------------------------------------------------------- shared helpers
def _build_log(scalars: dict[str, Series], settings: Settings, sample_ids: dict[int, list[str]],
               timesteps: dict[int, np.ndarray], source: str) -> RunLog | None:
    """Key auto-detection shared with the log source (``diffdiag.sources.logs``)."""
    try:
        from diffdiag.sources.logs import build_runlog
    except ImportError:
        build_runlog = None
    if build_runlog is not None:
        log = build_runlog(scalars, sample_ids=sample_ids or None, timesteps=timesteps or None,
                           loss_key=settings.loss_key, ema_key=settings.ema_key, lr_key=settings.lr_key,
                           source=source)
    else:  # the log source not installed yet: the contract's key names, in order
        log = RunLog(scalars=scalars, sample_ids=sample_ids, timesteps=timesteps)
        log.loss_key = settings.loss_key or _first(scalars, ("loss", "train_loss", "step_loss", "loss/current",
                                                             "loss/train_step", "train/loss"))
        log.ema_key = settings.ema_key or _first(scalars, ("ema_loss", "loss_ema", "smooth_loss/train_step",
                                                           "loss/average"))
        log.lr_key = settings.lr_key or _first(scalars, ("lr", "learning_rate", "lr/unet")) or next(
            (k for k in scalars if k.startswith("lr/")), None)
        log.grad_norm_key = _first(scalars, ("grad_norm", "norm/avg_grad_norm"))
        if log.loss_key is None or log.loss_key not in scalars:
            raise InputError(f"no loss key found among the logged keys {sorted(scalars)[:20]}; name it with --loss-key",
                             source)
    if source not in log.sources:
        log.sources.append(source)
    return log


def _first(scalars: dict[str, Series], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in scalars:
            return n
    return None


def _user_scalars(cols: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Series]:
    """History columns as Series (W&B's own ``_runtime``/``_timestamp`` left out), sorted by step."""
    out: dict[str, Series] = {}
    for key, (steps, values) in cols.items():
        if key.startswith("_"):
            continue
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if steps.size > 1 and np.any(np.diff(steps) < 0):
            order = np.argsort(steps, kind="stable")
            steps, values = steps[order], values[order]
        out[key] = Series(key, steps, values)
    return out


def _list_fields(other: dict[str, list[tuple[int, Any]]]) -> tuple[dict[int, list[str]], dict[int, np.ndarray]]:
    """Per-step ``sample_ids``/``timesteps`` lists (docs/CONTRACT.md §2) from non-numeric history values."""
    sample_ids: dict[int, list[str]] = {}
    timesteps: dict[int, np.ndarray] = {}
    for key, rows in other.items():
        base = key.rsplit("/", 1)[-1]
        if base not in ("sample_ids", "timesteps"):
            continue
        for step, v in rows:
            if isinstance(v, str):
                v = [x for x in re.split(r"[;\s,]+", v) if x]
            if not isinstance(v, list):
                continue
            if base == "sample_ids":
                sample_ids[int(step)] = [str(x) for x in v]
            else:
                try:
                    timesteps[int(step)] = np.asarray(v, dtype=np.float64)
                except (TypeError, ValueError):
                    continue
    return sample_ids, timesteps


def load_image_file(path: Path) -> np.ndarray:
    """A media file's pixels through diffdiag's one decoder (same modes and pixel limit as ``--images``).

    Returns float32, (H, W) or (H, W, 3); raises :class:`InputError` naming the file.
    """
    from diffdiag.sources.decode import decode_image

    return decode_image(path)


def cache_dir() -> Path:
    """Where downloaded/linked W&B files go (``DIFFDIAG_CACHE`` or ``~/.cache/diffdiag``)."""
    root = os.environ.get("DIFFDIAG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "diffdiag")
    return Path(root) / "wandb"


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put a regular file ``src`` at ``dst`` (a path in diffdiag's cache): a hard link, else a copy.

    Raises
    ------
    InputError
        ``src`` is not a regular file (a FIFO, a device, a folder), or cannot be linked or copied.
    """
    from diffdiag.safeio import require_regular_file

    require_regular_file(src)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            if not dst.is_symlink() and dst.is_file() and dst.stat().st_size == src.stat().st_size:
                return
            dst.unlink()
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    except OSError as exc:
        raise InputError(f"cannot be linked or copied into diffdiag's cache ({exc.strerror or exc})", src) from None


def _is_checkpoint_artifact(art: dict[str, Any]) -> bool:
    return art.get("type") in ("model", "checkpoint", "lora") or any(
        str(f.get("path", "")).lower().endswith(CHECKPOINT_SUFFIXES) for f in art.get("files", []))


def _tracker_info(run_id: str, project: str, entity: str, group: str, offline: bool, run_dir: str | None,
                  **extra: Any) -> dict[str, Any]:
    info = {"kind": "wandb", "run_id": run_id, "project": project or None, "entity": entity or None,
            "group": group or None, "offline": offline, "dir": run_dir}
    info.update(extra)
    return info


# ----------------------------------------------------------------------------- local runs
def read_local_run(run_dir: Path, wfile: Path, run: RunData, settings: Settings) -> WandbRecords:
    """Fill ``run`` from a local run directory (offline or synced)."""
    rec = read_wandb_file(wfile)
    if rec.n_records == 0:  # nothing to analyse: never "no problems found"
        raise InputError(rec.errors[0] if rec.errors else str(InputError(
            "holds no records (only its file header): nothing was logged to this run" if not rec.dropped_bytes
            else f"holds no whole record: the first one is cut off ({rec.dropped_bytes} bytes)", wfile)))
    run.warnings.extend(rec.warnings)
    run.input_errors.extend(rec.errors)  # damaged records: skipped, named, exit 2 after the analysis
    info = rec.run or {}
    run_id = info.get("run_id") or wfile.stem.replace("run-", "", 1)
    run.name = info.get("display_name") or run_id
    scalars = _user_scalars(rec.scalars)
    sample_ids, timesteps = _list_fields(rec.other)
    if scalars:
        try:
            run.log = _build_log(scalars, settings, sample_ids, timesteps, str(wfile))
        except InputError as exc:
            if not any(m.kind in IMAGE_TYPES for m in rec.media):
                raise
            run.warnings.append(f"W&B run {run_id}: {exc.message}; analysing its images only")
    run.config.update(rec.config)
    run.tracker_summary = rec.summary
    files_dir = run_dir / "files"
    _read_local_media(rec, files_dir, run, settings, wfile)
    _read_local_artifacts(rec, run_id, run, wfile=wfile, run_dir=run_dir)
    run.tracker = _local_tracker(run_dir, wfile, info)
    run.inputs["wandb_run"] = str(run_dir)
    return rec


def _local_tracker(run_dir: Path, wfile: Path, head: dict[str, Any]) -> dict[str, Any]:
    """``RunData.tracker`` of a local run from its header record (``WandbRecords.run``)."""
    return _tracker_info(head.get("run_id") or wfile.stem.replace("run-", "", 1), head.get("project", ""),
                         head.get("entity", ""), head.get("group", ""), _is_offline_dir(run_dir), str(run_dir),
                         job_type=head.get("job_type") or None, file=str(wfile))


def _is_offline_dir(run_dir: Path) -> bool:
    return run_dir.name.startswith("offline-run-")


def _media_file(files_dir: Path, m: Any, run: RunData, wfile: Path | None) -> Path | None:
    """Where a media record's file lies: inside the run's ``files/`` folder, else None and an error line."""
    try:
        return inside(files_dir, m.path, what=f"the path of W&B media {shown(m.key, 40)} at step {m.step}")
    except Escape as exc:
        run.input_errors.append(str(InputError(f"{exc.message}; not read", wfile or files_dir)))
        return None


#: the largest W&B table file read (bytes)
MAX_TABLE_BYTES = 64 << 20


def _read_table(p: Path) -> dict[str, Any]:
    """A ``table-file`` media file: a JSON object with ``columns`` and ``data`` lists.

    Raises
    ------
    InputError
        Naming the file: not a regular file, too large, not UTF-8 JSON, nested too deep,
        or not a table.
    """
    from diffdiag.safeio import open_regular

    with open_regular(p) as fh:
        raw = fh.read(MAX_TABLE_BYTES + 1)
    if len(raw) > MAX_TABLE_BYTES:
        raise InputError(f"is larger than {MAX_TABLE_BYTES >> 20} MiB: not read as a W&B table", p)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"is not a readable JSON table ({type(exc).__name__})", p) from None
    except RecursionError:
        raise InputError("nests JSON too deeply to be a W&B table", p) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("columns", []), list) \
            or not isinstance(doc.get("data", []), list):
        raise InputError("is not a W&B table (a JSON object with 'columns' and 'data' lists)", p)
    return doc


def _pick_media(refs: list[Any]) -> list[Any]:
    """The images of one key to read (:func:`diffdiag.sources.samples.pick_by_step`: steps spread evenly)."""
    from diffdiag.sources.samples import pick_by_step

    return pick_by_step(sorted(refs, key=lambda m: (m.step, m.index)), lambda m: m.step)


def _sample(arr: np.ndarray, m: Any) -> ImageInput:
    """A W&B image as a sample labelled ``wandb:<key>@<step>#<index>``."""
    from diffdiag.sources.samples import sample_label

    return ImageInput(image=arr, path=sample_label("wandb", m.key, m.step, m.index), step=m.step, source="wandb",
                      key=m.key, index=m.index)


def _read_local_media(rec: WandbRecords, files_dir: Path, run: RunData, settings: Settings,
                      wfile: Path | None = None) -> None:
    images: dict[str, list[Any]] = {}
    tables: dict[str, list[dict[str, Any]]] = {}
    missing = 0
    for m in rec.media:
        if m.kind in IMAGE_TYPES and m.path:
            images.setdefault(m.key, []).append(m)
        elif m.kind in ("table-file", "partitioned-table", "incremental-table-file") and m.path:
            p = _media_file(files_dir, m, run, wfile)
            if p is None:
                continue
            if not p.exists():
                missing += 1
                continue
            try:
                doc = _read_table(p)
            except InputError as exc:
                run.input_errors.append(f"{exc} (W&B table {m.key} at step {m.step}); skipped")
                continue
            tables.setdefault(m.key, []).append({"step": m.step, "columns": doc.get("columns", []),
                                                 "data": doc.get("data", [])})
    for key, refs in images.items():
        for m in _pick_media(refs):
            p = _media_file(files_dir, m, run, wfile)
            if p is None:
                continue
            if not p.exists():
                missing += 1
                continue
            try:
                arr = load_image_file(p)
            except InputError as exc:  # a bad image must not sink the run: one line, exit 2 after the analysis
                run.input_errors.append(f"{exc} (W&B image {key} at step {m.step}); skipped")
                continue
            item = _sample(arr, m)
            cap = m.value.get("caption")
            if cap:
                item.notes.append(str(cap))
            run.samples.append(item)
    if missing:
        run.warnings.append(f"{missing} media files named in the W&B history are missing from {files_dir}")
    if tables:
        run.tracker_tables = tables
    run.samples.sort(key=lambda s: (s.step if s.step is not None else -1, s.path))


def staging_roots(run_dir: Path | None = None) -> list[Path]:
    """Folders a local run's artifact files may be staged in: wandb's data folder
    (``$WANDB_DATA_DIR``, default ``~/.local/share/wandb``: its ``artifacts/staging``), its
    artifact cache (``$WANDB_CACHE_DIR``, default ``~/.cache/wandb``) and the folder that
    holds the run's ``wandb/`` folder (files logged with ``policy="immutable"`` stay where they were)."""
    home = Path(os.path.expanduser("~"))
    data = Path(os.environ.get("WANDB_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or home / ".local" / "share", "wandb"))
    cache = Path(os.environ.get("WANDB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or home / ".cache", "wandb"))
    roots = [data / "artifacts", cache / "artifacts"]
    if run_dir is not None:
        wandb_dir = run_dir.parent
        roots.append(wandb_dir.parent if wandb_dir.name == "wandb" else wandb_dir)
    return roots


def _read_local_artifacts(rec: WandbRecords, run_id: str, run: RunData, *, wfile: Path | None = None,
                          run_dir: Path | None = None) -> None:
    """Checkpoint files of the run's artifacts, from their staged copies, linked into diffdiag's cache.

    Every path the manifest names is confined (:mod:`diffdiag.confine`): the file's name in
    the artifact must be a relative path that stays inside the artifact's cache folder, and
    the staged copy must lie in wandb's staging/cache folders or beside the run. An entry that
    breaks this is one error line naming the ``.wandb`` file; nothing is linked or copied for it.
    """
    arts = []
    where = wfile or run_dir or Path(".")
    staged_ok = staging_roots(run_dir)
    base = cache_dir() / "artifacts"
    for art in rec.artifacts:
        arts.append({k: art[k] for k in ("name", "type", "aliases", "digest")})
        if not _is_checkpoint_artifact(art):
            continue
        name = f"{art['name']}-{str(art['digest'])[:12]}"
        try:
            rel = f"{component(run_id, what='the run id')}/{component(name, what='the artifact name')}"
            folder = inside(base, rel, what=f"the cache folder of W&B artifact {shown(art['name'], 40)}")
        except Escape as exc:
            run.input_errors.append(str(InputError(f"{exc.message}; its files were not read", where)))
            continue
        for f in art["files"]:
            if not str(f["path"]).lower().endswith(CHECKPOINT_SUFFIXES):
                continue
            try:
                dst = inside(folder, f["path"], what=f"the file name in W&B artifact {shown(art['name'], 40)}")
            except Escape as exc:
                run.input_errors.append(str(InputError(f"{exc.message}; not read, nothing written", where)))
                continue
            src = Path(f["local_path"]) if f.get("local_path") else None
            if src is None or not src.exists():
                staged = f" (staged at {f['local_path']}, which no longer exists)" if f.get("local_path") else ""
                run.warnings.append(
                    f"checkpoint {f['path']} of W&B artifact {art['name']} is not on this machine{staged}; "
                    f"sync the run and read it online, or pass the file with --checkpoints")
                continue
            if not is_within(src, staged_ok):
                run.input_errors.append(str(InputError(
                    f"artifact {shown(art['name'], 32)}: {shown(f['path'], 32)} is staged at {shown(str(src), 32)}, "
                    f"outside wandb's staging and the run's folders; not read",
                    where)))
                continue
            try:
                _link_or_copy(src, dst)
            except InputError as exc:
                run.input_errors.append(str(exc))
                continue
            run.checkpoints.append(dst)
    if arts:
        run.tracker_artifacts = arts


# ----------------------------------------------------------------------------- online runs
def retry(fn: Callable[[], T], what: str, attempts: int | None = None, base_delay: float | None = None, *,
          deadline: Deadline | None = None) -> T:
    """Call ``fn`` with exponential backoff on network errors, within a deadline; then raise TrackerError.

    The loop is :func:`diffdiag.deadline.retry`: ``DIFFDIAG_WANDB_RETRIES`` (default 3)
    attempts, ``DIFFDIAG_WANDB_BACKOFF`` (seconds, default 1) before the second, doubling;
    no attempt starts and no wait ends after ``deadline`` (default: a new
    :class:`~diffdiag.deadline.Deadline`, ``$DIFFDIAG_TRACKER_TIMEOUT`` or 60 s). Errors
    that retrying cannot fix (unknown run, no permission) raise at once.
    """
    from diffdiag.deadline import retry as retry_within

    attempts = attempts or int(os.environ.get("DIFFDIAG_WANDB_RETRIES", "3"))
    base_delay = float(os.environ.get("DIFFDIAG_WANDB_BACKOFF", "1")) if base_delay is None else base_delay
    try:
        return retry_within(fn, doing=f"W&B ({what})", transient=lambda exc: classify_error(exc) == "network",
                            deadline=deadline, attempts=attempts, backoff=base_delay,
                            give_up=lambda last, n: tracker_error(last, what, attempts=n))
    except (InputError, TrackerError):
        raise
    except Exception as exc:  # noqa: BLE001 - not transient: auth, not found, other
        raise tracker_error(exc, what) from None


def classify_error(exc: BaseException) -> str:
    """``"auth"``, ``"not_found"``, ``"network"`` or ``"other"`` for an exception from wandb."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if any(s in text for s in ("failed to execute api request", "did not respond in time", "connection refused",
                               "service process is busy")):
        return "network"
    if any(s in text for s in ("api key", "api_key", "no authentication", "not logged in", "401", "unauthorized",
                               "permission denied", "403", "forbidden")):
        return "auth"
    if any(s in text for s in ("could not find run", "not found", "404", "does not exist", "no parquet history")):
        return "not_found"
    if any(s in text for s in ("connection", "timed out", "timeout", "refused", "unreachable", "network",
                               "name or service", "max retries", "502", "503", "504", "temporarily")):
        return "network"
    return "other"


def redact(text: str) -> str:
    """Remove secrets (API keys, URL passwords, tokens) from a message: :func:`diffdiag.redact.redact`."""
    from diffdiag.redact import redact as redact_text

    return redact_text(text)


def tracker_error(exc: BaseException | None, what: str, attempts: int | None = None) -> TrackerError:
    """A one-line TrackerError for ``what`` with the API key never in it."""
    kind = classify_error(exc) if exc is not None else "network"
    detail = redact(str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "")
    detail = detail[:200]
    if kind == "auth":
        msg = (f"W&B refused {what}: no valid API key (run `wandb login` or set WANDB_API_KEY)"
               if "key" in detail.lower() or "authentication" in detail.lower() or not detail
               else f"W&B refused {what}: {detail}")
    elif kind == "not_found":
        msg = f"W&B has no {what}" + (f" ({detail})" if detail else "")
    elif kind == "network":
        tries = f" after {attempts} attempts" if attempts and attempts > 1 else ""
        msg = f"W&B could not be reached for {what}{tries}" + (f" ({detail})" if detail else "")
    else:
        msg = f"W&B failed on {what}" + (f" ({type(exc).__name__}: {detail})" if exc is not None else "")
    return TrackerError(msg)


def make_api(base_url: str | None = None, timeout: int | None = None, *, deadline: Deadline | None = None) -> Any:
    """``wandb.Api`` for ``base_url`` (else WANDB_BASE_URL / the default), errors as TrackerError.

    Its request timeout is ``timeout`` (else ``DIFFDIAG_WANDB_TIMEOUT``, default 20 s),
    never more than the time ``deadline`` leaves.
    """
    import wandb

    overrides = {"base_url": base_url} if base_url else None
    dl = deadline if deadline is not None else Deadline(what="logging in to W&B")
    per_request = timeout or int(os.environ.get("DIFFDIAG_WANDB_TIMEOUT", "20"))

    def _make() -> Any:
        try:
            return wandb.Api(overrides=overrides, timeout=dl.timeout_int(cap=per_request))
        except wandb.errors.UsageError as exc:
            raise TrackerError("W&B needs an API key to read online runs: run `wandb login` or set WANDB_API_KEY"
                               f" ({redact(str(exc))[:120]})") from None

    return retry(_make, "login", deadline=dl)


def read_online_run(ref: dict[str, Any], run: RunData, settings: Settings, api: Any = None, *,
                    timeout: float | None = None) -> None:
    """Fill ``run`` from an online W&B run through the public API, within one deadline
    (``timeout`` seconds, else ``$DIFFDIAG_TRACKER_TIMEOUT``, else 60)."""
    import wandb  # noqa: F401 - imported before the clock starts (seconds on a cold start)

    path = f"{ref['entity']}/{ref['project']}/{ref['run_id']}"
    for part, what in ((ref["entity"], "entity"), (ref["project"], "project"), (ref["run_id"], "run id")):
        component(part, what=f"the W&B {what}")  # they name diffdiag's cache folders
    dl = Deadline(timeout, what=f"reading W&B run {path}")
    api = api or make_api(ref.get("base_url"), deadline=dl)
    wrun = retry(lambda: api.run(path), f"run {path}", deadline=dl)
    run.name = getattr(wrun, "name", None) or ref["run_id"]
    rows = retry(lambda: _history_rows(wrun), f"the history of run {path}", deadline=dl)
    scalars, other, media = _columns_from_rows(rows)
    sample_ids, timesteps = _list_fields(other)
    if scalars:
        try:
            run.log = _build_log(_user_scalars(scalars), settings, sample_ids, timesteps, f"wandb:{path}")
        except InputError as exc:
            if not media:
                raise
            run.warnings.append(f"W&B run {path}: {exc.message}; analysing its images only")
    cfg = dict(getattr(wrun, "config", {}) or {})
    run.config.update({k: v for k, v in cfg.items() if not k.startswith("_")})
    try:
        run.tracker_summary = {k: v for k, v in dict(wrun.summary).items() if not k.startswith("_wandb")}
    except Exception:  # noqa: BLE001 - the summary is optional
        run.tracker_summary = {}
    root = cache_dir() / "runs" / ref["entity"] / ref["project"] / ref["run_id"]
    _download_media(wrun, media, root, run, settings, deadline=dl)
    _download_checkpoints(wrun, root, run, deadline=dl)
    run.tracker = _tracker_info(ref["run_id"], ref["project"], ref["entity"],
                                         getattr(wrun, "group", None) or "", False, str(root),
                                         base_url=ref.get("base_url"), url=getattr(wrun, "url", None))
    run.inputs["wandb_run"] = path


def _history_rows(wrun: Any) -> list[dict[str, Any]]:
    """Every history row: the parquet export (``scan_history``), else the full JSON history."""
    try:
        return list(wrun.scan_history(page_size=10_000))
    except Exception as exc:  # noqa: BLE001 - servers without parquet history export
        if classify_error(exc) == "network":
            raise
        n = int(getattr(wrun, "lastHistoryStep", -1)) + 1
        return list(wrun.history(samples=max(n, 1), pandas=False))


def _columns_from_rows(rows: list[dict[str, Any]]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                                             dict[str, list[tuple[int, Any]]], list[Any]]:
    from .wandb_records import MediaRef, _separated_images

    steps_by_key: dict[str, list[int]] = {}
    vals_by_key: dict[str, list[float]] = {}
    other: dict[str, list[tuple[int, Any]]] = {}
    media: list[MediaRef] = []
    for i, row in enumerate(rows):
        step = row.get("_step", i)
        try:
            step = int(step)
        except (TypeError, ValueError):
            step = i
        for k, v in row.items():
            if k == "_step" or v is None:
                continue
            if isinstance(v, bool) or isinstance(v, (int, float)):
                steps_by_key.setdefault(k, []).append(step)
                vals_by_key.setdefault(k, []).append(float(v))
            elif isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity", "nan", "inf", "-inf"):
                steps_by_key.setdefault(k, []).append(step)
                vals_by_key.setdefault(k, []).append(float(v.replace("inity", "")))
            elif isinstance(v, dict) and v.get("_type") == "images/separated":  # a list of images under one key
                media.extend(MediaRef(k, step, item, i) for i, item in enumerate(_separated_images(v)))
            elif isinstance(v, dict) and "_type" in v:
                media.append(MediaRef(k, step, v))
            else:
                other.setdefault(k, []).append((step, v))
    cols = {k: (np.asarray(steps_by_key[k], dtype=np.int64), np.asarray(vals_by_key[k], dtype=np.float64))
            for k in steps_by_key}
    return cols, other, media


def _download_media(wrun: Any, media: list[Any], root: Path, run: RunData, settings: Settings, *,
                    deadline: Deadline | None = None) -> None:
    images: dict[str, list[Any]] = {}
    for m in media:
        if m.kind in IMAGE_TYPES and m.path:
            images.setdefault(m.key, []).append(m)
    wanted = [m for refs in images.values() for m in _pick_media(refs)]
    if not wanted:
        return
    names = sorted({m.path for m in wanted})  # paths are checked (confined) before anything is downloaded
    files = retry(lambda: {f.name: f for f in wrun.files(names=names)}, "the run's media files", deadline=deadline)
    for m in wanted:
        f = files.get(m.path)
        target = _media_file(root / "files", m, run, None)
        if target is None:
            continue
        if not target.exists():
            if f is None:
                run.warnings.append(f"W&B image {m.key} at step {m.step} is not among the run's files")
                continue
            # wandb's File.download returns the file opened for reading: closed at once (no ResourceWarning)
            retry(lambda f=f: f.download(root=str(root / "files"), replace=True, exist_ok=True).close(),
                  f"file {m.path}", deadline=deadline)
        try:
            arr = load_image_file(target)
        except InputError as exc:
            run.input_errors.append(f"{exc} (W&B image {m.key} at step {m.step}); skipped")
            continue
        run.samples.append(_sample(arr, m))
    run.samples.sort(key=lambda s: (s.step if s.step is not None else -1, s.path))


def _download_checkpoints(wrun: Any, root: Path, run: RunData, *, deadline: Deadline | None = None) -> None:
    arts = retry(lambda: list(wrun.logged_artifacts()), "the run's artifacts", deadline=deadline)
    listed = []
    for art in arts:
        listed.append({"name": art.name, "type": art.type, "aliases": list(getattr(art, "aliases", []) or []),
                       "digest": getattr(art, "digest", "")})
        if art.type not in ("model", "checkpoint", "lora"):
            continue
        try:  # every name the artifact's manifest holds must stay inside its cache folder
            target = inside(cache_dir() / "artifacts", f"{component(root.name, what='the run id')}/"
                            f"{component(str(art.name).replace(':', '-'), what='the artifact name')}",
                            what=f"the cache folder of W&B artifact {art.name!r}")
            for entry in _manifest_paths(art):
                inside(target, entry, what=f"the file name in W&B artifact {art.name!r}")
        except Escape as exc:
            run.input_errors.append(str(InputError(f"{exc.message}; nothing of it was downloaded",
                                                   f"W&B run {'/'.join(root.parts[-3:])}")))
            continue
        path = retry(lambda art=art, target=target: art.download(root=str(target)), f"artifact {art.name}",
                     deadline=deadline)
        for p in sorted(Path(path).rglob("*")):
            if p.is_file() and not p.is_symlink() and p.suffix.lower() in CHECKPOINT_SUFFIXES \
                    and is_within(p, [target]):
                run.checkpoints.append(p)
    if listed:
        run.tracker_artifacts = listed


def _manifest_paths(art: Any) -> list[str]:
    """The file names an online artifact's manifest holds (empty when it cannot be listed)."""
    try:
        return [str(k) for k in art.manifest.entries]
    except Exception:  # noqa: BLE001 - an artifact without a manifest object: wandb checks on download
        return []


# ----------------------------------------------------------------------------- entry points
def tracker_record(ref: str) -> dict[str, Any]:
    """Where the W&B run ``ref`` lives, as ``RunData.tracker`` (for a push to a run that was not read).

    A local run's ``.wandb`` file is read for its id, entity, project and group; an online
    ref is only parsed (its group is then unknown).
    """
    info = parse_ref(ref)
    if info["kind"] == "online":
        return _tracker_info(info["run_id"], info["project"], info["entity"], "", False, None,
                             base_url=info.get("base_url"))
    return _local_tracker(info["dir"], info["file"], read_wandb_file(info["file"]).run or {})


def read_wandb_run(ref: str, run: RunData, settings: Settings, *, timeout: float | None = None) -> None:
    """Read ``--wandb-run REF`` into ``run`` (in place).

    Parameters
    ----------
    ref : str
        A local run directory / ``wandb/`` folder / ``.wandb`` file, ``entity/project/run_id``
        or a run URL.
    run : RunData
        Filled in place: ``log`` (scalar histories, keys auto-detected), ``samples`` (logged
        images with their ``_step``), ``config``, ``checkpoints``, ``tracker_summary``,
        ``tracker_tables``, ``tracker``.
    settings : Settings
    timeout : float, optional
        The budget of an online read, in seconds (default ``$DIFFDIAG_TRACKER_TIMEOUT``, else 60).

    Raises
    ------
    InputError
        Unreadable/unsupported local run (exit 2).
    TrackerError
        No API key, unknown run, W&B unreachable after retries or within the deadline (exit 3).
    """
    info = parse_ref(ref)
    if info["kind"] == "local":
        read_local_run(info["dir"], info["file"], run, settings)
    else:
        read_online_run(info, run, settings, timeout=timeout)
