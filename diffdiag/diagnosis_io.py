"""Write, read and validate ``diagnosis.json`` (docs/CONTRACT.md §3)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .model import Diagnosis


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of ``diagnosis.json`` (a copy of the contract's, shipped in the package)."""
    return json.loads(resources.files("diffdiag").joinpath("diagnosis.schema.json").read_text())


def validate(doc: dict[str, Any], schema_doc: dict[str, Any] | None = None) -> None:
    """Raise ``jsonschema.ValidationError`` when ``doc`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(doc, schema_doc or schema(), format_checker=jsonschema.FormatChecker())


def write_diagnosis(diagnosis: Diagnosis, path: str | Path) -> dict[str, Any]:
    """Validate and write ``diagnosis`` as JSON to ``path``; return the document (secrets redacted)."""
    from .redact import redact_obj

    doc = redact_obj(diagnosis.to_dict())
    validate(doc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.diffdiag-tmp")  # atomic: a killed run leaves the old file or the new
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return doc


def read_diagnosis(path: str | Path) -> dict[str, Any]:
    """Read a ``diagnosis.json`` written by :func:`write_diagnosis`."""
    return json.loads(Path(path).read_text())
