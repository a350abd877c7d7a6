"""A registry of independent checks (CleanVision-style).

A *check* is a pure function ``check(run, settings)`` of a
:class:`~diffdiag.model.RunData` and :class:`~diffdiag.model.Settings` that
returns a :class:`~diffdiag.model.CheckResult` (findings, the data its report
figures draw, notes) or a plain list of findings. It writes nothing into
``run``, opens no file and does not depend on another check having run, so the
checks can run in any order, or alone. Checks are registered with
:func:`register` in the modules of :mod:`diffdiag.checks` and run by
:func:`run_checks`; each one runs only when its inputs are present, and one
failing check becomes a note while the others still run.

Example
-------
>>> @register("loss", needs=lambda run: run.log is not None)
... def check_loss(run, settings):
...     return []
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Union

import numpy as np

from .errors import DiffdiagError
from .model import CheckResult, Finding, RunData, Settings

CheckFunc = Callable[[RunData, Settings], Union[CheckResult, Iterable[Finding]]]


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


def run_check(spec: CheckSpec, run: RunData, settings: Settings) -> CheckResult | None:
    """Run one registered check on ``run``.

    Returns
    -------
    CheckResult or None
        None when the run lacks the check's inputs. A check that fails with a
        :class:`~diffdiag.errors.DiffdiagError` (or, outside strict mode, any
        error) gives a result with no findings and one note saying why.
    """
    try:
        if not spec.needs(run):
            return None
    except Exception:  # a needs() predicate must never break the analysis
        return None
    try:
        # floating-point overflow on extreme data (latents at the float32 limit, huge losses) gives inf/NaN,
        # which the checks treat as data; numpy's RuntimeWarning about it would only reach the user's stderr
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            out = spec.func(run, settings)
    except DiffdiagError as exc:
        return CheckResult(notes=[f"{spec.name}: {exc}"])
    except Exception as exc:  # noqa: BLE001 - one broken check must not stop the rest
        if strict_mode():
            raise
        return CheckResult(notes=[f"{spec.name}: internal error ({type(exc).__name__}: {exc})"])
    if isinstance(out, CheckResult):
        return CheckResult(list(out.findings), out.data, list(out.notes))
    return CheckResult(list(out))


def run_checks(run: RunData, settings: Settings, progress: Callable[[str], None] | None = None
               ) -> dict[str, CheckResult]:
    """Run every applicable check, in registry order.

    Parameters
    ----------
    run : RunData
        Read only; no check changes it.
    settings : Settings
    progress : callable, optional
        Called with each applicable check's name before it runs.

    Returns
    -------
    dict of str to CheckResult
        Check name -> its result, in run order, for the checks whose inputs were present.
    """
    results: dict[str, CheckResult] = {}
    for spec in registered_checks():
        try:
            if not spec.needs(run):
                continue
        except Exception:  # a needs() predicate must never break the analysis
            continue
        if progress is not None:
            progress(spec.name)
        res = run_check(spec, run, settings)
        if res is not None:
            results[spec.name] = res
    return results
