"""The README's Python API example runs as written and prints what the README says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from .conftest import validate_diagnosis

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> tuple[str, str]:
    """The first ``python`` block under "### Python API" and the ``text`` block after it (what it prints)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    printed = re.search(r"```text\n(.*?)```", section[code.end():], re.S)
    assert code and printed, "README: the Python API section needs a python block and a text block after it"
    return code.group(1), printed.group(1)


def test_readme_python_api_example(tmp_path, monkeypatch) -> None:
    code, printed = readme_example()
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md:python-api", "exec"), {"__name__": "__readme__"})
    assert out.getvalue() == printed
    doc = validate_diagnosis(tmp_path / "diffdiag-report" / "diagnosis.json")
    assert [(f["id"], f["location"]["step"]) for f in doc["findings"]] == [("loss_spike", 600)]
    assert doc["outputs"]["html"] == str(Path("diffdiag-report") / "report.html")
    assert (tmp_path / "diffdiag-report" / "report.html").is_file()
    assert (tmp_path / "diffdiag-report" / "report.pdf").is_file()
