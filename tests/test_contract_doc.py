"""docs/CONTRACT.md stays the project's own, current document.

Every finding id and cause id the code can emit (read from the source, so a new
``Finding("new_id", ...)`` or ``CauseScore("symptom.new", ...)`` without a
contract entry fails here) is in the tables of docs/CONTRACT.md §3; the schema
shipped in the package lists exactly the contract's ids; the README links the
contract; and no docstring cites a contract outside the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "docs" / "CONTRACT.md"
#: where findings and causes are built (checks, causes, the training hook's live findings, core builders)
CODE_DIRS = ("diffdiag", "integrations")

_FINDING_CALL = re.compile(r"\bFinding\(\s*[\"']([a-z0-9_]+)[\"']")
_FID_ASSIGN = re.compile(r"\bfid\s*=\s*[\"']([a-z0-9_]+)[\"']")
_CAUSE_CALL = re.compile(r"\b(?:CauseScore|Cause)\(\s*[\"']([a-z0-9_]+\.[a-z0-9_]+)[\"']")
_TICKED = re.compile(r"`([a-z0-9_.]+)`")


def _sources() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (REPO / d).rglob("*.py"))


def _section(text: str, number: int) -> str:
    m = re.search(rf"^## {number}\..*?(?=^## \d+\.|\Z)", text, flags=re.M | re.S)
    assert m, f"docs/CONTRACT.md has no section {number}"
    return m.group(0)


def _table(section: str, header: str) -> list[list[str]]:
    """The rows (cells) of the markdown table whose header row starts with ``| header |``."""
    lines = section.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.replace(" ", "").startswith(f"|{header}|"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def contract_ids() -> tuple[set[str], dict[str, set[str]]]:
    """(finding ids, symptom -> cause ids) from the tables of docs/CONTRACT.md §3."""
    sec = _section(CONTRACT.read_text(encoding="utf-8"), 3)
    findings = {t for row in _table(sec, "id") for t in _TICKED.findall(row[0])}
    causes = {row[0].strip("`"): set(_TICKED.findall(row[1])) for row in _table(sec, "symptom")}
    return findings, causes


def code_ids() -> tuple[dict[str, str], dict[str, str]]:
    """(finding id -> first file, cause id -> first file) for the ids built in the source."""
    findings: dict[str, str] = {}
    causes: dict[str, str] = {}
    for p in _sources():
        text = p.read_text(encoding="utf-8")
        rel = str(p.relative_to(REPO))
        for rx, out in ((_FINDING_CALL, findings), (_FID_ASSIGN, findings), (_CAUSE_CALL, causes)):
            for fid in rx.findall(text):
                out.setdefault(fid, rel)
    return findings, causes


def test_the_scan_sees_the_code():
    # guards the regexes: if the way findings are built changes, this fails instead of passing vacuously
    findings, causes = code_ids()
    assert {"loss_spike", "stripes", "checkpoint_norm_explosion", "attention_collapse"} <= set(findings)
    assert {"loss_spikes.corrupted_batch", "stripes.latent_periodicity",
            "tiling_doubling.tiled_sources"} <= set(causes)


def test_every_finding_id_in_the_code_is_in_the_contract():
    documented, _ = contract_ids()
    findings, _ = code_ids()
    missing = {fid: where for fid, where in findings.items() if fid not in documented}
    assert not missing, f"finding ids built in the code but absent from docs/CONTRACT.md §3: {missing}"


def test_every_cause_id_in_the_code_is_in_the_contract():
    _, by_symptom = contract_ids()
    documented = set().union(*by_symptom.values())
    _, causes = code_ids()
    missing = {cid: where for cid, where in causes.items() if cid not in documented}
    assert not missing, f"cause ids built in the code but absent from docs/CONTRACT.md §3: {missing}"
    for cid in documented:  # a cause id is "<symptom>.<name>" and sits in its symptom's row
        assert cid.split(".")[0] in by_symptom and cid in by_symptom[cid.split(".")[0]], cid


def test_every_symptom_is_in_the_contract():
    from diffdiag.causes import SYMPTOM_TRIGGERS

    documented, by_symptom = contract_ids()
    assert set(SYMPTOM_TRIGGERS) <= set(by_symptom)
    for symptom, triggers in SYMPTOM_TRIGGERS.items():
        assert triggers <= documented, (symptom, triggers - documented)


def test_the_shipped_schema_lists_exactly_the_contract_ids():
    schema = json.loads((REPO / "diffdiag" / "diagnosis.schema.json").read_text(encoding="utf-8"))
    documented, by_symptom = contract_ids()
    finding_enum = schema["properties"]["findings"]["items"]["properties"]["id"]["enum"]
    cause_props = schema["properties"]["causes"]["items"]["properties"]
    assert set(finding_enum) == documented
    assert set(cause_props["id"]["enum"]) == set().union(*by_symptom.values())
    assert set(cause_props["symptom"]["enum"]) == set(by_symptom)
    # outputs.warnings (docs/CONTRACT.md §3): a list of sentences
    warnings = schema["properties"]["outputs"]["properties"]["warnings"]
    assert warnings["type"] == "array" and warnings["items"]["type"] == "string"


def test_outputs_warnings_validate_and_bad_ones_do_not():
    import jsonschema

    from diffdiag.model import Diagnosis, Finding

    schema = json.loads((REPO / "diffdiag" / "diagnosis.schema.json").read_text(encoding="utf-8"))
    diag = Diagnosis(findings=[Finding("loss_spike", "warning", 0.5, "A spike.", {"step": 3, "key": "loss"})],
                     created="2026-01-01T00:00:00+00:00",
                     warnings=["bad.png: cannot decode the image", "latents: internal error (ValueError: x)"])
    doc = diag.to_dict()
    assert doc["outputs"]["warnings"] == ["bad.png: cannot decode the image", "latents: internal error (ValueError: x)"]
    jsonschema.validate(doc, schema)
    doc["outputs"]["warnings"] = [{"not": "a sentence"}]
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a non-string warning passed the schema")


def test_readme_links_the_contract_and_the_architecture():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for target in ("docs/CONTRACT.md", "docs/ARCHITECTURE.md"):
        assert f"]({target})" in readme, f"README.md has no relative link to {target}"
        assert (REPO / target).is_file()


def test_no_citation_of_a_contract_outside_the_repository():
    # a bare "CONTRACT" + section sign named a file that was not in the repository; cite "docs/CONTRACT.md §N"
    bare = re.compile(r"(?<![/\w.])CONTRACT(?:\.md)? §")
    dirs = ("diffdiag", "integrations", "reports", "tests", "benchmarks")
    paths = [p for d in dirs for p in (REPO / d).rglob("*.py")] + [REPO / "README.md"]
    stale = [f"{p.relative_to(REPO)}:{i}" for p in paths
             for i, ln in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if bare.search(ln)]
    assert not stale, stale
