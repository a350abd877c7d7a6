"""Read an MLflow run into diffdiag's run model (``--mlflow-run RUN_ID``).

What is read
------------
* **Metrics**: every metric's full history, all keys at once. Against a
  tracking server the REST ``metrics/get-history`` endpoint is paged
  (``max_results``/``page_token``) and all keys are fetched concurrently,
  parsed straight into arrays; in a SQLite store the metric table is read in
  one column query. Either way far faster than one ``get_metric_history``
  call after another (``benchmarks/bench_mlflow.py``). The loss / EMA / LR /
  gradient-norm roles are detected as for log files
  (:func:`diffdiag.sources.logs.build_runlog`).
* **Params and tags** → ``run.config`` (params as numbers where they parse;
  user tags under ``run.config["tags"]``).
* **Images**: those logged with ``log_image(key=…, step=…)`` (``images/`` files,
  named ``"<key>@<step>"``) and image artifacts anywhere else (named by their
  artifact path; step = the last number in the file name) → ``run.samples``.
* **Checkpoints**: ``.safetensors``/``.pt``/``.ckpt`` artifacts, found by walking
  the artifact tree (``list_artifacts`` is not recursive), downloaded into a
  content-addressed cache (``$DIFFDIAG_CACHE`` or ``~/.cache/diffdiag``) and
  reused next time → ``run.checkpoints``.

What diffdiag itself wrote (``diffdiag/`` and ``images/diffdiag~…``) is skipped.

Errors: an unknown run → :class:`InputError` (exit 2); a server that does not
answer after retries with backoff, or refuses → :class:`TrackerError` (exit 3).
A missing or truncated artifact, or absent metric keys, add a warning and the
rest is still analysed. Retries: ``DIFFDIAG_MLFLOW_RETRIES`` (default 4) tries
with ``DIFFDIAG_MLFLOW_BACKOFF`` seconds (default 1, doubling) between them.

Deadline: reading one run from a tracking server has one overall budget
(:class:`diffdiag.deadline.Deadline`: ``timeout``, else
``$DIFFDIAG_TRACKER_TIMEOUT``, else 60 s); MLflow's own HTTP client is bounded
by it too (``MLFLOW_HTTP_REQUEST_TIMEOUT`` = the time left and
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 0 while diffdiag reads, diffdiag
retrying itself), so a server that accepts and never answers, or answers once
and then stalls, ends in exit 3 within the budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from diffdiag.confine import Escape, inside, is_within, relative_part
from diffdiag.deadline import Deadline, retry
from diffdiag.errors import InputError, TrackerError
from diffdiag.model import ImageInput, RunData, RunLog, Series, Settings

from .mlflow_store import StoreLocation, get_client, resolve_tracking_uri

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".ckpt")
#: files copied beside a checkpoint (LoRA scale metadata)
CHECKPOINT_SIDECARS = ("adapter_config.json",)
PAGE_SIZE = 25_000
MAX_SAMPLES = 256
_FLOAT_MAX = 1.7976931348623157e308  # MLflow's SQL stores keep +-inf as +-max float
#: file name of an image logged with ``log_image(key, step)``: images/<key>+step+<n>+timestamp+<ms>+<uuid>
_STEP_IMAGE = re.compile(r"^(?P<key>.+?)[+%]step[+%](?P<step>-?\d+)[+%]timestamp[+%](?P<ts>\d+)[+%]"
                         r"(?P<uuid>[^+%]+?)(?P<compressed>[+%]compressed)?\.(?P<ext>\w+)$")


# --------------------------------------------------------------------------- connection

def _retry_settings() -> tuple[int, float]:
    tries = int(os.environ.get("DIFFDIAG_MLFLOW_RETRIES", "4"))
    backoff = float(os.environ.get("DIFFDIAG_MLFLOW_BACKOFF", "1.0"))
    return max(1, tries), max(0.0, backoff)


#: phrases of transport errors (MLflow wraps requests' exceptions into MlflowException text)
_TRANSIENT = ("max retries exceeded", "connection", "timed out", "timeout", "temporarily", "reset by peer",
              "remote end closed", "broken pipe", "bad gateway", "service unavailable", "gateway time")


def _transient(exc: BaseException) -> bool:
    """True for errors another try may fix: no connection, no answer in time, 5xx / 429."""
    if isinstance(exc, _Status):
        return exc.status >= 500 or exc.status == 429
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(p in text for p in _TRANSIENT)


class _Status(Exception):
    """An HTTP answer worth retrying (5xx, 429), carried out of one attempt."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.text = status, text


