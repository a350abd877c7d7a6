"""The report folder: diffdiag replaces only what it wrote there (README "Safety").

``--report DIR`` may be a folder that already holds other files. diffdiag keeps
a manifest of its own outputs in ``DIR/.diffdiag-manifest.json`` (paths
relative to ``DIR``) and

* writes each output atomically (a temporary file beside it, then a rename), so
  a killed run leaves either the old file or the new one, and a link placed
  where an output goes is replaced, never written through;
* replaces or deletes only the files its manifest lists (a stale figure of the
  previous report is deleted; a PNG someone else put into ``figures/`` stays);
* refuses, with one line naming the file (exit 2), to write over a file it did
  not write, or where a folder or something that is not a regular file is.

A report written before manifests existed is recognised by its
``diagnosis.json`` (schema ``diffdiag.diagnosis/1``): the files its
``outputs`` name are adopted as diffdiag's own.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Callable, Iterable

from diffdiag.errors import InputError

MANIFEST = ".diffdiag-manifest.json"
_FORMAT = "diffdiag.report-manifest/1"


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_report_dir(root: str | os.PathLike[str], outputs: Iterable[str] = (
        "report.html", "report.pdf", "diagnosis.json", "figures/.")) -> "ReportFolder":
    """Check, before any analysis, that the report can be written into ``root``; nothing is created.

    Raises
    ------
    InputError
        ``root`` is a file; it (or the folder it would be created in) cannot be written;
        one of ``outputs`` is a folder, or a file diffdiag did not write.
    """
    folder = ReportFolder(root, create=False)
    for rel in outputs:
        folder.check(rel)
    return folder


class ReportFolder:
    """diffdiag's outputs in one report folder.

    Parameters
    ----------
    root : path
        The report folder (created when missing, unless ``create`` is False).
    create : bool
        Create ``root`` now.

    Raises
    ------
    InputError
        ``root`` is not a folder, or cannot be created or written.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root).expanduser()
        self._saved = False  # the manifest on disk says what self.owned says
        self._check_root(create)
        self.owned: set[str] = self._read_manifest()

    # ------------------------------------------------------------------ the folder
    def _check_root(self, create: bool) -> None:
        root = self.root
        try:
            st = os.stat(root)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            above = next((p for p in root.parents if p.exists()), root.parent)
            raise InputError(f"the report folder cannot be created: {above} is a file, not a folder", root) from None
        except OSError as exc:
            raise InputError(f"the report folder cannot be examined ({_why(exc)})", root) from None
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise InputError("the report folder is a file, not a folder: choose a folder with --report", root)
            if not os.access(root, os.W_OK | os.X_OK):
                raise InputError("cannot write the report here (permission denied)", root)
            return
        # the nearest folder that exists must be writable
        parent = root.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise InputError(f"the report folder cannot be created: {parent} is not a folder", root)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"the report folder cannot be created in {parent} (permission denied)", root)
        if create:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"the report folder cannot be created ({_why(exc)})", root) from None

    def _read_manifest(self) -> set[str]:
        p = self.root / MANIFEST
        try:
            if p.is_file() and not p.is_symlink():
                doc = json.loads(p.read_text(encoding="utf-8"))
                if isinstance(doc, dict) and doc.get("format") == _FORMAT and isinstance(doc.get("files"), list):
                    self._saved = True
                    return {f for f in doc["files"] if isinstance(f, str) and _relative(f)}
        except (OSError, ValueError):
            pass
        return self._legacy()

    def _legacy(self) -> set[str]:
        """The outputs a pre-manifest report's ``diagnosis.json`` names (inside the folder)."""
        p = self.root / "diagnosis.json"
        try:
            if not p.is_file() or p.is_symlink() or p.stat().st_size > 64 << 20:
                return set()
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        if not isinstance(doc, dict) or doc.get("schema") != "diffdiag.diagnosis/1":
            return set()
        outs = doc.get("outputs") if isinstance(doc.get("outputs"), dict) else {}
        named = [outs.get("html"), outs.get("pdf"), outs.get("diagnosis"), str(p)]
        named += outs.get("figures") if isinstance(outs.get("figures"), list) else []
        wr = outs.get("wandb", {}).get("report") if isinstance(outs.get("wandb"), dict) else None
        if isinstance(wr, dict):
            named.append(wr.get("spec"))
        own: set[str] = set()
        for n in named:  # the paths were written relative to some working directory: keep their tails
            if not isinstance(n, str):
                continue
            parts = Path(n).parts
            rel = "/".join(parts[-2:]) if len(parts) >= 2 and parts[-2] == "figures" else (parts[-1] if parts else "")
            if _relative(rel) and (self.root / rel).is_file():
                own.add(rel)
        return own

    def _save_manifest(self) -> None:
        doc = {"format": _FORMAT, "note": "files diffdiag wrote here; only these are replaced or deleted",
               "files": sorted(self.owned)}
        self._atomic(MANIFEST, lambda tmp: tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8"))
        self._saved = True

    # ------------------------------------------------------------------ one output
    def check(self, rel: str) -> Path:
        """The path ``rel`` is written at, after checking diffdiag may write there.

        Raises
        ------
        InputError
            Naming the file: a folder or a non-regular file is there, a link or a file
            diffdiag did not write, or a folder on the way is a link or a file.
        """
        if rel.endswith("/."):  # only the folder: it must be a real folder of this report, or absent
            rel = rel[:-2] + "/x"
            self.check(rel)
            return self.root / rel[:-2]
        if not _relative(rel):
            raise ValueError(f"not a relative output path: {rel!r}")
        path = self.root / rel
        # folders on the way (figures/) must be real folders of this report
        for parent in reversed(Path(rel).parents[:-1] if len(Path(rel).parts) > 1 else []):
            d = self.root / parent
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise InputError(f"cannot be examined ({_why(exc)})", d) from None
            if stat.S_ISLNK(st.st_mode):
                raise InputError("is a link; diffdiag writes its report's files only into real folders", d)
            if not stat.S_ISDIR(st.st_mode):
                raise InputError("is a file where the report's folder goes; it was not replaced "
                                 "(move it away or choose another --report folder)", d)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return path
        except OSError as exc:
            raise InputError(f"cannot be examined ({_why(exc)})", path) from None
        if stat.S_ISDIR(st.st_mode):
            raise InputError("is a folder where diffdiag writes a report file; it was not replaced "
                             "(move it away or choose another --report folder)", path)
        if Path(rel).as_posix() not in self.owned and not (stat.S_ISREG(st.st_mode) and _diffdiag_json(path)):
            what = "a link" if stat.S_ISLNK(st.st_mode) else (
                "a file" if stat.S_ISREG(st.st_mode) else "something that is not a regular file")
            raise InputError(f"is {what} diffdiag did not write; it was not replaced "
                             f"(move it away or choose another --report folder)", path)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            raise InputError("is not a regular file; it was not replaced", path)
        return path

    def claim(self, rels: Iterable[str]) -> None:
        """Check every output in ``rels`` and record them in the manifest before writing them
        (a run killed while writing leaves them recorded as diffdiag's own)."""
        rels = [Path(r).as_posix() for r in rels]
        for rel in rels:
            self.check(rel)
        new = set(rels) - self.owned
        if new or not self._saved:
            self.owned |= new
            self._save_manifest()

    def write(self, rel: str, writer: Callable[[Path], object]) -> Path:
        """Write output ``rel`` atomically: ``writer(tmp_path)`` writes it, then it is renamed into place.

        Raises
        ------
        InputError
            As :meth:`check`, or the file cannot be written.
        """
        self.claim([rel])
        self._atomic(rel, writer)
        return self.root / rel

    def _atomic(self, rel: str, writer: Callable[[Path], object]) -> None:
        path = self.root / rel
        tmp = path.with_name(f".{path.name}.diffdiag-tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if tmp.is_symlink() or tmp.is_dir():
                raise InputError("is in the way of a temporary file diffdiag writes; remove it", tmp)
            writer(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise InputError(f"cannot be written ({_why(exc)})", path) from None

    def remove_stale(self, keep: Iterable[str], under: str) -> list[str]:
        """Delete diffdiag's own earlier outputs below folder ``under`` that are not in ``keep``."""
        keep = {Path(k).as_posix() for k in keep}
        gone = []
        for rel in sorted(self.owned):
            if not rel.startswith(under.rstrip("/") + "/") or rel in keep:
                continue
            p = self.root / rel
            try:
                if p.is_symlink() or p.is_file():
                    p.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            gone.append(rel)
        if gone:
            self.owned -= set(gone)
            self._save_manifest()
        return gone


def _diffdiag_json(path: Path) -> bool:
    """True for a JSON document diffdiag wrote (``"schema": "diffdiag.…"``: diagnosis.json, wandb_report.json),
    e.g. by the training hook, which writes ``diagnosis.json`` itself."""
    if path.suffix != ".json":
        return False
    try:
        if path.stat().st_size > 64 << 20:
            return False
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and str(doc.get("schema", "")).startswith("diffdiag.")


def _relative(rel: str) -> bool:
    """True for a plain relative path that stays inside its folder (no ``..``, not absolute)."""
    if not rel or os.path.isabs(rel) or "\\" in rel or "\0" in rel:
        return False
    parts = Path(rel).parts
    return bool(parts) and ".." not in parts and parts[0] not in (".", MANIFEST)


__all__ = ["MANIFEST", "ReportFolder", "check_report_dir"]
