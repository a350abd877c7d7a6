"""Shared numeric helpers: one number formatter for messages (diffdiag.textfmt), one MAD constant
and robust scale (diffdiag.analyzers.robust) — and no second copy of either in the package."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from diffdiag.analyzers.robust import MAD_TO_SIGMA, robust_scale
from diffdiag.textfmt import fmt

PACKAGE = [p for d in ("diffdiag", "integrations", "reports")
           for p in (Path(__file__).resolve().parents[1] / d).rglob("*.py")]


def test_fmt():
    assert [fmt(v) for v in (None, float("nan"), float("inf"), -np.inf, 0, 0.0)] == \
        ["n/a", "nan", "inf", "-inf", "0", "0"]
    assert fmt(0.123456) == "0.123" and fmt(0.123456, 4) == "0.1235" and fmt(np.float32(12.5)) == "12.5"
    assert fmt(2e-4) == "0.0002" and fmt(1.234e-6, 4) == "1.23e-06"  # one digit fewer beside an exponent
    assert fmt(123456.0) == "1.2e+05" and fmt(-98765.4, 4) == "-9.877e+04" and fmt(1234.0) == "1.23e+03"
    assert fmt("x") == "x"


def test_robust_scale_is_the_gaussian_sigma():
    x = np.random.default_rng(0).normal(3.0, 2.0, 100_001)
    assert MAD_TO_SIGMA == 1.4826
    assert abs(robust_scale(x) - 2.0) < 0.03
    assert robust_scale(np.r_[x[:999], np.nan, np.inf]) == robust_scale(x[:999])  # non-finite ignored


def test_one_of_each_in_the_package():
    """The MAD constant and the number formatter are defined once."""
    mad, fmts = [], []
    for p in PACKAGE:
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"(?<![\w.])(1\.4826|0\.6745)(?!\d)", code) and not code.strip().startswith(('"', "``")):
                if "·" not in code and "``" not in code and not (p.name == "robust.py" and "MAD_TO_SIGMA =" in code):
                    mad.append(f"{p.name}:{n}")
            if re.match(r"\s*def _?fmt\(", code) and p.name != "textfmt.py":
                fmts.append(f"{p.name}:{n}")
    assert mad == [] and fmts == []
