"""``diffdiag triage``: which of many runs went wrong, how, and since when (docs/CONTRACT.md §5).

::

    from diffdiag.triage import TriageOptions, triage

    result = triage(TriageOptions(runs=["runs/a", "runs/b", "wandb/offline-run-..."], report_dir="triage"))
    for row in result.rows:
        print(row["name"], row["verdict"], row["first_bad_step"], row["top_causes"])

Modules: :mod:`.refs` (what a RUN names, run keys), :mod:`.listing` (tracker listings and
``--filter``), :mod:`.worker` (one run, as ``diffdiag analyze`` does it), :mod:`.engines`
(local process pool, Ray), :mod:`.ray_dataset` (datasets with Ray Data), :mod:`.journal`
(streamed results, reruns), :mod:`.rows`, :mod:`.html`, :mod:`.push`, :mod:`.runner`.
"""

from __future__ import annotations

from .listing import Filters
from .runner import TriageOptions, TriageResult, triage

__all__ = ["Filters", "TriageOptions", "TriageResult", "triage"]
