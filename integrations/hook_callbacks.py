"""The hook's callbacks: where live findings and the final diagnosis go (W&B, MLflow, yours).

A callback is any object with either or both of

* ``on_finding(finding, step)`` — called for each live finding as it happens;
* ``on_finish(diagnosis, report_dir)`` — called once with the final
  :class:`~diffdiag.model.Diagnosis` after ``finish()`` wrote the report.

:class:`Callbacks` holds them, adds the tracker callbacks
(:mod:`.wandb_hook`, :mod:`.mlflow_hook`) when a tracker run is active, and
calls each one so that its errors never reach the training loop: a failing
callback costs one warning and its later errors are silenced.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from diffdiag.model import Diagnosis, Finding

__all__ = ["HookCallback", "Callbacks"]


class HookCallback(Protocol):
    """What the hook calls (both methods are optional)."""

    def on_finding(self, finding: Finding, step: int) -> None: ...

    def on_finish(self, diagnosis: Diagnosis, report_dir: Path) -> None: ...


class Callbacks:
    """The callbacks of one hook.

    Parameters
    ----------
    callbacks : iterable
        Callback objects, called in this order.
    trackers : "auto" or sequence of str
        ``"auto"``: add the W&B and MLflow callbacks when a run of theirs is active
        (looked up once, at the first finding or at the finish); ``()`` for none,
        or e.g. ``("wandb",)``.
    warn : callable, optional
        ``warn(key, message)``: reports a failure (once per key).
    """

    def __init__(self, callbacks: Iterable[Any] = (), *, trackers: Any = "auto",
                 warn: Callable[[str, str], None] | None = None) -> None:
        self.items: list[Any] = list(callbacks)
        self.trackers = trackers
        self._warn = warn or (lambda key, message: None)
        self._trackers_added = False

    def add(self, callback: Any) -> Any:
        """Add a callback (called after those already there); returns it."""
        if not (hasattr(callback, "on_finding") or hasattr(callback, "on_finish")):
            raise TypeError(f"{type(callback).__name__} has neither on_finding nor on_finish")
        self.items.append(callback)
        return callback

    def add_trackers(self) -> None:
        """Add the callbacks of the active tracker runs (once)."""
        if self._trackers_added:
            return
        self._trackers_added = True
        t = self.trackers
        for kind in ("wandb", "mlflow") if t == "auto" else tuple(t or ()):
            try:
                cb = import_module(f"diffdiag.integrations.{kind}_hook").make_callback()
            except ImportError:
                continue
            except Exception as exc:  # noqa: BLE001
                self._warn(f"tracker:{kind}", f"the {kind} hook could not start ({type(exc).__name__}: {exc})")
                continue
            if cb is not None:
                self.items.append(cb)

    def finding(self, finding: Finding, step: int) -> None:
        """Send one live finding to every callback."""
        self._call("on_finding", finding, step)

    def finish(self, diagnosis: Diagnosis, report_dir: Path) -> None:
        """Send the final diagnosis to every callback."""
        self._call("on_finish", diagnosis, report_dir)

    def _call(self, method: str, *args: Any) -> None:
        self.add_trackers()
        for cb in list(self.items):
            fn = getattr(cb, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker must not break training
                self._warn(f"{method}:{id(cb)}", f"callback {type(cb).__name__}.{method} failed "
                           f"({type(exc).__name__}: {exc}); further errors of it are silenced")
