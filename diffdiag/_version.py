"""The package version, in a module of its own: every module reads it from here (never from
``diffdiag/__init__``, whose lazy exports import the rest of the package)."""

__version__ = "0.1.0"
