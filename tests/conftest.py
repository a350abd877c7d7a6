"""Shared test fixtures.

Every ``diagnosis.json`` the tests produce is validated against the contract's
schema shipped in the package (``diffdiag/diagnosis.schema.json``, described
in ``docs/CONTRACT.md``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("DIFFDIAG_STRICT", "1")  # internal errors in checks fail tests
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # so tests can import benchmarks.scenarios
    sys.path.insert(0, str(REPO))
ARTIFACTS = REPO / "test-artifacts"


def contract_schema() -> dict:
    """The schema shipped in the package (docs/CONTRACT.md §3 describes it)."""
    return json.loads((REPO / "diffdiag" / "diagnosis.schema.json").read_text())


def validate_diagnosis(doc_or_path) -> dict:
    """Validate a diagnosis document (or a path to one) against the contract schema; return it."""
    import jsonschema

    doc = json.loads(Path(doc_or_path).read_text()) if isinstance(doc_or_path, (str, Path)) else doc_or_path
    jsonschema.validate(doc, contract_schema(), format_checker=jsonschema.FormatChecker())
    return doc


@pytest.fixture
def run_cli(tmp_path):
    """Run ``diffdiag`` in-process: returns (exit code, stdout, stderr, diagnosis dict or None).

    The diagnosis.json it writes is validated against the contract schema.
    """
    import contextlib
    import io

    from diffdiag.cli import main

    def _run(*argv: str, report: Path | None = None):
        report = report or (tmp_path / "report")
        args = list(argv)
        if args and args[0] == "analyze" and "--report" not in args:
            args += ["--report", str(report)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
        diag = None
        p = report / "diagnosis.json"
        if p.exists():
            diag = validate_diagnosis(p)
        return code, out.getvalue(), err.getvalue(), diag

    return _run


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Folder for artifacts tests keep (screenshots etc.)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
