"""Errors that the CLI turns into one clear line and an exit code."""

from __future__ import annotations


class DiffdiagError(Exception):
    """Base class for errors that are reported to the user without a traceback."""

    exit_code = 2


class InputError(DiffdiagError):
    """Bad usage or unreadable input (exit code 2).

    Parameters
    ----------
    message : str
        One sentence saying what is wrong.
    path : str, optional
        The file or directory the problem is in; prefixed to the message.
    """

    exit_code = 2

    def __init__(self, message: str, path: object | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class TrackerError(DiffdiagError):
    """A tracker (W&B, MLflow) could not be reached or refused (exit code 3)."""

    exit_code = 3


class NotAvailableError(InputError):
    """A feature whose implementation is not installed or not available yet."""
