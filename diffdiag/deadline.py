"""One deadline and retry helper for every tracker operation (W&B, MLflow).

A :class:`Deadline` is the overall time budget of one operation — reading a
run, pushing a diagnosis — so that a tracker server that accepts a connection
and never answers, or answers once and then stalls, costs at most that long:
then :class:`DeadlineExceeded` (a :class:`~diffdiag.errors.TrackerError`,
exit 3) says what was being done and how to allow more time.

* The budget: ``seconds``, else ``$DIFFDIAG_TRACKER_TIMEOUT``, else
  :data:`DEFAULT_TIMEOUT_S` (60 s). ``inf`` means no deadline.
* :meth:`Deadline.call` runs one blocking tracker call and stops waiting for it
  when the budget is spent (the call is left to finish on a daemon thread; its
  result is dropped). Tracker clients should also be given
  :meth:`Deadline.timeout` as their own request timeout, so that they give up
  by themselves.
* :func:`retry` repeats a call that failed with a transient error (a refused
  connection, a timeout, a 5xx) with exponential backoff, never sleeping past
  the deadline; an error that retrying cannot fix is raised at once.

The helpers know no tracker: what counts as transient and how the final error
reads are the caller's (``integrations/*_source.py``).
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable, TypeVar

from .errors import InputError, TrackerError

T = TypeVar("T")

#: default budget of one tracker operation (seconds)
DEFAULT_TIMEOUT_S = 60.0
#: environment variable that overrides :data:`DEFAULT_TIMEOUT_S`
TIMEOUT_ENV = "DIFFDIAG_TRACKER_TIMEOUT"


class DeadlineExceeded(TrackerError):
    """A tracker operation ran out of its time budget (exit code 3)."""


def default_timeout() -> float:
    """The budget in seconds: ``$DIFFDIAG_TRACKER_TIMEOUT`` when set, else :data:`DEFAULT_TIMEOUT_S`.

    Raises
    ------
    InputError
        The variable is set but is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    return _seconds(raw, TIMEOUT_ENV)


def _seconds(value: object, where: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{where} must be a number of seconds, not {str(value)[:40]!r}") from None
    if not v > 0:  # NaN, 0 and negatives
        raise InputError(f"{where} must be a positive number of seconds, not {str(value)[:40]!r}")
    return v


def _short(exc: BaseException | str | None, n: int = 160) -> str:
    if exc is None:
        return ""
    text = exc if isinstance(exc, str) else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = text or type(exc).__name__
    return text if len(text) <= n else text[: n - 1] + "…"


class Deadline:
    """The overall time budget of one tracker operation.

    Parameters
    ----------
    seconds : float, optional
        The budget in seconds (default :func:`default_timeout`); ``inf``: none.
    what : str
        What the operation does, for messages (``"reading MLflow run 'abc'"``).
    """

    def __init__(self, seconds: float | None = None, *, what: str = "the tracker operation") -> None:
        self.seconds = default_timeout() if seconds is None else _seconds(seconds, "the tracker timeout")
        self.what = what
        self.start = time.monotonic()
        self.end = self.start + self.seconds

    def __repr__(self) -> str:
        return f"Deadline({self.seconds:g} s, {self.remaining():.1f} s left, what={self.what!r})"

    def remaining(self) -> float:
        """Seconds left (0 when spent; ``inf`` without a deadline)."""
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def timeout(self, cap: float | None = None) -> float:
        """A request timeout for a tracker client: the time left, at most ``cap`` seconds.

        Raises
        ------
        DeadlineExceeded
            Nothing is left.
        """
        left = self.remaining()
        if left <= 0.0:
            raise self.error()
        return left if cap is None else min(left, float(cap))

    def timeout_int(self, cap: float | None = None) -> int:
        """:meth:`timeout` rounded up to whole seconds (for clients that take an int), at least 1."""
        t = self.timeout(cap)
        return max(1, int(math.ceil(min(t, 10 ** 9))))

    def error(self, doing: str | None = None, last: BaseException | str | None = None) -> DeadlineExceeded:
        """The error for a spent budget: what was being done, the last transient error, how to allow more."""
        detail = f"; last error: {_short(last)}" if last else ""
        return DeadlineExceeded(f"{doing or self.what}: no answer within the {self.seconds:g} s deadline{detail} "
                                f"(allow more with {TIMEOUT_ENV}=SECONDS)")

    def check(self, doing: str | None = None) -> None:
        """Raise :class:`DeadlineExceeded` when the budget is spent."""
        if self.expired:
            raise self.error(doing)

    def call(self, fn: Callable[[], T], doing: str | None = None) -> T:
        """Run ``fn()`` and return its result, waiting at most the time left.

        ``fn`` runs on a daemon thread; when the budget is spent first, the wait
        ends with :class:`DeadlineExceeded` and ``fn``'s eventual result is dropped
        (give ``fn`` a client timeout too, so the thread ends soon after).
        Exceptions from ``fn`` are raised here.
        """
        self.check(doing)
        if math.isinf(self.end):
            return fn()
        box: dict[str, object] = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=target, name="diffdiag-tracker-call", daemon=True).start()
        if not done.wait(self.remaining()):
            raise self.error(doing)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]


def retry(fn: Callable[[], T], *, doing: str, transient: Callable[[BaseException], bool],
          deadline: Deadline | None = None, attempts: int = 4, backoff: float = 1.0,
          give_up: Callable[[BaseException | None, int], BaseException] | None = None,
          guard: bool = True) -> T:
    """Call ``fn`` until it succeeds, retrying transient errors with exponential backoff.

    Parameters
    ----------
    fn : callable
        One attempt (no arguments).
    doing : str
        What the call does, for messages (``"the history of run e/p/r"``).
    transient : callable
        ``transient(exc)`` is True for errors worth another try (refused
        connection, timeout, 5xx); any other error is raised at once, as are
        :class:`~diffdiag.errors.InputError` and :class:`~diffdiag.errors.TrackerError`.
    deadline : Deadline, optional
        The operation's budget (default: a new :class:`Deadline`). No attempt
        starts and no backoff sleeps past it.
    attempts : int
        At most this many attempts.
    backoff : float
        Seconds before the second attempt; doubled before each further one.
    give_up : callable, optional
        ``give_up(last_error, attempts)`` -> the exception raised when every
        attempt failed (default: a :class:`~diffdiag.errors.TrackerError`).
    guard : bool
        Run each attempt through :meth:`Deadline.call` (stop waiting at the deadline).

    Raises
    ------
    DeadlineExceeded
        The budget was spent first.
    TrackerError
        Every attempt failed with a transient error (``give_up``'s exception).
    """
    dl = deadline if deadline is not None else Deadline(what=doing)
    attempts = max(1, int(attempts))
    last: BaseException | None = None
    for i in range(attempts):
        if dl.expired:
            raise dl.error(doing, last)
        try:
            return dl.call(fn, doing) if guard else fn()
        except DeadlineExceeded:
            if last is None:
                raise
            raise dl.error(doing, last) from None
        except (InputError, TrackerError):
            raise
        except Exception as exc:  # noqa: BLE001 - classified by the caller
            if not transient(exc):
                raise
            last = exc
        if i + 1 < attempts:
            delay = max(0.0, backoff) * (2 ** i)
            if delay >= dl.remaining():
                raise dl.error(doing, last)
            time.sleep(delay)
    if give_up is not None:
        raise give_up(last, attempts)
    raise TrackerError(f"{doing} failed after {attempts} tries ({_short(last) or 'no answer'})")


__all__ = ["DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "Deadline", "DeadlineExceeded", "default_timeout", "retry"]
