"""Paths named inside other programs' files stay inside the folder they belong to (README "Safety").

A tracker record, an artifact manifest, a config or an archive names files by
paths that diffdiag did not choose: ``../../.bashrc``, ``/etc/passwd``, a link
out of the run folder. Before such a path is read, written, linked or
downloaded to, it goes through :func:`inside`: resolved (``..`` and links
followed) it must stay below the folder it belongs to (a cache, a run folder,
a staging folder), else :class:`Escape` names it and the caller skips it with
a note.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Iterable

from .errors import InputError
from .safeio import quote


class Escape(InputError):
    """A path from inside a file would lead outside the folder it belongs to."""


def shown(path: str, limit: int = 64) -> str:
    """A path for a message: quoted, its end kept when it is long (the file name says most)."""
    text = str(path)
    return quote(text) if len(text) <= limit else quote("…" + text[-(limit - 1):])


def relative_part(name: str, *, what: str = "path") -> PurePosixPath:
    """``name`` as a relative path that cannot climb: no absolute path, no ``..``, no NUL, no backslash tricks.

    Raises
    ------
    Escape
        Naming the offending value (quoted, at most ~200 characters).
    """
    text = str(name)
    if not text or "\0" in text:
        raise Escape(f"{what} {shown(text)} is empty or holds a NUL byte")
    posix = text.replace("\\", "/")
    p = PurePosixPath(posix)
    if p.is_absolute() or posix.startswith("~") or (len(posix) > 1 and posix[1] == ":"):
        raise Escape(f"{what} {shown(text)} is absolute")
    if ".." in p.parts:
        raise Escape(f"{what} {shown(text)} climbs out of its folder with '..'")
    parts = [x for x in p.parts if x not in ("", ".")]
    if not parts:
        raise Escape(f"{what} {shown(text)} names no file")
    return PurePosixPath(*parts)


def component(name: str, *, what: str = "name") -> str:
    """``name`` as one safe path component (a run id, an artifact name): no separators, not ``.``/``..``.

    Raises
    ------
    Escape
    """
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise Escape(f"{what} {shown(text)} is not usable as a folder name")
    return text


def inside(root: str | os.PathLike[str], rel: str | os.PathLike[str], *, what: str = "path") -> Path:
    """``root / rel``, checked to stay inside ``root`` once resolved (``..`` and links followed).

    Parameters
    ----------
    root : path
        The folder ``rel`` belongs to.
    rel : str or path
        A relative path from inside a file (a manifest entry, a media path).
    what : str
        How messages name it.

    Returns
    -------
    Path
        ``root / rel`` (not resolved: links inside the folder keep their names).

    Raises
    ------
    Escape
        ``rel`` is absolute, climbs with ``..``, or leads out of ``root`` through a link.
    """
    part = relative_part(os.fspath(rel), what=what)
    base = Path(root)
    path = base.joinpath(*part.parts)
    if not is_within(path, [base]):
        raise Escape(f"{what} {shown(str(rel))} leads out of its folder through a link")
    return path


def is_within(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> bool:
    """True when ``path``, resolved (links followed), lies inside one of ``roots`` (resolved too)."""
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError):
        return False
    for root in roots:
        try:
            r = Path(os.path.realpath(root))
        except (OSError, ValueError):
            continue
        if real == r or r in real.parents:
            return True
    return False


__all__ = ["Escape", "component", "inside", "is_within", "relative_part", "shown"]
