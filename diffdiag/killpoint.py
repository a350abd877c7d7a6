"""Named points where the crash-safety tests kill diffdiag (TEST-ONLY; never set it otherwise).

``DIFFDIAG_TEST_KILL_AT=<point>`` makes the process send itself ``SIGKILL`` when it
reaches :func:`kill_point` ``(<point>)`` — as if the machine lost power there. The
kill tests (``tests/hostile/test_push_kill.py``) use it to show that a push killed at
any step leaves the training run byte-identical and that the next push converges to
the state of one clean push. Points are named ``<sink>:<step>``, e.g.
``mlflow:after_upload``, ``wandb:after_finish``; unset (the default) costs one
environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "DIFFDIAG_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process when ``$DIFFDIAG_TEST_KILL_AT`` equals ``name`` (test-only)."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["ENV", "kill_point"]
