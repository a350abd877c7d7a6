"""The triage folder's journal: every finished run, appended as it completes.

``DIR/triage.jsonl`` holds one JSON object per finished run — ``key``, ``identity``,
``row``, ``curve`` — appended (and flushed to disk) by the driver the moment a worker
returns, so results stream into ``DIR`` while the rest is still running. A triage that
is killed loses at most the runs in flight; the next triage into the same ``DIR`` reads
the journal and skips every run whose key (:func:`diffdiag.triage.refs.run_key`: run id +
its state / a content hash of its files, the settings and version) is already there
with its report. A line cut short by a kill is ignored. Entries are never rewritten, so
a run analysed twice (a rerun after its files changed) keeps its newest entry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

JOURNAL = "triage.jsonl"


class Journal:
    """Append-only JSONL of finished runs in a triage folder."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / JOURNAL

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every whole entry, oldest first (a torn last line is skipped)."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # the write that was cut short by a kill
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict) and isinstance(doc.get("row"), dict):
                    yield doc

    def done(self) -> dict[str, dict[str, Any]]:
        """Key -> the newest entry of a run that was analysed (error rows are tried again)."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.entries():
            if e.get("key") and e["row"].get("verdict") is not None:
                out[e["key"]] = e
        return out

    def append(self, entry: dict[str, Any]) -> None:
        """Append one entry as a single write, flushed to disk."""
        data = (json.dumps(entry, separators=(",", ":"), allow_nan=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.lseek(fd, 0, os.SEEK_END) > 0:
                with open(self.path, "rb") as fh:  # a torn line from a kill: end it, so this entry stands alone
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        os.write(fd, b"\n")
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["Journal", "JOURNAL"]
