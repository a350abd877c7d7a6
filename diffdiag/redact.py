"""Keep secrets out of everything diffdiag writes (README "Safety").

One helper, applied where text leaves diffdiag: the CLI's stdout/stderr
(:func:`redacting_streams`), ``diagnosis.json`` (:mod:`diffdiag.diagnosis_io`),
the report (:mod:`diffdiag.reports`), and what the sinks push into a tracker run
(tags, notes, tables, artifacts, W&B Report specs).

What is a secret
----------------
* the user-info part of a URL: ``http://user:SECRET@host`` -> ``http://***@host``
  (a tracking URI, a W&B run URL, an artifact location);
* query parameters that carry credentials (``token``, ``key``, ``api_key``,
  ``password``, ``secret``, ``sig``/``signature``, AWS/Azure signatures...);
* ``Authorization``-style values: ``Bearer …``, ``Basic …``, ``token=…``,
  ``api_key: …``, ``password=…``;
* the value of every environment variable whose name says it holds a
  credential (:data:`SECRET_ENV` and names ending in ``_TOKEN``, ``_API_KEY``,
  ``_PASSWORD``, ``_SECRET``, ``_SECRET_ACCESS_KEY``, ...), wherever it appears;
* W&B API keys by their shape (40 hexadecimal characters standing alone,
  ``wandb_v1_…``).

Redaction replaces the secret with ``***`` and keeps the rest of the text, so a
message still says which server or file it is about.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import sys
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

MASK = "***"

#: environment variables that hold credentials (redacted wherever their value appears)
SECRET_ENV = (
    "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE",
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "DATABRICKS_TOKEN", "DATABRICKS_PASSWORD", "DATABRICKS_CLIENT_SECRET",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCESS_KEY", "AZURE_CLIENT_SECRET",
    "GOOGLE_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "GITHUB_TOKEN",
)
#: an environment variable whose name matches this holds a credential too
_SECRET_NAME = re.compile(r"(?i)(^|_)(TOKEN|API_?KEY|PASSWORD|PASSWD|SECRET|SECRET_ACCESS_KEY|ACCESS_KEY(_ID)?|"
                          r"PRIVATE_KEY|CLIENT_SECRET|CONNECTION_STRING)$")
#: values this short are not treated as secrets when found in the environment (``1``, ``true``)
_MIN_SECRET = 6

# scheme://userinfo@host: everything between "//" and the last "@" before the host's end
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/\s?#@\"'<>]+)@")
_QUERY = re.compile(r"(?i)([?&;](?:access_?token|auth|token|key|api_?key|apikey|password|passwd|pwd|secret|"
                    r"client_secret|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
                    r"x-goog-signature|x-goog-credential)=)[^&#\s\"'<>]+")
_AUTH = re.compile(r"(?i)\b(?:(bearer|basic)(\s+)(?=[A-Za-z0-9+/=._~\-]*[0-9+/=])[A-Za-z0-9+/=._~\-]{12,}|"
                   r"(authorization['\"]?\s*[=:]\s*['\"]?(?:[a-z]+\s+)?)()[A-Za-z0-9+/=._~\-]{8,})")
# name=value / name: value for names that hold credentials (a bare "token" or "key" is too common a word)
_ASSIGN = re.compile(r"(?i)\b((?:[a-z0-9]+[_-])*(?:api[_-]?key|apikey|password|passwd|secret|"
                     r"(?:access|auth|api|session|refresh|id|bearer)[_-]token|"
                     r"access[_-]?key(?:[_-]id)?|secret[_-]access[_-]key)"
                     r"['\"]?\s*[=:]\s*['\"]?)([^\s'\",;&}]{4,})")
_WANDB_KEY = re.compile(r"(?<![A-Za-z0-9_\-])(?:[0-9a-f]{40}|wandb_v\d+_[A-Za-z0-9_]{20,}|local-[0-9a-f]{40})"
                        r"(?![A-Za-z0-9_\-])")


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """The credentials held in the environment (longest first), by variable name.

    Parameters
    ----------
    environ : mapping, optional
        Default ``os.environ``.
    """
    env = os.environ if environ is None else environ
    out = {v.strip() for k, v in env.items()
           if (k in SECRET_ENV or _SECRET_NAME.search(k)) and isinstance(v, str) and len(v.strip()) >= _MIN_SECRET}
    return sorted(out, key=len, reverse=True)


def redact(text: str, *, environ: dict[str, str] | None = None) -> str:
    """``text`` with every secret replaced by ``***`` (see the module docstring).

    Parameters
    ----------
    text : str
    environ : mapping, optional
        Where credential variables are looked up (default ``os.environ``).

    Returns
    -------
    str
    """
    if not isinstance(text, str) or not text:
        return text
    for value in secret_values(environ):
        if value in text:
            text = text.replace(value, MASK)
    text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _QUERY.sub(lambda m: m.group(1) + MASK, text)
    text = _AUTH.sub(lambda m: (m.group(1) or m.group(3)) + (m.group(2) or m.group(4) or "") + MASK, text)
    text = _ASSIGN.sub(lambda m: m.group(1) + MASK, text)
    text = _WANDB_KEY.sub(MASK, text)
    return text


def redact_obj(obj: Any) -> Any:
    """A copy of ``obj`` with every string in it (dict keys included) redacted.

    Dicts, lists and tuples are rebuilt; dataclass instances are copied with
    :func:`dataclasses.replace` (their init fields redacted); anything else
    (numbers, arrays, paths' non-text parts) is returned as it is. Paths become
    redacted ``str``s only when their text changes.
    """
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_obj(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(redact_obj(v) for v in obj)
    if isinstance(obj, os.PathLike):
        s = os.fspath(obj)
        r = redact(s) if isinstance(s, str) else s
        return obj if r == s else r
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: redact_obj(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                   if f.init and f.name != "details"}
        return dataclasses.replace(obj, **changes)
    return obj


def redact_diagnosis(diagnosis: Any) -> Any:
    """A copy of a :class:`~diffdiag.model.Diagnosis` whose text is redacted (``details`` shared, not copied)."""
    return redact_obj(diagnosis)


def redact_run_text(run: Any) -> Any:
    """A shallow copy of a :class:`~diffdiag.model.RunData` whose descriptive text is redacted.

    ``name``, ``inputs``, ``tracker``, ``config``, ``warnings`` and ``input_errors``
    are redacted; the data (logs, images, arrays) is shared, not copied.
    """
    fields = ("name", "inputs", "tracker", "config", "warnings", "input_errors")
    return dataclasses.replace(run, **{f: redact_obj(getattr(run, f)) for f in fields if hasattr(run, f)})


class RedactingStream(io.TextIOBase):
    """A text stream that redacts what is written before passing it on.

    Whole lines are redacted together (a write without a newline is held until
    the line ends, :meth:`flush` or :meth:`close`), so a secret split across
    ``write`` calls is still found.
    """

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._pending = ""

    def write(self, s: str) -> int:  # type: ignore[override]
        text = self._pending + s
        cut = text.rfind("\n") + 1
        self._pending = text[cut:]
        if cut:
            self._target.write(redact(text[:cut]))
        if len(self._pending) > 1 << 16:  # a very long line without a newline: pass it on
            self._target.write(redact(self._pending))
            self._pending = ""
        return len(s)

    def flush(self) -> None:
        if self._pending:
            self._target.write(redact(self._pending))
            self._pending = ""
        try:
            self._target.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        try:
            return self._target.isatty()
        except (OSError, ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


@contextmanager
def redacting_streams() -> Iterator[None]:
    """Redact everything written to ``sys.stdout`` and ``sys.stderr`` inside the block."""
    out, err = sys.stdout, sys.stderr
    r_out, r_err = RedactingStream(out), RedactingStream(err)
    sys.stdout, sys.stderr = r_out, r_err
    try:
        yield
    finally:
        for s in (r_out, r_err):
            try:
                s.flush()
            except Exception:  # noqa: BLE001 - a closed stream at exit
                pass
        sys.stdout, sys.stderr = out, err


__all__ = ["MASK", "SECRET_ENV", "RedactingStream", "redact", "redact_diagnosis", "redact_obj", "redact_run_text",
           "redacting_streams", "secret_values"]
