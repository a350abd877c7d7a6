"""Numbers in sentences: the one formatter for finding messages and cause evidence."""

from __future__ import annotations

import math


def fmt(x: float | None, digits: int = 3) -> str:
    """A short number for a message a person reads.

    Parameters
    ----------
    x : float or None
        The value (any unit); numpy scalars are fine.
    digits : int
        Significant digits (one fewer below 1e-3 and from 1e5 on, where the
        exponent takes the room).

    Returns
    -------
    str
        ``"n/a"`` for None, ``"nan"``/``"inf"``/``"-inf"``, ``"0"``, else ``digits``
        significant digits in ``g`` style (``"0.123"``, ``"12.3"``, ``"1.2e+05"``).

    Examples
    --------
    >>> fmt(0.123456), fmt(0.123456, 4), fmt(123456.0), fmt(2e-4), fmt(None)
    ('0.123', '0.1235', '1.2e+05', '0.0002', 'n/a')
    """
    if x is None:
        return "n/a"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    a = abs(v)
    if a < 1e-3 or a >= 1e5:
        return f"{v:.{max(1, digits - 1)}g}"
    return f"{v:.{max(1, digits)}g}"


__all__ = ["fmt"]
