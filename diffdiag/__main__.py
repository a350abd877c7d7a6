"""``python -m diffdiag``: the same arguments as ``diffdiag analyze`` (subcommands also work)."""

import sys

from .cli import main_analyze

if __name__ == "__main__":
    sys.exit(main_analyze())
