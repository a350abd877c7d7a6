"""Labelled-case generators shared by tests and ``benchmarks/accuracy.py``.

Topic generators live in sibling modules (``loss_logs``, ``images``,
``latents``, ``datasets``, ...). This package also holds the **scenario
registry**: a *scenario* is one labelled case of ``diffdiag analyze`` — a folder
of inputs written by a builder, the CLI arguments that read it, and the ground
truth a correct diagnosis matches:

- ``expect``: finding ids that must be reported at warning or above;
- ``allow``: ids that may also be reported (by-products of the fault, e.g. a
  too-high LR also spikes the gradient norm) — anything else at warning or
  above is a false alarm;
- ``causes``: symptom -> the cause id that must rank first;
- ``healthy``: nothing at warning or above and no cause at all.

Scenarios register themselves with :func:`scenario` (see ``combos.py``).

Example
-------
>>> from benchmarks.scenarios import all_scenarios
>>> sc = all_scenarios()["loss/healthy/exp/s0"]
>>> argv = sc.build(tmp_dir)        # writes the inputs, returns the source arguments
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

Builder = Callable[[Path], list[str]]


@dataclass
class Scenario:
    """One labelled case.

    Attributes
    ----------
    name : str
        Unique, ``kind/what/variant`` (e.g. ``"combo/stripes/latent/p6-v-s1"``).
    builder : callable
        ``builder(folder) -> argv``: writes the inputs under ``folder`` and returns the
        ``diffdiag analyze`` source arguments (no ``--report``).
    expect : frozenset of str
        Finding ids that must be reported at warning or above.
    allow : frozenset of str
        Ids that may also be reported at warning or above.
    causes : dict of str to str
        Symptom -> cause id expected to rank first.
    healthy : bool
        No finding at warning or above and no cause.
    fast : bool
        Part of the fast subset (tests, ``accuracy.py --fast``).
    kind : str
        ``loss``, ``images``, ``latents``, ``dataset``, ``checkpoints``, ``combo``, ``training``.
    note : str
        What the case is, in a few words.
    """

    name: str
    builder: Builder
    expect: frozenset[str] = frozenset()
    allow: frozenset[str] = frozenset()
    causes: dict[str, str] = field(default_factory=dict)
    healthy: bool = False
    fast: bool = False
    kind: str = "combo"
    note: str = ""

    def build(self, folder: Path) -> list[str]:
        """Write the inputs into ``folder`` (created) and return the source arguments."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [str(a) for a in self.builder(folder)]


_REGISTRY: dict[str, Scenario] = {}


def scenario(name: str, builder: Builder, *, expect=(), allow=(), causes=None, healthy: bool = False,
             fast: bool = False, kind: str | None = None, note: str = "") -> Scenario:
    """Register a scenario (names must be unique) and return it."""
    if name in _REGISTRY:
        raise ValueError(f"duplicate scenario {name!r}")
    sc = Scenario(name, builder, frozenset(expect), frozenset(allow), dict(causes or {}), healthy, fast,
                  kind or name.split("/", 1)[0], note)
    _REGISTRY[name] = sc
    return sc


def all_scenarios() -> dict[str, Scenario]:
    """Every registered scenario, by name (importing the scenario modules first)."""
    from . import combos  # noqa: F401  (registers)

    return dict(_REGISTRY)


def fast_scenarios() -> dict[str, Scenario]:
    """The fast subset."""
    return {k: v for k, v in all_scenarios().items() if v.fast}
