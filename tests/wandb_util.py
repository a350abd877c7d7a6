"""Helpers shared by the W&B tests: a private environment per module, and a finish that waits for the file."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def isolated_wandb(env: dict[str, str | None]) -> Iterator[None]:
    """Set (a value) or unset (``None``) environment variables for W&B; on exit stop the
    wandb-core service the tests started and restore the environment."""
    import wandb

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, value)
        try:
            yield
        finally:
            try:
                wandb.teardown()
            except Exception:  # noqa: BLE001 - teardown of a service that already stopped
                pass


def finish_synced(run, timeout: float = 20.0) -> Path:
    """``run.finish()``, then wait until wandb-core has written the exit record (it writes asynchronously)."""
    from diffdiag.integrations.wandb_records import read_wandb_file

    run.finish()
    path = Path(run.settings.sync_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and read_wandb_file(path, summary=False).exit_code is not None:
            return path
        time.sleep(0.05)
    raise AssertionError(f"wandb did not finish writing {path}")
