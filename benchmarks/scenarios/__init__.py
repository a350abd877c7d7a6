"""Labelled-case generators shared by tests and ``benchmarks/accuracy.py``.

Topic generators live in sibling modules (``loss_logs``, ``images``,
``latents``, ``datasets``, ...). This package also holds the **scenario
registry**: a *scenario* is one labelled case of ``diffdiag analyze`` — a folder
of inputs written by a builder, the CLI arguments that read it, and the ground
truth a correct diagnosis matches:

- ``expect``: finding ids that must be reported at warning or above;
- ``allow``: ids that may also be reported, each with a one-line reason
  (``{finding_id: reason}``): by-products of the fault (a too-high LR also
  spikes the gradient norm), or a known detector weakness (the reason starts
  with ``"known weakness:"``) — anything else at warning or above is a false
  alarm;
- ``causes``: symptom -> the cause id that must rank first;
- ``healthy``: nothing at warning or above and no cause at all;
- ``competing``: a cause scenario in which two or three causes of the symptom
  have evidence and the evidence (not the prior) must pick the right one
  (``accuracy.py`` reports those separately from the single-cause ones).

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
from typing import Callable, Mapping

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
    allow : dict of str to str
        Ids that may also be reported at warning or above -> why (one line each).
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
    competing : bool
        Two or three causes of a symptom have evidence; the evidence must decide.
    """

    name: str
    builder: Builder
    expect: frozenset[str] = frozenset()
    allow: dict[str, str] = field(default_factory=dict)
    causes: dict[str, str] = field(default_factory=dict)
    healthy: bool = False
    fast: bool = False
    kind: str = "combo"
    note: str = ""
    competing: bool = False

    def build(self, folder: Path) -> list[str]:
        """Write the inputs into ``folder`` (created) and return the source arguments."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [str(a) for a in self.builder(folder)]


_REGISTRY: dict[str, Scenario] = {}


def reasons(allow: Mapping[str, str] | None) -> dict[str, str]:
    """An ``allow`` mapping checked: every finding id carries a non-empty one-line reason."""
    if allow is None:
        return {}
    if not isinstance(allow, Mapping):
        raise TypeError(f"allow must map each finding id to its reason, got {type(allow).__name__}")
    for fid, why in allow.items():
        if not isinstance(why, str) or not why.strip() or "\n" in why:
            raise ValueError(f"allow[{fid!r}] needs a one-line reason, got {why!r}")
    return dict(allow)


def scenario(name: str, builder: Builder, *, expect=(), allow: Mapping[str, str] | None = None, causes=None,
             healthy: bool = False, fast: bool = False, kind: str | None = None, note: str = "",
             competing: bool = False) -> Scenario:
    """Register a scenario (names must be unique) and return it."""
    if name in _REGISTRY:
        raise ValueError(f"duplicate scenario {name!r}")
    sc = Scenario(name, builder, frozenset(expect), reasons(allow), dict(causes or {}), healthy, fast,
                  kind or name.split("/", 1)[0], note, competing)
    _REGISTRY[name] = sc
    return sc


def all_scenarios() -> dict[str, Scenario]:
    """Every registered scenario, by name (importing the scenario modules first)."""
    from . import combos  # noqa: F401  (registers)

    return dict(_REGISTRY)


def fast_scenarios() -> dict[str, Scenario]:
    """The fast subset."""
    return {k: v for k, v in all_scenarios().items() if v.fast}