def _retried(fn: Callable[[], Any], doing: str, deadline: Deadline) -> Any:
    """One MLflow client call with diffdiag's retries (``DIFFDIAG_MLFLOW_RETRIES``/``_BACKOFF``) within ``deadline``."""
    tries, backoff = _retry_settings()
    return retry(fn, doing=doing, transient=_transient, deadline=deadline, attempts=tries, backoff=backoff)


@contextmanager
def http_bounds(deadline: Deadline) -> Iterator[None]:
    """Bound MLflow's own HTTP client by ``deadline`` while the block runs.

    ``MLFLOW_HTTP_REQUEST_TIMEOUT`` becomes the time left (or the user's value when
    lower) and ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 0 (diffdiag retries itself);
    both are restored afterwards. MLflow reads them at every request.
    """
    names = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    saved = {k: os.environ.get(k) for k in names}
    try:
        user = int(saved["MLFLOW_HTTP_REQUEST_TIMEOUT"] or 0)
    except ValueError:
        user = 0
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(deadline.timeout_int(cap=user or None))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _is_rest(loc: StoreLocation) -> bool:
    return loc.tracking_uri.startswith(("http://", "https://"))


def _host_creds(loc: StoreLocation):
    from mlflow.utils.credentials import get_default_host_creds

    return get_default_host_creds(loc.tracking_uri)


