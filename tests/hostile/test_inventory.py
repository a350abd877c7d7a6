"""The inventory of crafted hostile inputs (issue 12's acceptance): at least 80, every kind and class.

Each test of ``tests/hostile/`` declares what it crafts with :func:`~tests.hostile.craft.crafts`
(one entry per crafted file, server or situation). This test imports every test module, then
checks the count, that every source kind and every class the issue names has inputs, and that
``docs/HOSTILE.md`` is the table made from the declarations (regenerate it with
``DIFFDIAG_WRITE_HOSTILE_DOC=1 python -m pytest -q -p no:cacheprovider tests/hostile/test_inventory.py``).
"""

from __future__ import annotations

import collections
import importlib
import os
from pathlib import Path

from . import craft as C
from .conftest import REPO

DOC = REPO / "docs" / "HOSTILE.md"
MIN_INPUTS = 80


def _registry() -> list[C.Crafted]:
    for p in sorted(Path(__file__).parent.glob("test_*.py")):
        importlib.import_module(f"{__package__}.{p.stem}")
    return list(C.REGISTRY)


def render(reg: list[C.Crafted]) -> str:
    """docs/HOSTILE.md: the count per kind x class, then every input by test."""
    by = collections.Counter((c.kind, c.cls) for c in reg)
    kinds = [k for k in C.KINDS if any(c.kind == k for c in reg)]
    classes = [k for k in C.CLASSES if any(c.cls == k for c in reg)]
    out = ["# Hostile inputs", "",
           "<!-- generated from the @crafts declarations of tests/hostile/*.py; checked by "
           "tests/hostile/test_inventory.py -->", "",
           f"`tests/hostile/` crafts **{len(reg)}** hostile inputs (files, servers and situations; a test "
           "with nine bad files counts nine) across "
           f"{len(kinds)} source kinds and {len(classes)} classes of [issue 12](../README.md#safety).", "",
           "Every run of a hostile input through the CLI (the `analyze` and `analyze_subprocess` fixtures "
           "of `tests/hostile/conftest.py`) asserts the exit code, one stderr line per bad file naming it "
           "(at most 300 characters, no traceback, no \"unexpected\"), no crash by signal, the other "
           "inputs' findings, every file outside the report folder and the tools' caches unchanged, an "
           "empty working directory left empty, no canary secret (set in the credential environment "
           "variables) in stdout, stderr or any report file, no library warning, and a bounded run time. "
           "The report-folder tests check every file in and beside the folder that is not diffdiag's; "
           "the secrets tests also search the PDF's text and everything pushed (read back from the "
           "tracker); the kill tests compare the training run after each SIGKILL with the run before, "
           "and the final push with one clean push of a twin run.", "",
           "## Count per source kind and class", "",
           "| kind \\ class | " + " | ".join(f"`{k}`" for k in classes) + " | total |",
           "| --- | " + " | ".join("---:" for _ in classes) + " | ---: |"]
    for k in kinds:
        row = [str(by.get((k, c), "")) for c in classes]
        out.append(f"| `{k}` | " + " | ".join(row) + f" | {sum(by[(k, c)] for c in classes)} |")
    out.append("| **total** | " + " | ".join(str(sum(by[(k, c)] for k in kinds)) for c in classes)
               + f" | **{len(reg)}** |")
    out += ["", "## Kinds", ""] + [f"- `{k}`: {C.KINDS[k]}" for k in kinds]
    out += ["", "## Classes", ""] + [f"- `{k}`: {C.CLASSES[k]}" for k in classes]
    out += ["", "## Every input, by test", "", "| test | kind | class | inputs |", "| --- | --- | --- | --- |"]
    groups: dict[tuple[str, str, str], list[str]] = {}
    for c in reg:
        groups.setdefault((c.test, c.kind, c.cls), []).append(c.name)
    for (test, kind, cls), names in groups.items():
        out.append(f"| `{test}` | `{kind}` | `{cls}` | " + ", ".join(f"`{n}`" for n in names) + " |")
    return "\n".join(out) + "\n"


def test_inventory_counts_and_covers():
    reg = _registry()
    ids = [(c.test, c.kind, c.name) for c in reg]
    dupes = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert not dupes, dupes
    assert len(reg) >= MIN_INPUTS, len(reg)
    assert C.REQUIRED_KINDS <= {c.kind for c in reg}, C.REQUIRED_KINDS - {c.kind for c in reg}
    assert C.REQUIRED_CLASSES <= {c.cls for c in reg}, C.REQUIRED_CLASSES - {c.cls for c in reg}
    # the log formats the issue names one by one each meet the worst classes
    for kind in ("tensorboard", "csv", "jsonl", "wandb-file"):
        assert {"bad-file", "deadline"} <= {c.cls for c in reg if c.kind == kind}, kind
    for kind in ("tensorboard", "wandb-file"):
        assert "integrity" in {c.cls for c in reg if c.kind == kind}, kind


def test_hostile_doc_is_the_inventory():
    text = render(_registry())
    if os.environ.get("DIFFDIAG_WRITE_HOSTILE_DOC") == "1":
        DOC.write_text(text)
    assert DOC.is_file() and DOC.read_text() == text, \
        "docs/HOSTILE.md is out of date: rerun with DIFFDIAG_WRITE_HOSTILE_DOC=1"
