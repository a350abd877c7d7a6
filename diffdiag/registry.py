"""A registry of independent checks (CleanVision-style).

A *check* reads a :class:`~diffdiag.model.RunData` and returns findings. Checks
are registered with :func:`register` in the modules of :mod:`diffdiag.checks`
and run by :func:`run_checks`; each one runs only when its inputs are present,
and one failing check never stops the others.

Example
-------
>>> @register("loss", needs=lambda run: run.log is not None)
... def check_loss(run, settings):
...     return []
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable

from .errors import DiffdiagError
from .model import Finding, RunData, Settings

CheckFunc = Callable[[RunData, Settings], Iterable[Finding]]


@dataclass(frozen=True)
class CheckSpec:
    """A registered check: its name, function, and the inputs it needs."""

    name: str
    func: CheckFunc
    needs: Callable[[RunData], bool]
    order: int = 100


_REGISTRY: dict[str, CheckSpec] = {}


def register(name: str, needs: Callable[[RunData], bool] | None = None, order: int = 100):
    """Register a check function under ``name``.

    Parameters
    ----------
    name : str
        Unique name (also used in progress display and warnings).
    needs : callable, optional
        ``needs(run) -> bool``: whether the run has the inputs the check reads.
    order : int
        Checks run in ascending order (ties by name), so findings are stable.
    """

    def deco(func: CheckFunc) -> CheckFunc:
        _REGISTRY[name] = CheckSpec(name, func, needs or (lambda run: True), order)
        return func

    return deco


def registered_checks() -> list[CheckSpec]:
    """All registered checks in run order (importing :mod:`diffdiag.checks` first)."""
    from . import checks  # noqa: F401  (registers the built-in checks)

    return sorted(_REGISTRY.values(), key=lambda c: (c.order, c.name))


def strict_mode() -> bool:
    """True when ``DIFFDIAG_STRICT=1``: unexpected check errors propagate (tests use it)."""
    return os.environ.get("DIFFDIAG_STRICT", "") not in ("", "0")


def run_checks(run: RunData, settings: Settings, progress: Callable[[str], None] | None = None
               ) -> tuple[list[Finding], list[str]]:
    """Run every applicable check.

    Returns
    -------
    findings : list of Finding
    warnings : list of str
        One line per check that could not complete (the others still ran).
    """
    findings: list[Finding] = []
    warnings: list[str] = []
    for spec in registered_checks():
        try:
            if not spec.needs(run):
                continue
        except Exception:  # a needs() predicate must never break the analysis
            continue
        if progress is not None:
            progress(spec.name)
        try:
            findings.extend(spec.func(run, settings))
        except DiffdiagError as exc:
            warnings.append(f"{spec.name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one broken check must not stop the rest
            if strict_mode():
                raise
            warnings.append(f"{spec.name}: internal error ({type(exc).__name__}: {exc})")
    return findings, warnings