def explain_refusal(status: int, text: str, uri: str) -> str:
    """One sentence for an HTTP refusal by an MLflow server."""
    if status == 403 and ("host" in text.lower() or "dns rebinding" in text.lower()):
        from urllib.parse import urlparse

        host = urlparse(uri).hostname or uri
        return (f"the MLflow server at {uri} rejected the Host header '{host}' (HTTP 403): start it with "
                f"--allowed-hosts {host} (or reach it as 127.0.0.1/localhost)")
    if status in (401, 403):
        return (f"the MLflow server at {uri} refused access (HTTP {status}): set MLFLOW_TRACKING_USERNAME/"
                f"MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
    return f"the MLflow server at {uri} answered HTTP {status}: {text.strip()[:200]}"


def rest_get(loc: StoreLocation, endpoint: str, params: dict[str, Any], tries: int | None = None,
             backoff: float | None = None, *, deadline: Deadline | None = None) -> dict[str, Any]:
    """GET an MLflow REST endpoint with retries and backoff; return the JSON body.

    Parameters
    ----------
    deadline : Deadline, optional
        The operation's budget (default: a new one): each request times out at the
        time left, and no retry starts after it.

    Raises
    ------
    TrackerError
        The server cannot be reached after the retries or within the deadline, or refuses
        (401/403, 5xx).
    InputError
        The server says the resource does not exist (404 / RESOURCE_DOES_NOT_EXIST).
    """
    from mlflow.utils.rest_utils import http_request

    d_tries, d_backoff = _retry_settings()
    tries = d_tries if tries is None else tries
    backoff = d_backoff if backoff is None else backoff
    dl = deadline if deadline is not None else Deadline(what=f"reading {endpoint} from {loc.tracking_uri}")
    creds = _host_creds(loc)

    def attempt() -> dict[str, Any]:
        resp = http_request(creds, endpoint, "GET", max_retries=0, backoff_factor=0, timeout=dl.timeout(),
                            raise_on_status=False, params=params)
        if resp.status_code == 200:
            return _json_body(resp, loc.tracking_uri, endpoint)
        text = resp.text or ""
        if resp.status_code == 404 or "RESOURCE_DOES_NOT_EXIST" in text:
            raise InputError(_error_message(text) or f"{endpoint} not found", loc.tracking_uri)
        if resp.status_code in (401, 403):
            raise TrackerError(explain_refusal(resp.status_code, text, loc.tracking_uri))
        if resp.status_code == 400 and "INVALID_PARAMETER_VALUE" in text:
            raise InputError(_error_message(text) or text[:200], loc.tracking_uri)
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Status(resp.status_code, text)
        raise TrackerError(explain_refusal(resp.status_code, text, loc.tracking_uri))

    def give_up(last: BaseException | None, n: int) -> TrackerError:
        if isinstance(last, _Status):
            return TrackerError(explain_refusal(last.status, last.text, loc.tracking_uri))
        reason = str(last).splitlines()[0][:200] if last else "no answer"
        if "Max retries exceeded" in reason or "Connection" in reason or "refused" in reason.lower():
            reason = "connection refused or no answer"
        return TrackerError(f"cannot reach the MLflow tracking server at {loc.tracking_uri} after {n} "
                            f"tries ({reason}); is it running?")

    return retry(attempt, doing=f"reading {endpoint} from the MLflow server at {loc.tracking_uri}",
                 transient=_transient, deadline=dl, attempts=tries, backoff=backoff, give_up=give_up)


def _json_body(resp: Any, uri: str, endpoint: str) -> dict[str, Any]:
    """The JSON object an MLflow endpoint answers; a login page or other non-API answer is a TrackerError."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    head = (resp.text or "")[:4000].lower()
    ctype = str(resp.headers.get("content-type", "")).split(";")[0].strip() or "no content type"
    if "<html" in head or "<!doctype html" in head or ctype == "text/html":
        what = "an HTML page (a login or proxy page?)"
    else:
        what = f"something that is not the MLflow API ({ctype})"
    # the URL once: a line quoting it twice outgrows the one-line budget with a long host name
    raise TrackerError(f"the server at {uri} answered {endpoint} with {what}: not an MLflow tracking server? "
                       f"(a sign-in in front of it needs MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)")


def check_sqlite_store(db: Path) -> None:
    """Refuse a SQLite tracking URI that is not an MLflow store, before MLflow opens it.

    MLflow creates its tables in any database it is given: an empty file or another
    program's SQLite database would be changed. Only a file whose header is SQLite's and
    that already holds MLflow's tables (``experiments``, ``runs``, ``alembic_version``)
    is opened; the check itself opens it read-only.

    Raises
    ------
    InputError
        Naming the file: not a regular file, not SQLite, or not an MLflow store.
    """
    import sqlite3

    from diffdiag.safeio import open_regular

    with open_regular(db) as fh:
        head = fh.read(16)
    if len(head) == 0:
        raise InputError("is an empty file, not an MLflow store (diffdiag never creates MLflow's tables in a "
                         "file it is given to read)", db)
    if head != b"SQLite format 3\x00":
        raise InputError("is not an SQLite database, so not an MLflow store (check --mlflow-tracking-uri)", db)
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise InputError(f"is a damaged SQLite database ({str(exc)[:120]}), not a readable MLflow store", db) from None
    if not {"experiments", "runs", "alembic_version"} <= names:
        raise InputError("is an SQLite database but not an MLflow store (no MLflow tables in it)", db)


def _error_message(text: str) -> str | None:
    try:
        return json.loads(text).get("message")
    except (ValueError, AttributeError):
        return None


def connect(tracking_uri: str | None = None, run_id: str | None = None, announce: bool = True, *,
            deadline: Deadline | None = None):
    """Resolve the tracking URI, check it answers (and that ``run_id`` exists); return (loc, client, run).

    ``deadline`` bounds the calls to a tracking server (default: a new :class:`Deadline`).

    Raises
    ------
    InputError
        Unknown run id, or an embedded store that does not exist.
    TrackerError
        Server unreachable (after retries) or refusing.
    """
    from mlflow.exceptions import MlflowException

    loc = resolve_tracking_uri(tracking_uri, announce=announce)
    rest = _is_rest(loc)
    if rest:
        deadline = deadline if deadline is not None else Deadline(what=f"reaching MLflow at {loc.tracking_uri}")
        # Our own probe: MLflow's client would retry for minutes on a dead server.
        if run_id:
            rest_get(loc, "/api/2.0/mlflow/runs/get", {"run_id": run_id}, deadline=deadline)
        else:
            rest_get(loc, "/api/2.0/mlflow/experiments/search", {"max_results": 1}, deadline=deadline)
    elif loc.tracking_uri.startswith("sqlite:///"):
        db = Path(loc.tracking_uri[len("sqlite:///"):])
        if run_id and not db.exists():
            raise InputError(f"no MLflow store here, so run '{run_id}' cannot be read "
                             f"(give --mlflow-tracking-uri or set MLFLOW_TRACKING_URI)", db)
        if db.exists():
            check_sqlite_store(db)
    client = get_client(loc)
    mrun = None
    if run_id:
        try:
            if rest:
                with http_bounds(deadline):
                    mrun = _retried(lambda: client.get_run(run_id), f"reading MLflow run '{run_id}'", deadline)
            else:
                mrun = client.get_run(run_id)
        except MlflowException as exc:
            code = getattr(exc, "error_code", "")
            if "RESOURCE_DOES_NOT_EXIST" in str(code) or "not found" in str(exc).lower():
                raise InputError(f"MLflow run '{run_id}' does not exist", loc.tracking_uri) from None
            if "INVALID_PARAMETER" in str(code):
                raise InputError(f"'{run_id}' is not a valid MLflow run id: {exc.message}",
                                 loc.tracking_uri) from None
            raise TrackerError(f"MLflow at {loc.tracking_uri} failed reading run '{run_id}': "
                               f"{str(exc).splitlines()[0][:200]}") from None
    return loc, client, mrun


# --------------------------------------------------------------------------- metrics

def _to_series(key: str, steps: np.ndarray, values: np.ndarray, timestamps: np.ndarray) -> Series:
    """Sort by step (then timestamp); keep the last value logged for a repeated step."""
    values = values.astype(np.float64, copy=True)
    values[values >= _FLOAT_MAX] = np.inf
    values[values <= -_FLOAT_MAX] = -np.inf
    order = np.lexsort((timestamps, steps))
    steps, values = steps[order], values[order]
    if steps.size > 1:
        last = np.ones(steps.size, dtype=bool)
        last[:-1] = steps[1:] != steps[:-1]
        steps, values = steps[last], values[last]
    return Series(key, steps, values)


def _rest_history(loc: StoreLocation, run_id: str, key: str, page_size: int = PAGE_SIZE, *,
                  deadline: Deadline | None = None) -> Series:
    steps: list[int] = []
    values: list[float] = []
    stamps: list[int] = []
    token = None
    while True:
        params: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": page_size}
        if token:
            params["page_token"] = token
        body = rest_get(loc, "/api/2.0/mlflow/metrics/get-history", params, deadline=deadline)
        for m in body.get("metrics", ()):
            steps.append(int(m.get("step", 0)))
            v = m.get("value", 0.0)
            values.append(float(v) if not isinstance(v, str) else float(v.replace("Infinity", "inf")))
            stamps.append(int(m.get("timestamp", 0)))
        token = body.get("next_page_token")
        if not token:
            break
    return _to_series(key, np.asarray(steps, np.int64), np.asarray(values, np.float64),
                      np.asarray(stamps, np.int64))


def _sql_histories(client, run_id: str, keys: list[str]) -> dict[str, Series] | None:
    """All histories of a run from a SQL store in one column query (None when not a SQL store)."""
    try:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # pragma: no cover - other mlflow layouts
        return None
    store = client._tracking_client.store
    if not isinstance(store, SqlAlchemyStore):
        return None
    with store.ManagedSessionMaker() as session:
        rows = (session.query(SqlMetric.key, SqlMetric.step, SqlMetric.value, SqlMetric.is_nan,
                              SqlMetric.timestamp)
                .filter(SqlMetric.run_uuid == run_id, SqlMetric.key.in_(keys)).all())
    if not rows:
        return {}
    arr_keys = np.array([r[0] for r in rows], dtype=object)
    steps = np.fromiter((r[1] for r in rows), np.int64, len(rows))
    values = np.fromiter((r[2] for r in rows), np.float64, len(rows))
    nan = np.fromiter((bool(r[3]) for r in rows), bool, len(rows))
    stamps = np.fromiter((r[4] or 0 for r in rows), np.int64, len(rows))
    values[nan] = np.nan
    out = {}
    for key in keys:
        sel = arr_keys == key
        if sel.any():
            out[key] = _to_series(key, steps[sel], values[sel], stamps[sel])
    return out


def fetch_histories(loc: StoreLocation, client, run_id: str, keys: list[str],
                    max_workers: int = 8, *, deadline: Deadline | None = None) -> dict[str, Series]:
    """Every key's full history as a :class:`Series` (concurrently and paged).

    Parameters
    ----------
    loc, client
        From :func:`connect`.
    run_id : str
    keys : list of str
        Metric keys (``run.data.metrics`` keys).
    deadline : Deadline, optional
        Bounds the REST calls (default: one per request).
    """
    if not keys:
        return {}
    if not _is_rest(loc):
        try:
            out = _sql_histories(client, run_id, keys)
        except Exception:  # noqa: BLE001 - schema changes: fall back to the public client
            out = None
        if out is not None:
            return out

    def one(key: str) -> Series:
        if _is_rest(loc):
            return _rest_history(loc, run_id, key, deadline=deadline)
        hist = client.get_metric_history(run_id, key)
        return _to_series(key, np.array([m.step for m in hist], np.int64),
                          np.array([m.value for m in hist], np.float64),
                          np.array([m.timestamp for m in hist], np.int64))

    with ThreadPoolExecutor(max_workers=min(max_workers, len(keys))) as ex:
        return dict(zip(keys, ex.map(one, keys)))


def _build_log(scalars: dict[str, Series], settings: Settings, run: RunData, source: str) -> RunLog:
    try:
        from diffdiag.sources.logs import build_runlog
    except ImportError:
        build_runlog = None
    if build_runlog is not None:
        try:
            log = build_runlog(scalars, loss_key=settings.loss_key, ema_key=settings.ema_key,
                               lr_key=settings.lr_key, source=source)
        except InputError as exc:
            run.warnings.append(f"{exc.message} ({source}); the loss checks are skipped")
            log = RunLog(scalars=dict(scalars))
            try:
                from diffdiag.sources.logs import detect_keys

                roles = detect_keys(scalars.keys())
                log.ema_key, log.lr_key, log.grad_norm_key = roles["ema"], roles["lr"], roles["grad_norm"]
            except (ImportError, InputError, KeyError):
                pass
    else:  # the logs module is not there: contract names only
        log = RunLog(scalars=dict(scalars))
        roles = {"loss_key": (settings.loss_key, ["loss", "train_loss", "step_loss", "loss/current",
                                                  "loss/train_step", "train/loss"]),
                 "ema_key": (settings.ema_key, ["ema_loss", "loss_ema", "smooth_loss/train_step",
                                                "loss/average"]),
                 "lr_key": (settings.lr_key, ["lr", "learning_rate", "lr/unet"]),
                 "grad_norm_key": (None, ["grad_norm", "norm/avg_grad_norm"])}
        for attr, (given, names) in roles.items():
            if given:
                setattr(log, attr, given if given in scalars else None)
                if given not in scalars:
                    run.warnings.append(f"MLflow run has no metric '{given}'")
                continue
            setattr(log, attr, next((n for n in names if n in scalars), None))
        if log.lr_key is None:
            log.lr_key = next((k for k in scalars if k.startswith("lr/")), None)
        if log.loss_key is None:
            run.warnings.append(f"MLflow run has no loss metric among {sorted(scalars)[:20]}; "
                                f"the loss checks are skipped (name it with --loss-key)")
    if source not in log.sources:
        log.sources.append(source)
    return log


# --------------------------------------------------------------------------- artifacts

def walk_artifacts(client, run_id: str, path: str | None = None, max_workers: int = 8,
                   errors: list[str] | None = None, *, deadline: Deadline | None = None) -> list[Any]:
    """Every file (``FileInfo``) below ``path`` in a run's artifacts, breadth first, listed concurrently.

    A folder that cannot be listed (e.g. it holds a dangling link) is skipped and named in
    ``errors`` when a list is given; without one the error is raised. ``deadline``
    (a tracking server's budget) bounds each listing, with retries.
    """
    from mlflow.exceptions import MlflowException

    def listing(p: str | None):
        try:
            if deadline is None:
                return client.list_artifacts(run_id, p), None
            return _retried(lambda: client.list_artifacts(run_id, p), f"listing the artifacts of run '{run_id}'",
                            deadline), None
        except (OSError, MlflowException) as exc:
            if errors is None:
                raise
            return [], f"{p or '(root)'}: {str(exc).splitlines()[0][:160]}"

    files: list[Any] = []
    level = [path]
    with ThreadPoolExecutor(max_workers=max_workers) as ex:
        while level:
            listed = list(ex.map(listing, level))
            level = []
            for entries, err in listed:
                if err is not None:
                    errors.append(err)
                for fi in entries:
                    (level if fi.is_dir else files).append(fi.path if fi.is_dir else fi)
    return files


def _is_own(path: str) -> bool:
    return path.startswith("diffdiag/") or path.startswith("images/diffdiag~")


def cache_root() -> Path:
    """The download cache: ``$DIFFDIAG_CACHE`` or ``~/.cache/diffdiag``, folder ``mlflow``."""
    base = os.environ.get("DIFFDIAG_CACHE") or (Path.home() / ".cache" / "diffdiag")
    return Path(base).expanduser().resolve() / "mlflow"


class ArtifactCache:
    """Content-addressed store of downloaded artifacts.

    Blobs live at ``blobs/<sha256>``; an index maps (tracking URI, run, path,
    size) to the blob; each run gets a view folder ``runs/<hash>/<artifact path>``
    of hard links (copies where links fail) so that file and folder names
    (steps, sidecar configs) are kept.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.json"
        try:
            self.index: dict[str, str] = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            self.index = {}
        self.hits = 0
        self.downloads = 0

    @staticmethod
    def _key(uri: str, run_id: str, path: str, size: int | None) -> str:
        return f"{uri}|{run_id}|{path}|{size}"

    def view_dir(self, uri: str, run_id: str) -> Path:
        return self.root / "runs" / hashlib.sha256(f"{uri}|{run_id}".encode()).hexdigest()[:16]

    def get(self, client, loc: StoreLocation, run_id: str, fi, deadline: Deadline | None = None) -> Path:
        """Local path of artifact ``fi`` (downloaded unless cached, within ``deadline`` when given).

        Raises OSError/MlflowException, or DeadlineExceeded.
        """
        key = self._key(loc.tracking_uri, run_id, fi.path, fi.file_size)
        # the artifact's path comes from the tracking server: it must stay inside this run's view folder
        view = inside(self.view_dir(loc.tracking_uri, run_id), fi.path, what="the MLflow artifact path")
        sha = self.index.get(key)
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            sha = None
        blob = self.root / "blobs" / sha if sha else None
        if blob is not None and blob.exists() and (fi.file_size is None or blob.stat().st_size == fi.file_size):
            self.hits += 1
        else:
            with tempfile.TemporaryDirectory(dir=self.root) as tmp:
                if deadline is None:
                    local = Path(client.download_artifacts(run_id, fi.path, tmp))
                else:
                    local = Path(_retried(lambda: client.download_artifacts(run_id, fi.path, tmp),
                                          f"downloading artifact {fi.path}", deadline))
                if not is_within(local, [tmp]) or local.is_symlink() or not local.is_file():
                    raise OSError(f"the download of {fi.path} is not a file inside the download folder")
                size = local.stat().st_size
                if fi.file_size is not None and size != fi.file_size:
                    raise OSError(f"downloaded {size} of {fi.file_size} bytes")
                h = hashlib.sha256()
                with open(local, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                sha = h.hexdigest()
                blob = self.root / "blobs" / sha
                if not blob.exists():
                    os.replace(local, blob)
            self.index[key] = sha
            self.downloads += 1
        view.parent.mkdir(parents=True, exist_ok=True)
        if not (view.exists() and view.stat().st_size == blob.stat().st_size
                and view.stat().st_ino == blob.stat().st_ino):
            if view.exists():
                view.unlink()
            try:
                os.link(blob, view)
            except OSError:
                shutil.copyfile(blob, view)
        return view

    def save(self) -> None:
        tmp = self.index_path.with_suffix(f".{os.getpid()}.tmp")
        try:
            current = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            current = {}
        current.update(self.index)
        tmp.write_text(json.dumps(current))
        os.replace(tmp, self.index_path)


def checkpoint_problem(path: Path) -> str | None:
    """Why a downloaded checkpoint is unusable (truncated, not the format), or None."""
    suffix = path.suffix.lower()
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    if suffix == ".safetensors":  # the one header validator of the checkpoint source
        from diffdiag.sources.checkpoints import read_safetensors_header

        try:
            read_safetensors_header(path)
        except InputError as exc:
            return exc.message.replace("not a valid safetensors file: ", "truncated or not a safetensors file: ", 1)
    elif suffix in (".pt", ".ckpt"):
        import zipfile

        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                magic = f.read(2)
            if magic != b"\x80\x02":  # legacy (non-zip) torch.save
                return "truncated or not a torch checkpoint"
    return None


def _load_image(path: Path, label: str, step: int | None, *, key: str | None = None, index: int = 0) -> ImageInput:
    """An image artifact through diffdiag's one decoder (same modes and pixel limit as ``--images``)."""
    from diffdiag.sources.images import load_image_input

    item = load_image_input(path)
    item.path, item.step = label, step
    item.source, item.key, item.index = "mlflow", key, index
    return item


def _step_from_name(path: str) -> int | None:
    nums = re.findall(r"\d+", Path(path).stem)
    return int(nums[-1]) if nums else None


def _pick_samples(items: list[tuple[str, int | None, Any, Any, bool]], limit: int
                  ) -> list[tuple[str, str, int | None, Any, int]]:
    """The images to read, labelled: per key the steps spread evenly
    (:func:`diffdiag.sources.samples.pick_by_step`), at most ``limit`` in all.

    ``items`` are ``(key, step, order, FileInfo, logged)`` (``logged``: written by ``log_image``); returns
    ``(label, key, step, FileInfo, index)`` — ``mlflow:<key>@<step>#<index>`` for a logged image (``index``:
    its place among that key's images of that step), the artifact path for another image file.
    """
    from diffdiag.sources.samples import MAX_SAMPLE_STEPS, PER_STEP, pick_by_step, sample_label

    by_key: dict[str, list] = {}
    for it in items:
        by_key.setdefault(it[0], []).append(it)
    max_steps = min(MAX_SAMPLE_STEPS, max(1, limit // (max(1, len(by_key)) * PER_STEP)))
    out = []
    for key, group in by_key.items():
        group.sort(key=lambda t: (t[1] is None, t[1] or 0, t[2]))
        index: dict[int | None, int] = {}
        for k, step, _, fi, logged in pick_by_step(group, lambda t: t[1], max_steps=max_steps):
            i = index.get(step, 0)
            index[step] = i + 1
            out.append((sample_label("mlflow", k, step, i) if logged else fi.path, k, step, fi, i))
    return out[:limit]


def read_artifacts(loc: StoreLocation, client, run_id: str, run: RunData, settings: Settings,
                   max_samples: int = MAX_SAMPLES, *, deadline: Deadline | None = None) -> dict[str, Any]:
    """Samples and checkpoints from a run's artifacts into ``run`` (warnings for bad files).

    ``deadline`` bounds the tracking server's listings and downloads.
    """
    from mlflow.exceptions import MlflowException

    errors: list[str] = []
    files = walk_artifacts(client, run_id, errors=errors, deadline=deadline)
    for err in errors:
        run.warnings.append(f"MLflow run {run_id}: an artifact folder cannot be listed ({err}); "
                            f"the rest is still analysed")
    images: list[tuple[str, int | None, Any]] = []
    ckpts: list[Any] = []
    sidecars: dict[str, Any] = {}
    for fi in files:
        p = fi.path
        try:  # a path from the server that is absolute or climbs with '..' is never downloaded
            relative_part(p, what="the artifact path")
        except Escape as exc:
            run.input_errors.append(f"MLflow run {run_id} at {loc.tracking_uri}: {exc.message}; not downloaded")
            continue
        if _is_own(p):
            continue
        name = p.rsplit("/", 1)[-1]
        low = name.lower()
        if p.startswith("images/") and (m := _STEP_IMAGE.match(name)):
            if m.group("compressed"):
                continue
            key = m.group("key").replace("~", "/")
            images.append((key, int(m.group("step")), (int(m.group("ts")), name), fi, True))
        elif low.endswith(IMAGE_SUFFIXES):
            images.append((p.rsplit("/", 1)[0] if "/" in p else "", _step_from_name(p), (0, p), fi, False))
        elif low.endswith(CHECKPOINT_SUFFIXES):
            ckpts.append(fi)
        elif name in CHECKPOINT_SIDECARS:
            sidecars[p] = fi
    cache = ArtifactCache()
    picked = _pick_samples(images, max_samples)
    if len(picked) < len(images):
        run.warnings.append(f"MLflow run has {len(images)} logged images; {len(picked)} spread over the "
                            f"steps were analysed")

    def fetch(fi) -> tuple[Any, Path | None, str | None]:
        try:
            return fi, cache.get(client, loc, run_id, fi, deadline), None
        except Escape as exc:
            return fi, None, exc.message
        except (OSError, MlflowException) as exc:
            return fi, None, str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__

    ck_dirs = {fi.path.rsplit("/", 1)[0] if "/" in fi.path else "" for fi in ckpts}
    wanted = ckpts + [fi for p, fi in sidecars.items() if (p.rsplit("/", 1)[0] if "/" in p else "") in ck_dirs]
    wanted += [t[3] for t in picked]
    with ThreadPoolExecutor(max_workers=8) as ex:
        got = {fi.path: (local, err) for fi, local, err in ex.map(fetch, wanted)}
    cache.save()
    for label, key, step, fi, index in picked:
        local, err = got[fi.path]
        if local is None:
            run.warnings.append(f"MLflow artifact {fi.path} is missing or unreadable ({err}); skipped")
            continue
        try:
            item = _load_image(local, label, step, key=key, index=index)
        except InputError as exc:  # truncated/corrupt/oversized image: one line, the rest analysed, exit 2
            run.input_errors.append(f"MLflow artifact {fi.path} is not a readable image ({exc.message}; "
                                    f"run {run_id}); skipped")
            continue
        item.notes.append(f"mlflow artifact {fi.path}")
        run.samples.append(item)
    run.samples.sort(key=lambda s: (s.path, s.step is None, s.step or 0))
    n_ck = 0
    for fi in ckpts:
        local, err = got[fi.path]
        if local is None:
            run.warnings.append(f"MLflow checkpoint {fi.path} is missing or unreadable ({err}); skipped")
            continue
        problem = checkpoint_problem(local)
        if problem is None:
            try:
                from diffdiag.sources.checkpoints import list_checkpoints
            except ImportError:
                list_checkpoints = None
            if list_checkpoints is not None:
                try:
                    list_checkpoints([local])
                except InputError as exc:
                    problem = f"unreadable ({exc.message})"
        if problem:  # a bad file: one line, the rest analysed, exit 2
            run.input_errors.append(f"MLflow checkpoint {fi.path} is {problem} (run {run_id}); skipped")
            continue
        run.checkpoints.append(local)
        n_ck += 1
    return {"artifacts": len(files), "samples": len(run.samples), "checkpoints": n_ck,
            "cache": str(cache.root), "cache_hits": cache.hits, "downloads": cache.downloads}


# --------------------------------------------------------------------------- config

def _param_value(text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        pass
    if t[:1] in "[{":
        try:
            return json.loads(t)
        except ValueError:
            pass
    return text


def config_from_run(mrun) -> dict[str, Any]:
    """Params (parsed to numbers/bools where they parse) plus user tags under ``"tags"``."""
    config: dict[str, Any] = {k: _param_value(v) for k, v in mrun.data.params.items()}
    tags = {k: v for k, v in mrun.data.tags.items() if not k.startswith(("mlflow.", "diffdiag."))}
    if tags:
        config.setdefault("tags", tags)
    return config


# --------------------------------------------------------------------------- entry point

def read_mlflow_run(run_id: str, run: RunData, settings: Settings, tracking_uri: str | None = None,
                    progress: Callable[[str], None] | None = None, *, timeout: float | None = None) -> None:
    """Fill ``run`` (in place) from MLflow run ``run_id``.

    Parameters
    ----------
    run_id : str
        The MLflow run id.
    run : RunData
        Receives ``log``, ``config``, ``samples``, ``checkpoints``, ``warnings``,
        ``inputs["mlflow_run"]`` and ``tracker = {"kind": "mlflow",
        "run_id", "tracking_uri", "experiment_id"}``.
    settings : Settings
        ``loss_key``/``ema_key``/``lr_key`` override detection; ``max_images``.
    tracking_uri : str, optional
        Else ``MLFLOW_TRACKING_URI``, else the embedded store.
    timeout : float, optional
        The budget of the whole read from a tracking server, in seconds (default
        ``$DIFFDIAG_TRACKER_TIMEOUT``, else 60).

    Raises
    ------
    InputError
        Unknown run id (exit 2).
    TrackerError
        The tracking server cannot be reached, refuses, or does not answer within
        the deadline (exit 3).
    """
    import mlflow.tracking  # noqa: F401 - imported before the clock starts (seconds on a cold start)
    import mlflow.utils.rest_utils  # noqa: F401

    run_id = str(run_id).strip()
    deadline = Deadline(timeout, what=f"reading MLflow run '{run_id}'")
    loc, client, mrun = connect(tracking_uri, run_id, deadline=deadline)
    if not _is_rest(loc):
        _read_run(loc, client, mrun, run_id, run, settings, None)
        return
    with http_bounds(deadline):
        _read_run(loc, client, mrun, run_id, run, settings, deadline)


def _read_run(loc: StoreLocation, client, mrun, run_id: str, run: RunData, settings: Settings,
              deadline: Deadline | None) -> None:
    keys = sorted(mrun.data.metrics)
    try:
        scalars = fetch_histories(loc, client, run_id, keys, deadline=deadline)
    except (InputError, TrackerError):
        raise
    except Exception as exc:  # noqa: BLE001 - mlflow raises many kinds
        raise TrackerError(f"reading metric histories of MLflow run '{run_id}' from {loc.tracking_uri} "
                           f"failed: {str(exc).splitlines()[0][:200]}") from None
    source = f"MLflow run {run_id}"
    if scalars:
        run.log = _build_log(scalars, settings, run, source)
    else:
        run.warnings.append(f"MLflow run {run_id} logged no metrics; only its artifacts are analysed")
    run.config.update(config_from_run(mrun))
    art = read_artifacts(loc, client, run_id, run, settings, deadline=deadline)
    run.name = mrun.info.run_name or run_id
    info = {"kind": "mlflow", "run_id": run_id, "tracking_uri": loc.tracking_uri,
            "experiment_id": mrun.info.experiment_id}
    run.tracker = dict(info, embedded=loc.embedded, status=mrun.info.status,
                                end_time=mrun.info.end_time, run_name=mrun.info.run_name)
    run.inputs["mlflow_run"] = dict(info, metrics=keys, **{k: v for k, v in art.items() if k != "cache"})
