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


# ---------------------------------------------------------------- the suite leaves the tree clean
#: what a test run may leave in the repository root (ignored by git, removed by ``make clean``)
RUN_LEFTOVERS = {".pytest_cache", ".hypothesis", "test-artifacts", "__pycache__"}
_STRAYS: dict[str, str] = {}   # new entry of the repository root -> the test after which it appeared


def _root_entries() -> set[str]:
    return set(os.listdir(REPO)) - RUN_LEFTOVERS


@pytest.fixture(scope="session", autouse=True)
def _tool_dirs_out_of_the_repository(tmp_path_factory):
    """Point the tools' default folders at the session's temporary folder.

    W&B runs started without ``dir=`` (the online companion run) write
    ``./wandb``; diffdiag's caches (the tiny base when it is not the shipped
    one, tracker downloads) default to ``~/.cache/diffdiag``. Tests see an empty
    cache, as CI does.
    """
    root = tmp_path_factory.mktemp("tool-dirs")
    env = {"WANDB_DIR": root / "wandb", "DIFFDIAG_CACHE": root / "diffdiag-cache"}
    old = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        v.mkdir()
        os.environ[k] = str(v)
    before = _root_entries()
    yield
    for name in sorted(_root_entries() - before):
        _STRAYS.setdefault(name, "a session or module fixture")
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _no_writes_into_the_repository(request):
    """Note which test wrote into the repository root (a test writes into ``tmp_path``)."""
    before = _root_entries()
    yield
    for name in sorted(_root_entries() - before):
        _STRAYS.setdefault(name, request.node.nodeid)


def pytest_terminal_summary(terminalreporter):
    if _STRAYS:
        terminalreporter.section("files written into the repository")
        for name, who in sorted(_STRAYS.items()):
            terminalreporter.write_line(f"{REPO / name}: appeared during {who}")


def pytest_sessionfinish(session, exitstatus):
    """With ``DIFFDIAG_CHECK_TREE=1`` (``.ci/run``) a file written into the repository fails the run.

    Off by default: in a shared working tree other processes may write there at the same time.
    """
    if _STRAYS and os.environ.get("DIFFDIAG_CHECK_TREE") == "1" and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Folder for artifacts tests keep (screenshots etc.)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
